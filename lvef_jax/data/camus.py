"""Reader and validator for CAMUS (500 patients, Lyon), as it is downloaded.

Both releases are read (see docs/external.md)::

    NIfTI:      ROOT/[database_nifti/]patientNNNN/patientNNNN_{4CH,2CH}_half_sequence.nii.gz
                                                   patientNNNN_{4CH,2CH}_{ED,ES}_gt.nii.gz
                                                   Info_{4CH,2CH}.cfg
    MetaImage:  ROOT/[training/|testing/]patientNNNN/patientNNNN_{4CH,2CH}_sequence.mhd (+ .raw)
                                                   patientNNNN_{4CH,2CH}_{ED,ES}_gt.mhd (+ .raw)
                                                   Info_{4CH,2CH}.cfg

``Info_*.cfg`` holds ``Key: value`` lines: ED and ES (1-based frame numbers of the sequence),
NbFrame, Sex, Age, ImageQuality (Good, Medium, Poor), the EF (``LVef``, or ``EF``) and, in the
NIfTI release, FrameRate; LVedv and LVesv are read where present. A sequence covers half a
cycle, from one of ED and ES to the other. Each (patient, view) becomes one record
``patientNNNN_4CH``, whose `VideoRecord.load` turns the half cycle into the prepared video:

1. the frames from ED to ES (reversed where ES comes first), grey uint8;
2. square pixels: where a file's spacing differs between rows and columns, a heart drawn with
   its pixels as squares has another shape than in training; the coarser axis is resampled;
3. the training frame rate (``data.typical_fps``), frames repeated or dropped as
   ``--mode=predict`` does, the ED and ES frames kept;
4. the central square, resized to ``data.image_size`` as ``--mode=predict`` does;
5. ``data.half_cycle``: played forward then backward once (``mirror``, the default), the same
   repeated to at least one clip (``loop``) or as it is (``once``).

The expert label maps of ED and ES (1 the LV cavity, 2 the myocardium, 3 the left atrium) give
the LV masks of those frames (label 1), transformed with the frames. Patients are put in
folds by number (`formats`). Images are read with SimpleITK (the ``external`` extra).
"""

from __future__ import annotations

import math
import os
import pathlib
import re

from absl import logging
import numpy as np

from lvef_jax.data import echonet, formats, video_io
from lvef_jax.data.clips import SPLITS

VIEWS = ("4CH", "2CH")
QUALITIES = ("Good", "Medium", "Poor")
EF_KEYS = ("LVef", "EF")
REQUIRED_KEYS = ("ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality")
LV_LABEL = 1
_PATIENT = re.compile(r"patient(\d+)$")
# The two releases' file names, by the sequence's: (sequence, ED labels, ES labels).
_LAYOUTS = (
  ("{p}_{v}_half_sequence.nii.gz", "{p}_{v}_ED_gt.nii.gz", "{p}_{v}_ES_gt.nii.gz"),
  ("{p}_{v}_half_sequence.nii", "{p}_{v}_ED_gt.nii", "{p}_{v}_ES_gt.nii"),
  ("{p}_{v}_sequence.mhd", "{p}_{v}_ED_gt.mhd", "{p}_{v}_ES_gt.mhd"),
)


def age_group(age: float) -> str:
  """CAMUS's adults in four groups (years): <40, 40-59, 60-79, 80+."""
  return "<40" if age < 40 else "40-59" if age < 60 else "60-79" if age < 80 else "80+"


def _sitk():
  try:
    import SimpleITK as sitk
  except ImportError:
    raise echonet.EchoNetFormatError(
      "reading CAMUS's NIfTI or MetaImage files needs SimpleITK: "
      "pip install -e '.[external]' (or pip install SimpleITK)"
    ) from None
  return sitk


def read_image(path) -> tuple[np.ndarray, tuple[float, float]]:
  """A CAMUS image or sequence as ``[T, H, W]`` (one frame: T = 1) and its pixel spacing
  (column, row), as the file states it.

  SimpleITK returns the file's axes reversed (time, y, x): y is the image's rows (depth), x
  its columns, as the CAMUS files are written.

  Raises:
    echonet.EchoNetFormatError: missing or unreadable file, or not 2-D/3-D.
  """
  sitk = _sitk()
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise echonet.EchoNetFormatError(f"{path}: no such file")
  try:
    image = sitk.ReadImage(path)
  except RuntimeError as e:
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise echonet.EchoNetFormatError(f"{path}: cannot be read ({first})") from None
  array = sitk.GetArrayFromImage(image)
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or min(array.shape) < 1:
    raise echonet.EchoNetFormatError(f"{path}: expected a 2-D image or sequence, got {array.shape}")
  spacing = tuple(float(s) for s in image.GetSpacing()[:2])
  return array, spacing


def read_info(path, problems: list[str]) -> dict | None:
  """Parses and checks one ``Info_{view}.cfg``; None (problems appended) if it is unusable."""
  path = os.fspath(path)
  values, lines = {}, {}
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    for line_num, line in enumerate(f, 1):
      if not line.strip():
        continue
      key, sep, value = line.partition(":")
      key = key.strip()
      if not sep or not key:
        problems.append(f"{path} line {line_num}: expected 'Key: value', found {line.strip()!r}")
        continue
      if key in values:
        problems.append(f"{path} line {line_num}: {key} given twice (first on line {lines[key]})")
        continue
      values[key], lines[key] = value.strip(), line_num
  ef_key = next((k for k in EF_KEYS if k in values), None)
  missing = [k for k in REQUIRED_KEYS if k not in values] + ([] if ef_key else [EF_KEYS[0]])
  if missing:
    problems.append(f"{path}: missing key(s) {', '.join(missing)}")
    return None
  n_before = len(problems)

  def where(key):
    return f"{path} line {lines[key]}"

  def num(key, **kw):
    return echonet.number(values[key], key, where(key), problems, **kw)

  info = {
    "nb_frame": num("NbFrame", positive=True, integer=True),
    "ed": num("ED", positive=True, integer=True),
    "es": num("ES", positive=True, integer=True),
    "age": num("Age", lo=0.0, hi=130.0),
    "ef": echonet.number(values[ef_key], ef_key, where(ef_key), problems, lo=0.0, hi=100.0),
    "edv": num("LVedv", lo=0.0) if "LVedv" in values else math.nan,
    "esv": num("LVesv", lo=0.0) if "LVesv" in values else math.nan,
    "fps": num("FrameRate", positive=True) if "FrameRate" in values else 0.0,
  }
  quality = values["ImageQuality"].capitalize()
  if quality not in QUALITIES:
    problems.append(
      f"{where('ImageQuality')}: ImageQuality {values['ImageQuality']!r} is not one of "
      f"{', '.join(QUALITIES)}"
    )
  sex = values["Sex"].upper()
  if sex not in ("M", "F"):
    problems.append(f"{where('Sex')}: Sex {values['Sex']!r} is not M or F")
  if len(problems) > n_before:
    return None
  for key in ("ED", "ES"):
    if info[key.lower()] > info["nb_frame"]:
      problems.append(f"{where(key)}: {key} {info[key.lower()]} is past NbFrame {info['nb_frame']}")
  if info["ed"] == info["es"]:
    problems.append(f"{where('ES')}: ED and ES are the same frame ({info['ed']})")
  if len(problems) > n_before:
    return None
  return {**info, "quality": quality, "sex": sex}


def find_patients(root: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
  """(patient number, folder) of every ``patientNNNN`` folder in ROOT or one level below, by
  number (a release's ``database_nifti/``, ``training/`` and ``testing/``)."""
  found = {}
  for top in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
    for entry in sorted(top.iterdir()) if top.is_dir() else ():
      match = _PATIENT.match(entry.name)
      if match and entry.is_dir():
        found.setdefault(int(match.group(1)), entry)
  return sorted(found.items())


def fold_of(patient: int) -> int:
  """Patients 1-50 are fold 0, 51-100 fold 1, ..., 451-500 fold 9 (then again from 0)."""
  return ((patient - 1) // 50) % formats.NUM_FOLDS


def _square_pixels(frames: np.ndarray, spacing, interpolation) -> np.ndarray:
  """Resamples the coarser axis of ``[T, H, W]`` so that pixels are square (1 % tolerance)."""
  import cv2

  sx, sy = spacing
  if not (sx > 0 and sy > 0) or abs(sx - sy) <= 0.01 * min(sx, sy):
    return frames
  finest = min(sx, sy)
  h, w = frames.shape[1:]
  size = (max(1, round(w * sx / finest)), max(1, round(h * sy / finest)))  # cv2: (width, height)
  return np.stack([cv2.resize(f, size, interpolation=interpolation) for f in frames])


def half_cycle_video(half: np.ndarray, mode: str, span: int) -> np.ndarray:
  """The prepared video of a half cycle ``[T, ...]`` (ED first, ES last), as ``data.half_cycle``
  says (`formats.HALF_CYCLES`); ``span`` is a clip's length in frames (clip_frames * period)."""
  if mode == "once" or len(half) < 2:
    return half
  back = half[-2::-1]  # ES-1 ... ED
  if mode == "mirror":
    return np.concatenate([half, back])
  cycle = np.concatenate([half, back[:-1]])  # ED ... ES ... ED+1: repeats without a doubled ED
  repeats = max(1, math.ceil((span - 1) / len(cycle)))
  return np.concatenate([cycle] * repeats + [half[:1]])


def _loader(record_name: str, paths: dict, info: dict, settings: formats.FormatSettings):
  """The `VideoRecord.load` of one (patient, view): see the module docstring."""

  def load():
    import cv2

    sequence, spacing = read_image(paths["sequence"])
    if len(sequence) != info["nb_frame"]:
      raise echonet.EchoNetFormatError(
        f"{paths['sequence']}: {len(sequence)} frames, but {paths['info']} says NbFrame "
        f"{info['nb_frame']}"
      )
    labels = []
    for phase in ("ED", "ES"):
      if paths.get(phase) is None:
        break
      label, _ = read_image(paths[phase])
      if label.shape[1:] != sequence.shape[1:]:
        raise echonet.EchoNetFormatError(
          f"{paths[phase]}: labels of {label.shape[1]}x{label.shape[2]} pixels, but the "
          f"sequence {paths['sequence']} has {sequence.shape[1]}x{sequence.shape[2]}"
        )
      labels.append((label[0] == LV_LABEL).astype(np.uint8))
    ed, es = info["ed"] - 1, info["es"] - 1
    frames = video_io.to_uint8(np.asarray(sequence))
    half = frames[ed : es + 1] if ed < es else frames[es : ed + 1][::-1]
    half = _square_pixels(half, spacing, cv2.INTER_LINEAR)
    # Frame indices at the training rate; the last is ES, whose labels are the experts'.
    index = video_io.resample_frames(np.arange(len(half)), info["fps"], settings.typical_fps)
    index = np.array(index)
    index[-1] = len(half) - 1
    half = video_io.resize_frames(half[index], settings.image_size)
    masks = None
    if len(labels) == 2:
      drawn = _square_pixels(np.stack(labels) * 255, spacing, cv2.INTER_NEAREST)
      masks = (video_io.resize_frames(drawn, settings.image_size) >= 128).astype(np.uint8)
    video = half_cycle_video(half, settings.half_cycle, settings.clip_frames * settings.period)
    return np.ascontiguousarray(video), masks, (0, len(half) - 1)

  load.__qualname__ = f"load[{record_name}]"
  return load


def load_dataset_index(
  root, settings: formats.FormatSettings, *, skipped: dict[str, str] | None = None
) -> list[echonet.VideoRecord]:
  """Reads and validates a CAMUS folder: one record per (patient, view of ``data.camus_view``).

  Every Info cfg is parsed and every listed file looked for; the images themselves are read
  when the copy is prepared. With ``skipped`` (``data.on_bad_video=skip``), a (patient, view)
  whose sequence is missing is left out and recorded there instead of being a problem.

  Raises:
    echonet.EchoNetFormatError: listing every problem (files, lines, keys).
  """
  root = pathlib.Path(root)
  name = formats.NAMES[formats.CAMUS]
  if not root.is_dir():
    what = "is not a directory" if root.exists() else "does not exist"
    echonet.raise_problems(root, [f"dataset root {root} {what}"], name)
  patients = find_patients(root)
  if not patients:
    echonet.raise_problems(
      root, [f"no patientNNNN folders in {root} or the folders in it (e.g. database_nifti/)"], name
    )
  _sitk()  # Refused now, before anything is prepared, if the extra is missing.
  views = VIEWS if settings.camus_view == "both" else (settings.camus_view,)
  problems, missing, records = [], [], []
  no_labels = 0
  for number, folder in patients:
    patient = folder.name
    for view in views:
      info_path = folder / f"Info_{view}.cfg"
      if not info_path.is_file():
        missing.append(str(info_path))
        continue
      info = read_info(info_path, problems)
      layout = next(
        (files for files in _LAYOUTS if (folder / files[0].format(p=patient, v=view)).is_file()),
        None,
      )
      record_name = f"{patient}_{view}"
      if layout is None:
        expected = folder / _LAYOUTS[0][0].format(p=patient, v=view)
        if skipped is not None:
          skipped[record_name] = f"no sequence ({expected.name} or the .mhd of the older release)"
        else:
          missing.append(f"{expected} (or {_LAYOUTS[2][0].format(p=patient, v=view)})")
        continue
      sequence, ed_gt, es_gt = (folder / f.format(p=patient, v=view) for f in layout)
      if info is None:
        continue
      labelled = ed_gt.is_file() and es_gt.is_file()
      no_labels += not labelled
      paths = {
        "info": str(info_path),
        "sequence": str(sequence),
        "ED": str(ed_gt) if labelled else None,
        "ES": str(es_gt) if labelled else None,
      }
      records.append(
        echonet.VideoRecord(
          file_name=record_name,
          ef=info["ef"],
          esv=info["esv"],
          edv=info["edv"],
          frame_height=settings.image_size,
          frame_width=settings.image_size,
          fps=settings.typical_fps if info["fps"] else 0.0,
          num_frames=info["nb_frame"],
          split=settings.split_of_fold(fold_of(number)),
          ed_frame=0,
          es_frame=-1,
          video_path=str(sequence),
          strata={
            "image_quality": info["quality"],
            "view": view,
            "sex": info["sex"],
            "age_group": age_group(info["age"]),
          },
          load=_loader(record_name, paths, info, settings),
        )
      )
  if missing:
    problems.append(f"{len(missing)} files are missing: {echonet.name_list(missing)}")
  if not problems:
    for split in SPLITS:
      if not any(r.split == split for r in records):
        problems.append(
          f"split {split.upper()} has no (patient, view): its folds "
          f"(data.val_folds, data.test_folds; patients 1-50 are fold 0) hold no patient here"
        )
  if problems:
    echonet.raise_problems(root, problems, name)
  if no_labels:
    logging.warning(
      "%d of %d CAMUS sequences have no ED/ES labels (*_ED_gt, *_ES_gt): they have no LV masks",
      no_labels,
      len(records),
    )
  unrated = sum(1 for r in records if not r.fps)
  if unrated:
    logging.warning(
      "%d CAMUS sequences have no FrameRate in their Info cfg: their frames are used at the "
      "rate they were recorded (not resampled to data.typical_fps=%g)",
      unrated,
      settings.typical_fps,
    )
  return records
