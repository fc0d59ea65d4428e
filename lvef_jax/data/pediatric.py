"""Reader and validator for EchoNet-Pediatric, as it is downloaded.

The release has one folder per view, each in EchoNet-Dynamic's layout with other columns::

    VIEW/FileList.csv        FileName,EF,Sex,Age,Weight,Height,Split   (Split: folds 0-9)
    VIEW/VolumeTracings.csv  FileName,X,Y,Frame   (outline points; chords X1,Y1,X2,Y2 also read)
    VIEW/Videos/<FileName>.avi

``data.root`` is the view folder (``A4C/`` or ``PSAX/``); its name is the view stratum. The
columns are found by name (their order and extra columns do not matter), a FileName may end in
``.avi`` or not, and frame rate and frame count come from each video, since the list has no
FPS or NumberOfFrames. ``data.val_folds`` and ``data.test_folds`` pick the splits (`formats`).
The videos and tracings are checked as EchoNet-Dynamic's are (`echonet.load_dataset_index`).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import math
import os

from lvef_jax.data import echonet, formats, video_io

REQUIRED_COLUMNS = ("FileName", "EF", "Sex", "Age", "Split")
VIEWS = ("A4C", "PSAX")


def age_group(age: float) -> str:
  """Children in the groups of pediatric practice (years): <1, 1-4, 5-9, 10-14, 15+."""
  if age < 1:
    return "<1"
  return "1-4" if age < 5 else "5-9" if age < 10 else "10-14" if age < 15 else "15+"


def _parser(settings: formats.FormatSettings, view: str):
  """The FileList.csv parser `echonet.load_dataset_index` calls for this layout."""

  def parse(root, problems):
    path = os.path.join(root, echonet.FILE_LIST)
    videos_dir = os.path.abspath(os.path.join(root, echonet.VIDEOS))
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
      reader = csv.reader(f)
      header = [h.strip() for h in next(reader, [])]
      absent = [c for c in REQUIRED_COLUMNS if c not in header]
      if absent:
        problems.append(
          f"{path}: no column(s) {', '.join(absent)} (EchoNet-Pediatric's list has "
          f"{','.join(REQUIRED_COLUMNS)}; found {','.join(header)!r})"
        )
        return None
      column = {c: header.index(c) for c in REQUIRED_COLUMNS}
      records, first_line = [], {}
      for fields in reader:
        if not any(x.strip() for x in fields):
          continue
        line = reader.line_num
        if len(fields) != len(header):
          problems.append(f"{path} line {line}: has {len(fields)} fields, expected {len(header)}")
          continue
        value = {c: fields[i].strip() for c, i in column.items()}
        name = value["FileName"]
        name = name[:-4] if name.lower().endswith(".avi") else name
        where = f"{path} line {line} (FileName {name!r})"
        n_before = len(problems)
        if not name:
          problems.append(f"{where}: FileName is empty")
        elif name in first_line:
          problems.append(f"{where}: duplicate FileName (first listed on line {first_line[name]})")
        else:
          first_line[name] = line
        ef = echonet.number(value["EF"], "EF", where, problems, lo=0.0, hi=100.0)
        age = echonet.number(value["Age"], "Age", where, problems, lo=0.0, hi=30.0)
        fold = value["Split"]
        if not (fold.isdigit() and int(fold) < formats.NUM_FOLDS):
          problems.append(
            f"{where}: Split {fold!r} is not a fold number 0-{formats.NUM_FOLDS - 1} "
            "(EchoNet-Pediatric numbers its folds; data.val_folds and data.test_folds pick them)"
          )
        if len(problems) == n_before:
          records.append(
            echonet.VideoRecord(
              file_name=name,
              ef=ef,
              esv=math.nan,
              edv=math.nan,
              frame_height=0,
              frame_width=0,
              fps=0.0,
              num_frames=0,
              split=settings.split_of_fold(int(fold)),
              ed_frame=-1,
              es_frame=-1,
              video_path=os.path.join(videos_dir, name + ".avi"),
              strata={
                "view": view,
                "sex": value["Sex"].upper() or "unknown",
                "age_group": age_group(age),
              },
            )
          )
    # Before the tracings are checked against each video's frame count.
    return _with_video_properties(records), list(first_line)

  return parse


def _with_video_properties(records):
  """Frame count, rate and size from each video's container (the list has none of them)."""

  def read(record):
    if not os.path.isfile(record.video_path):
      return record  # Reported (or skipped) by the video check.
    count, fps, height, width = video_io.video_properties(record.video_path)
    return dataclasses.replace(
      record, num_frames=count, fps=fps, frame_height=height, frame_width=width
    )

  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(read, records))


def load_dataset_index(
  root, settings: formats.FormatSettings, *, skipped: dict[str, str] | None = None
) -> list[echonet.VideoRecord]:
  """Reads and validates one view folder of EchoNet-Pediatric.

  Raises:
    echonet.EchoNetFormatError: listing every problem (files, line numbers, FileNames).
  """
  root = os.fspath(root)
  name = formats.NAMES[formats.PEDIATRIC]
  if os.path.isdir(root) and not os.path.isfile(os.path.join(root, echonet.FILE_LIST)):
    views = [v for v in VIEWS if os.path.isdir(os.path.join(root, v))]
    if views:
      echonet.raise_problems(
        root,
        [
          f"{root} holds the view folders {', '.join(views)}: set data.root to one of them, "
          f"e.g. {os.path.join(root, views[0])}"
        ],
        name,
      )
  view = os.path.basename(os.path.normpath(root)).upper()
  return echonet.load_dataset_index(
    root, skipped=skipped, parse_file_list=_parser(settings, view), dataset=name
  )
