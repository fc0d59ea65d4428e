"""Synthetic CAMUS and EchoNet-Pediatric folders, made from a synthetic EchoNet-Dynamic one.

The tests and the demo of external validation need these datasets in the layouts they are
downloaded in, without the data (both need a research-use agreement). Each is written from a
folder of `lvef_jax.data.synthetic.generate`, video by video, so its EF labels and LV outlines
are the generator's:

* `write_camus`: video i becomes a patient with both views (the 2CH view the 4CH one mirrored
  left to right), each the half cycle between the video's traced ED and ES frames (stored from
  ES to ED where ES comes first, as some CAMUS sequences are), magnified more in height than in
  width (pixels not square, as the spacing written says) and its frame rate lowered
  (``scale``, ``frame_every``: the reader must undo both), label maps of ED and ES (LV cavity
  1, a myocardium ring 2) and an ``Info_{view}.cfg``. Patients are numbered so that every fold
  of ten has some (1, 51, 101, ..., 451, 2, 52, ...).
* `write_pediatric`: one view folder: FileList.csv with fold numbers, VolumeTracings.csv in
  the points layout, the videos; every other FileName is listed with its ".avi".

    python -m lvef_jax.data.synthetic_external --source=data/synthetic-n200-s0-f20-160 \\
        --format=camus --out=data/camus-synthetic
"""

from __future__ import annotations

import os
import pathlib
import shutil

from absl import app, flags
import numpy as np

from lvef_jax.data import camus, echonet, formats, masks

QUALITIES = camus.QUALITIES


def replace_dir(out_dir, build) -> pathlib.Path:
  """``build(tmp)`` writes into a sibling folder, which then replaces ``out_dir``: a folder
  half written (by an interrupted call) is never left where a reader would look."""
  out_dir = pathlib.Path(out_dir)
  tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    build(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  shutil.rmtree(out_dir, ignore_errors=True)
  tmp.rename(out_dir)
  return out_dir


def _records(source) -> list[echonet.VideoRecord]:
  records = [r for r in echonet.load_dataset_index(source) if r.ed_chords is not None]
  if not records:
    raise ValueError(f"{source}: no traced video to convert")
  return records


def patient_number(i: int) -> int:
  """The i-th video's patient number: ten folds of 50 numbers, filled in turn."""
  return 1 + (i % formats.NUM_FOLDS) * 50 + i // formats.NUM_FOLDS


def _labels(chords, height, width) -> np.ndarray:
  """A CAMUS label map: 1 inside the traced LV, 2 a three-pixel ring around it (myocardium)."""
  import cv2

  lv = masks.mask_from_chords(chords, height, width)
  ring = cv2.dilate(lv, np.ones((7, 7), np.uint8)) - lv
  return (lv + 2 * ring).astype(np.uint8)


def _write_image(array: np.ndarray, spacing: tuple[float, float], path: pathlib.Path) -> None:
  """``[T, H, W]`` or ``[H, W]`` to a NIfTI or MetaImage file with (column, row) ``spacing``."""
  sitk = camus._sitk()
  image = sitk.GetImageFromArray(np.ascontiguousarray(array))
  image.SetSpacing(tuple(spacing) + ((1.0,) if array.ndim == 3 else ()))
  sitk.WriteImage(image, os.fspath(path), useCompression=path.suffix == ".gz")


def _stretch(frames: np.ndarray, scale: tuple[float, float], interpolation) -> np.ndarray:
  """Resizes ``[T, H, W]`` by (rows, columns) ``scale``."""
  import cv2

  if scale == (1.0, 1.0):
    return frames
  h, w = frames.shape[1:]
  size = (round(w * scale[1]), round(h * scale[0]))
  return np.stack([cv2.resize(f, size, interpolation=interpolation) for f in frames])


def write_camus(
  source,
  out_dir,
  *,
  layout: str = "nifti",
  scale: tuple[float, float] = (2.0, 1.5),
  frame_every: int = 2,
  fps: float = 50.0,
  seed: int = 0,
) -> pathlib.Path:
  """Writes a CAMUS folder (``database_nifti/`` or, for ``layout="mhd"``, ``training/``).

  Args:
    source: a synthetic EchoNet-Dynamic folder (its traced videos are used).
    out_dir: the folder to write (replaced as a whole, atomically).
    layout: "nifti" (the current release) or "mhd" (the older MetaImage one).
    scale: (rows, columns) magnification of the frames; the spacing is written so that the
      physical size is the source's (pixels ``1/rows`` tall and ``1/columns`` wide).
    frame_every: keep every n-th frame (the stated FrameRate is ``fps / frame_every``); ED
      and ES are always kept.
    fps: the source's frame rate.
    seed: draws sex, age and image quality.

  Returns:
    The folder.
  """
  import cv2

  if layout not in ("nifti", "mhd"):
    raise ValueError(f"layout {layout!r}: expected nifti or mhd")
  rng = np.random.default_rng(seed)
  records = _records(source)
  suffix = ".nii.gz" if layout == "nifti" else ".mhd"
  sequence_name = "half_sequence" if layout == "nifti" else "sequence"
  spacing = (1.0 / scale[1], 1.0 / scale[0])

  def build(tmp: pathlib.Path) -> None:
    base = tmp / ("database_nifti" if layout == "nifti" else "training")
    for i, record in enumerate(records):
      patient = f"patient{patient_number(i):04d}"
      folder = base / patient
      folder.mkdir(parents=True)
      frames = echonet.load_video(record.video_path)
      _, height, width = frames.shape
      ed, es = record.ed_frame, record.es_frame
      lo, hi = min(ed, es), max(ed, es)
      keep = sorted(set(range(lo, hi + 1, frame_every)) | {lo, hi})
      sequence = frames[keep]
      labels = {
        "ED": _labels(record.ed_chords, height, width),
        "ES": _labels(record.es_chords, height, width),
      }
      sex = "MF"[int(rng.integers(2))]
      age = int(rng.integers(18, 95))
      quality = QUALITIES[int(rng.integers(len(QUALITIES)))]
      for view in camus.VIEWS:
        flip = view == "2CH"
        seq = sequence[:, :, ::-1] if flip else sequence
        _write_image(
          _stretch(seq, scale, cv2.INTER_LINEAR),
          spacing,
          folder / f"{patient}_{view}_{sequence_name}{suffix}",
        )
        for phase, label in labels.items():
          label = label[:, ::-1] if flip else label
          _write_image(
            _stretch(label[None], scale, cv2.INTER_NEAREST)[0],
            spacing,
            folder / f"{patient}_{view}_{phase}_gt{suffix}",
          )
        n = len(keep)
        ed_number, es_number = (1, n) if ed < es else (n, 1)
        lines = [
          f"ED: {ed_number}",
          f"ES: {es_number}",
          f"NbFrame: {n}",
          f"Sex: {sex}",
          f"Age: {age}",
          f"ImageQuality: {quality}",
          f"LVedv: {record.edv:.1f}",
          f"LVesv: {record.esv:.1f}",
          f"LVef: {record.ef:.1f}",
        ]
        if layout == "nifti":
          lines.append(f"FrameRate: {fps / frame_every:g}")
        (folder / f"Info_{view}.cfg").write_text("\n".join(lines) + "\n")

  return replace_dir(out_dir, build)


def write_pediatric(source, out_dir, *, view: str = "A4C", seed: int = 0) -> pathlib.Path:
  """Writes one EchoNet-Pediatric view folder (``out_dir`` is it, e.g. ``.../A4C``).

  Video i is in fold ``i % 10``; sex, age, weight and height are drawn with ``seed``.
  """
  rng = np.random.default_rng(seed)
  records = _records(source)

  def build(tmp: pathlib.Path) -> None:
    (tmp / echonet.VIDEOS).mkdir(parents=True)
    rows, points = [], []
    for i, record in enumerate(records):
      shutil.copyfile(record.video_path, tmp / echonet.VIDEOS / f"{record.file_name}.avi")
      age = float(rng.uniform(0.1, 18.0))
      listed = record.file_name + (".avi" if i % 2 else "")
      rows.append(
        f"{listed},{record.ef:.2f},{'MF'[int(rng.integers(2))]},{age:.1f},"
        f"{10 + 3 * age:.1f},{70 + 6 * age:.1f},{i % formats.NUM_FOLDS}"
      )
      for frame, chords in (
        (record.es_frame, record.es_chords),
        (record.ed_frame, record.ed_chords),
      ):
        c = np.asarray(chords, np.float64)[1:]
        outline = np.concatenate([c[:, :2], c[::-1, 2:]])
        points += [f"{record.file_name}.avi,{x:.9g},{y:.9g},{frame}" for x, y in outline]
    (tmp / echonet.FILE_LIST).write_text(
      "FileName,EF,Sex,Age,Weight,Height,Split\n" + "\n".join(rows) + "\n"
    )
    (tmp / echonet.TRACINGS).write_text(
      ",".join(echonet.POINTS_HEADER) + "\n" + "\n".join(points) + "\n"
    )

  return replace_dir(out_dir, build)


FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "A synthetic EchoNet-Dynamic folder.")
flags.DEFINE_enum("format", formats.CAMUS, [formats.CAMUS, formats.PEDIATRIC], "What to write.")
flags.DEFINE_string("out", None, "The folder to write (replaced).")
flags.DEFINE_enum("layout", "nifti", ["nifti", "mhd"], "CAMUS only: the release's layout.")


def _main(argv):
  del argv
  write = write_camus if FLAGS.format == formats.CAMUS else write_pediatric
  kwargs = {"layout": FLAGS.layout} if FLAGS.format == formats.CAMUS else {}
  print(write(FLAGS.source, FLAGS.out, **kwargs))


if __name__ == "__main__":
  flags.mark_flags_as_required(["source", "out"])
  app.run(_main)
