"""Reader and validator for the EchoNet-Dynamic folder layout.

The layout (see SPEC.md, "EchoNet-Dynamic on disk")::

    ROOT/FileList.csv        FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
    ROOT/VolumeTracings.csv  FileName,X1,Y1,X2,Y2,Frame   (optional; FileName has ".avi")
    ROOT/Videos/<FileName>.avi

Users bring their own copy of the dataset, so every problem is reported with the file, the
1-based line number and the FileName it concerns, and `load_dataset_index` gathers all problems
into one `EchoNetFormatError` instead of stopping at the first: fixing a 10,030-row CSV one error
per run would be miserable. Only numpy, csv and OpenCV (through video_io) are used, so that any
module (TensorFlow input pipelines included) can import this without pulling in JAX.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import math
import os
from typing import Callable

from absl import logging
import numpy as np

from lvef_jax.data import video_io
from lvef_jax.data.clips import SPLITS
from lvef_jax.errors import LvefError

FILE_LIST_HEADER = (
  "FileName",
  "EF",
  "ESV",
  "EDV",
  "FrameHeight",
  "FrameWidth",
  "FPS",
  "NumberOfFrames",
  "Split",
)
TRACINGS_HEADER = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
# The other layout of VolumeTracings.csv (EchoNet-Pediatric's): the outline's points in order.
POINTS_HEADER = ("FileName", "X", "Y", "Frame")
FILE_LIST = "FileList.csv"
TRACINGS = "VolumeTracings.csv"
VIDEOS = "Videos"
# Long lists of names make the error unreadable; the count is always given in full.
_MAX_LISTED = 20


class EchoNetFormatError(LvefError, ValueError):
  """Raised for any problem with a dataset folder; message names the file(s)/row(s)."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One validated FileList.csv row plus its traced frames.

  Attributes:
      file_name: FileName without ".avi".
      ef: Ejection fraction in percent.
      esv: End-systolic volume in mL.
      edv: End-diastolic volume in mL.
      frame_height: FrameHeight in pixels.
      frame_width: FrameWidth in pixels.
      fps: Frames per second.
      num_frames: NumberOfFrames as listed (not checked against the video).
      split: "train", "val" or "test".
      ed_frame: End-diastolic traced frame index, -1 if the video has no tracings.
      es_frame: End-systolic traced frame index, -1 if none.
      video_path: Absolute path to the .avi.
      ed_chords: float32 [n_rows, 4] tracing of ed_frame (X1, Y1, X2, Y2 in pixels; row 0 the
          long axis, the rest the short-axis chords), or [n_points, 2] (X, Y: the outline's
          points in order, the other layout of VolumeTracings.csv), None if the video has no
          tracings. Neither chords field takes part in equality or repr.
      es_chords: The same for es_frame.
      strata: The dataset's own strata of the video (CAMUS: image_quality, view, sex,
          age_group), {} where it has none. Not part of equality.
      load: For datasets not stored as videos (CAMUS): a function returning the video as it
          is prepared, ``(frames uint8 [T, H, W], LV masks uint8 [2, H, W] of the ED and ES
          frames or None, (ed_frame, es_frame))``; None: `load_video` of video_path, masks
          from the chords.
  """

  file_name: str
  ef: float
  esv: float
  edv: float
  frame_height: int
  frame_width: int
  fps: float
  num_frames: int
  split: str
  ed_frame: int
  es_frame: int
  video_path: str
  ed_chords: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  es_chords: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  strata: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)
  load: Callable | None = dataclasses.field(default=None, compare=False, repr=False)


def raise_problems(root, problems, dataset: str = "EchoNet-Dynamic"):
  """Raises one error listing every problem, one per line."""
  head = f"{dataset} folder {root} has {len(problems)} problem(s):"
  raise EchoNetFormatError("\n  - ".join([head] + problems))


def name_list(names) -> str:
  """Sorted names for a message: the first `_MAX_LISTED`, then how many more there are."""
  names = sorted(names)
  text = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    text += f" … and {len(names) - _MAX_LISTED} more"
  return text


def _csv_rows(path, expected_header, problems):
  """Checks a CSV header; returns an iterator of (line number, stripped fields) over the rows.

  Returns None (with a problem appended) if the header is wrong: the columns cannot be
  trusted then, and per-row errors would only be noise. Rows with the wrong number of fields
  are reported to `problems` as the iterator reaches them.
  """
  # utf-8-sig drops the byte-order mark spreadsheet programs like to add, which would
  # otherwise spoil the header; undecodable bytes become U+FFFD and show up in the messages.
  with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
    header = next(csv.reader(f), [])
  if tuple(header) != expected_header:
    problems.append(
      f"{path}: header must be exactly {','.join(expected_header)!r}, found {','.join(header)!r}"
    )
    return None
  return _data_rows(path, len(expected_header), problems)


def _data_rows(path, n_fields, problems):
  with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
    reader = csv.reader(f)
    next(reader)
    for fields in reader:
      if len(fields) == n_fields:
        yield reader.line_num, [x.strip() for x in fields]
      elif any(x.strip() for x in fields):  # Blank lines (often the last) are harmless.
        problems.append(
          f"{path} line {reader.line_num} (FileName "
          f"{fields[0].strip()!r}): has {len(fields)} fields, "
          f"expected {n_fields}"
        )


def number(
  text, what, where, problems, *, lo=-math.inf, hi=math.inf, positive=False, integer=False
):
  """Parses one numeric CSV field; appends a problem and returns None if invalid."""
  try:
    value = float(text)
  except ValueError:
    problems.append(f"{where}: {what} {text!r} is not a number")
    return None
  if not math.isfinite(value):
    problems.append(f"{where}: {what} is {text!r}, expected a finite number")
  elif positive and value <= 0:
    problems.append(f"{where}: {what} {text!r} must be > 0")
  elif not lo <= value <= hi:
    problems.append(f"{where}: {what} {text!r} is outside [{lo:g}, {hi:g}]")
  elif integer and value != int(value):
    # "112.0" passes (some tools write integers as floats); "112.5" does not.
    problems.append(f"{where}: {what} {text!r} is not a whole number")
  else:
    return int(value) if integer else value
  return None


def _parse_file_list(root, problems):
  """Parses FileList.csv, appending problems.

  Returns:
      (records, names): the valid rows, and the FileNames of all rows with a usable name, or
      None if the header is wrong. Names of rows with bad numbers are kept so that their
      missing videos are reported too: a folder with a few bad rows needs one round of fixes.
  """
  path = os.path.join(root, FILE_LIST)
  videos_dir = os.path.abspath(os.path.join(root, VIDEOS))
  rows = _csv_rows(path, FILE_LIST_HEADER, problems)
  if rows is None:
    return None
  records, first_line = [], {}
  for line, fields in rows:
    name, ef, esv, edv, height, width, fps, n_frames, split = fields
    where = f"{path} line {line} (FileName {name!r})"
    n_before = len(problems)
    if not name:
      problems.append(f"{where}: FileName is empty")
    elif name.lower().endswith(".avi"):
      problems.append(f"{where}: FileName must not end in '.avi' (the layout has no suffix)")
    elif name in first_line:
      problems.append(f"{where}: duplicate FileName (first listed on line {first_line[name]})")
    else:
      first_line[name] = line
    ef = number(ef, "EF", where, problems, lo=0.0, hi=100.0)
    esv = number(esv, "ESV", where, problems, lo=0.0)
    edv = number(edv, "EDV", where, problems, lo=0.0)
    height = number(height, "FrameHeight", where, problems, positive=True, integer=True)
    width = number(width, "FrameWidth", where, problems, positive=True, integer=True)
    fps = number(fps, "FPS", where, problems, positive=True)
    n_frames = number(n_frames, "NumberOfFrames", where, problems, positive=True, integer=True)
    if split.lower() not in SPLITS:
      problems.append(
        f"{where}: Split {split!r} is not one of {', '.join(name.upper() for name in SPLITS)}"
      )
    if len(problems) == n_before:
      records.append(
        VideoRecord(
          file_name=name,
          ef=ef,
          esv=esv,
          edv=edv,
          frame_height=height,
          frame_width=width,
          fps=fps,
          num_frames=n_frames,
          split=split.lower(),
          ed_frame=-1,
          es_frame=-1,
          video_path=os.path.join(videos_dir, name + ".avi"),
        )
      )
  return records, list(first_line)


def read_file_list(root) -> list[VideoRecord]:
  """Reads and validates FileList.csv (rows only; videos are not looked at).

  Args:
      root: Dataset folder.

  Returns:
      One record per row, in file order, with ed_frame = es_frame = -1.

  Raises:
      EchoNetFormatError: FileList.csv is missing, or has a bad header or bad rows (all listed).
  """
  root = os.fspath(root)
  path = os.path.join(root, FILE_LIST)
  if not os.path.isfile(path):
    raise_problems(root, [f"{path} is missing"])
  problems = []
  parsed = _parse_file_list(root, problems)
  if problems:
    raise_problems(root, problems)
  return parsed[0]


def _parse_tracings(path, problems):
  """Parses VolumeTracings.csv, appending problems.

  Returns:
      (tracings, first_line): tracings maps file name (no .avi) -> {frame: float32 [n, 4]};
      first_line maps (file name, frame) -> the line where that frame first appears, for errors.
      Both are empty, with a warning, if the file is missing: tracings are optional for EF
      regression.
  """
  chords, first_line = {}, {}
  if not os.path.isfile(path):
    logging.warning("%s is missing: no video will have traced ED/ES frames.", path)
    return chords, first_line
  with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
    header = tuple(next(csv.reader(f), []))
  # Chords (EchoNet-Dynamic) or outline points (EchoNet-Pediatric): told apart by the header.
  layout = POINTS_HEADER if header == POINTS_HEADER else TRACINGS_HEADER
  if header == POINTS_HEADER:
    rows = _data_rows(path, len(layout), problems)
  else:
    rows = _csv_rows(path, TRACINGS_HEADER, problems)
    if rows is None:
      problems[-1] += f" (or {','.join(POINTS_HEADER)!r}: the outline's points)"
  n = len(layout) - 2  # coordinates per row
  for line, fields in rows or ():
    name = fields[0]
    # The official file has ~420k rows: try the plain conversion first and run the
    # validation that words the errors only when it fails.
    try:
      coords = [float(x) for x in fields[1 : n + 1]]
      frame = int(fields[n + 1])
      valid = frame >= 0 and math.isfinite(sum(coords))
    except ValueError:
      valid = False
    if not valid:
      where = f"{path} line {line} (FileName {name!r})"
      n_before = len(problems)
      coords = [number(x, col, where, problems) for x, col in zip(fields[1 : n + 1], layout[1:])]
      frame = number(fields[n + 1], "Frame", where, problems, lo=0, integer=True)
      if len(problems) != n_before:
        continue
    # Tracings name the file with ".avi" while FileList does not: key by the FileList form.
    name = name[:-4] if name.lower().endswith(".avi") else name
    chords.setdefault(name, {}).setdefault(frame, []).append(coords)
    first_line.setdefault((name, frame), line)
  tracings = {
    name: {frame: np.asarray(rows, np.float32) for frame, rows in frames.items()}
    for name, frames in chords.items()
  }
  return tracings, first_line


def read_tracings(root) -> dict[str, dict[int, np.ndarray]]:
  """Reads VolumeTracings.csv.

  Args:
      root: Dataset folder.

  Returns:
      file name (no .avi) -> {frame index: float32 [n_rows, 4] with columns X1, Y1, X2, Y2}.
      Row 0 of each frame is the long axis, the rest are short-axis chords. A file in the
      points layout (``FileName,X,Y,Frame``) gives [n_points, 2] instead. {} (with a warning)
      if the file is missing.

  Raises:
      EchoNetFormatError: bad header or unparsable rows (all listed).
  """
  root = os.fspath(root)
  problems = []
  tracings, _ = _parse_tracings(os.path.join(root, TRACINGS), problems)
  if problems:
    raise_problems(root, problems)
  return tracings


def _traced_area(chords: np.ndarray) -> float:
  """Area of the left-ventricle outline traced in one frame.

  As in the official echonet loader, the outline of chords is the polygon through their first
  end points followed by their second end points in reverse; row 0 (the long axis) is not on
  it. Points ([n, 2]) are the outline itself. The shoelace formula gives its area; with fewer
  than two chords it is 0.
  """
  c = np.asarray(chords, np.float64)
  if c.shape[1] == 2:
    x, y = c[:, 0], c[:, 1]
  else:
    x = np.concatenate([c[1:, 0], c[:0:-1, 2]])
    y = np.concatenate([c[1:, 1], c[:0:-1, 3]])
  return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def tracing_frames(tracings_for_video: dict[int, np.ndarray]) -> tuple[int, int]:
  """Picks the end-diastolic and end-systolic frames of one video's tracings.

  The official files list ES first and ED second, but the order is not relied on: the ED
  frame is the one with the larger traced area (the ventricle is fullest), ES the smaller.

  Args:
      tracings_for_video: {frame index: [n_rows, 4] chords}, as from `read_tracings`.

  Returns:
      (ed_frame, es_frame); (-1, -1) if fewer than two frames are traced, since ED and ES
      cannot be told apart then. With more than two, the largest and smallest areas win.
  """
  if len(tracings_for_video) < 2:
    return -1, -1
  areas = sorted((_traced_area(c), frame) for frame, c in tracings_for_video.items())
  return int(areas[-1][1]), int(areas[0][1])


def load_video(path) -> np.ndarray:
  """Decodes a whole EchoNet video to grey, as `video_io.read_video` decodes any video.

  Args:
      path: Path to an .avi file.

  Returns:
      uint8 [frames, H, W]. EchoNet stores grey as three identical channels, for which the
      BGR->grey conversion returns the channel value unchanged.

  Raises:
      EchoNetFormatError: the file is missing, cannot be opened, has no frames, or is truncated
          or corrupt (fewer frames decode than its container lists).
  """
  try:
    return video_io.read_video(path)[0]
  except video_io.VideoReadError as e:
    raise EchoNetFormatError(str(e)) from None


def _check_videos(videos_dir, names, check_videos, problems, skipped=None):
  """Reports listed videos that are missing from, or unreadable in, `videos_dir`.

  With `skipped` (a dict), such videos are recorded there with their reason instead.
  """
  present = set(os.listdir(videos_dir))
  listed = [n + ".avi" for n in names]
  missing = [f for f in listed if f not in present]
  if missing and skipped is not None:
    skipped.update({f[:-4]: f"missing from {videos_dir}/" for f in missing})
  elif missing:
    problems.append(
      f"{len(missing)} videos listed in {FILE_LIST} are missing from "
      f"{videos_dir}/: {name_list(missing)}"
    )
  extra = len(present) - (len(listed) - len(missing))
  if extra > 0:
    logging.info("%s holds %d files not listed in %s (ignored).", videos_dir, extra, FILE_LIST)
  if check_videos:
    to_open = [f for f in listed if f in present]
    # OpenCV releases the GIL while decoding, so a few threads overlap file I/O and decode.
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      reasons = pool.map(lambda f: video_io.probe_video(os.path.join(videos_dir, f)), to_open)
      bad = {f: reason for f, reason in zip(to_open, reasons) if reason}
    if bad and skipped is not None:
      skipped.update({f[:-4]: reason for f, reason in bad.items()})
    elif bad:
      problems.append(
        f"{len(bad)} videos in {videos_dir}/ cannot be used: "
        f"{name_list([f'{f} {reason}' for f, reason in bad.items()])}"
      )


def load_dataset_index(
  root,
  *,
  check_videos: bool = True,
  skipped: dict[str, str] | None = None,
  parse_file_list: Callable | None = None,
  dataset: str = "EchoNet-Dynamic",
) -> list[VideoRecord]:
  """Reads and validates a whole EchoNet-Dynamic folder: the entry point for other modules.

  Args:
      root: Dataset folder.
      check_videos: Also open every listed video and decode its first and last frames (a few
          ms per video): a file cut short is refused before anything is prepared. Whether the
          files exist is checked either way.
      skipped: If given (``data.on_bad_video=skip``), videos that are missing or unreadable
          are left out of the result and recorded here (FileName -> reason) instead of being
          problems; a split left empty is still one.
      parse_file_list: For a dataset in this layout whose FileList.csv has other columns
          (EchoNet-Pediatric): ``(root, problems) -> (records, names) or None``, as
          `_parse_file_list`; the videos and tracings are checked as here.
      dataset: The dataset's name, for the error's first line.

  Returns:
      One record per FileList.csv row, in file order, with ed_frame/es_frame and their chords
      from the tracings.

  Raises:
      EchoNetFormatError: listing every problem found (files, line numbers, FileNames).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    what = "is not a directory" if os.path.exists(root) else "does not exist"
    raise_problems(root, [f"dataset root {root} {what}"], dataset)
  problems = []
  list_path = os.path.join(root, FILE_LIST)
  videos_dir = os.path.join(root, VIDEOS)
  tracings_path = os.path.join(root, TRACINGS)
  records, names, parsed = [], [], None
  if os.path.isfile(list_path):
    parsed = (parse_file_list or _parse_file_list)(root, problems)
    if parsed is not None:
      records, names = parsed
  else:
    problems.append(f"{list_path} is missing")
  if not os.path.isdir(videos_dir):
    problems.append(f"{videos_dir}/ folder is missing")
  elif names:
    _check_videos(videos_dir, names, check_videos, problems, skipped)
    if skipped:
      records = [r for r in records if r.file_name not in skipped]
      names = [r.file_name for r in records]
  if os.path.isfile(list_path) and parsed is not None:
    for split in SPLITS:
      if not any(r.split == split for r in records):
        problems.append(f"{list_path}: split {split.upper()} has no (valid) rows")
  tracings, first_line = _parse_tracings(tracings_path, problems)
  listed = set(names)
  unknown = [n + ".avi" for n in tracings if n not in listed]
  if unknown:
    logging.warning(
      "%s has tracings for %d videos not in %s (ignored): %s",
      tracings_path,
      len(unknown),
      FILE_LIST,
      name_list(unknown),
    )
  if problems:
    raise_problems(root, problems, dataset)
  # A traced frame past NumberOfFrames is a problem of the tracings or of the metadata, not of
  # the EF label (the released dataset has such rows): warn, and use no tracing for that video.
  num_frames = {r.file_name: r.num_frames for r in records}
  outside = {}
  for (name, frame), line in first_line.items():
    if name in num_frames and frame >= num_frames[name]:
      outside.setdefault(name, f"line {line}: frame {frame} of {num_frames[name]}")
  if outside:
    logging.warning(
      "%s: %d videos have a traced frame outside their NumberOfFrames (their tracings are "
      "ignored; the EF labels are used): %s",
      tracings_path,
      len(outside),
      name_list([f"{name}.avi ({where})" for name, where in outside.items()]),
    )
  out, odd = [], []
  for record in records:
    frames = {} if record.file_name in outside else tracings.get(record.file_name, {})
    if frames and len(frames) != 2:  # Kept, but the layout has two: worth knowing.
      odd.append(f"{record.file_name} ({len(frames)})")
    ed_frame, es_frame = tracing_frames(frames)
    out.append(
      dataclasses.replace(
        record,
        ed_frame=ed_frame,
        es_frame=es_frame,
        ed_chords=frames.get(ed_frame),
        es_chords=frames.get(es_frame),
      )
    )
  if odd:
    logging.warning("%d videos have other than 2 traced frames: %s", len(odd), name_list(odd))
  untraced = [r.file_name + ".avi" for r in records if r.file_name not in tracings]
  if tracings and untraced:  # (No file at all was warned about once, by _parse_tracings.)
    logging.warning(
      "%s has no tracings for %d listed videos (their EF labels are used; they have no traced "
      "ED/ES frames): %s",
      tracings_path,
      len(untraced),
      name_list(untraced),
    )
  return out
