"""The pictures a clinician reads to check a segmentation: the LV area curve and an overlay video.

`area_curve` plots a video's left-ventricle (LV) area over time with the end-systoles and
end-diastoles `lvef_jax.evaluation.beats` found, and the expert-traced frames when the dataset
has them: a missed or spurious beat is seen at a glance. `OverlayWriter` writes the echo with
the LV mask's outline drawn on every frame, so the outline can be followed through the cycle.
Both write atomically (a temporary sibling, renamed when complete): a reader never sees a
half-written file, and a failure leaves none. Only numpy, OpenCV and matplotlib (Agg) are
imported (no TensorFlow, no JAX).
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Iterable, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Overlay colours, BGR as OpenCV takes them: the outline yellow (seen on grey and black alike),
# red at end-systole, green at end-diastole (the curve's colours).
OUTLINE = (0, 255, 255)
ES_COLOUR = (0, 0, 255)
ED_COLOUR = (0, 200, 0)
# Overlays are enlarged until their shorter side has at least this many pixels: on EchoNet's
# 112 x 112 frames a 1-pixel outline would cover a tenth of the 12-pixel-wide ES cavity.
MIN_OVERLAY_SIDE = 300


def _tmp_path(path: pathlib.Path) -> pathlib.Path:
  # Hidden, unique to this process, and with the real suffix (cv2 picks the container by it).
  return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _marks(ax, seconds, area, frames, style: dict, label: str) -> None:
  frames = np.asarray(list(frames), np.int64)
  frames = frames[(frames >= 0) & (frames < len(area))]
  ax.plot(seconds[frames], area[frames], ls="none", label=f"{label} ({len(frames)})", **style)


def area_curve(
  path,
  area,
  fps: float,
  *,
  es_frames: Sequence[int],
  ed_frames: Sequence[int],
  traced_ed: int | None = None,
  traced_es: int | None = None,
  title: str = "",
) -> None:
  """A PNG of the LV area over time with the detected end-systoles and end-diastoles.

  Detected ES frames are red downward triangles and detected ED frames green upward ones, on
  the curve; the expert-traced ED and ES frames (VolumeTracings.csv), when given, are dashed
  vertical lines in the same colours, so a detection can be checked against them. The legend
  gives the number of each mark.

  Args:
    path: the PNG to write (folders are made); written to a temporary sibling, then renamed.
    area: LV area per frame ``[n]``, pixels.
    fps: the video's frame rate (frames/s): the x axis is in seconds.
    es_frames: detected end-systolic frames (`beats.end_systoles`).
    ed_frames: detected end-diastolic frames (the first of each `beats.beats` pair).
    traced_ed: the expert-traced ED frame, or None.
    traced_es: the expert-traced ES frame, or None.
    title: the figure's title.

  Raises:
    ValueError: ``area`` is not 1-D, or ``fps`` is not positive.
  """
  area = np.asarray(area, np.float64)
  if area.ndim != 1:
    raise ValueError(f"area must be 1-D (one value per frame), got shape {area.shape}")
  if not (math.isfinite(fps) and fps > 0):
    raise ValueError(f"fps must be positive, got {fps}")
  path = pathlib.Path(path)
  seconds = np.arange(len(area)) / fps
  fig, ax = plt.subplots(figsize=(8, 3.5))
  try:
    ax.plot(seconds, area, "-", color="0.3", lw=1.2, label="LV area")
    _marks(ax, seconds, area, es_frames, dict(marker="v", color="tab:red", ms=7), "detected ES")
    _marks(ax, seconds, area, ed_frames, dict(marker="^", color="tab:green", ms=7), "detected ED")
    for frame, colour, label in ((traced_ed, "tab:green", "ED"), (traced_es, "tab:red", "ES")):
      if frame is not None:
        ax.axvline(
          frame / fps, color=colour, ls="--", lw=1, label=f"traced {label} (frame {frame})"
        )
    ax.set(xlabel="time (s)", ylabel="LV area (pixels)", title=title)
    if len(area):
      ax.set_xlim(0.0, max(seconds[-1], 1.0 / fps))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
      fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
      tmp.replace(path)  # a reader never sees a half-written figure
    finally:
      tmp.unlink(missing_ok=True)
  finally:
    plt.close(fig)


class OverlayWriter:
  """Writes an AVI (Motion-JPEG) of a grey echo with the LV mask's outline on every frame.

  Frames and masks come in chunks (`write`), so a long video is never held whole. Each frame is
  enlarged by an integer ``scale`` (by default the least that makes its shorter side at least
  `MIN_OVERLAY_SIDE` pixels: 3x for EchoNet's 112 x 112), so that the 1-pixel outline is thin
  next to the cavity; the mask is enlarged smoothly (linear, cut at one half) before its outline
  is traced (cv2.findContours), which gives a smooth outline rather than the pixel staircase. The
  outline is yellow; on the frames given as ``es_frames`` (``ed_frames``) it is red (green) and
  "ES" ("ED") is written in the top-left corner. The file is written to a temporary sibling and
  renamed by `close`; `abort` (or an exception inside a ``with`` block) removes it, so no
  half-written video remains.

  Args:
    path: the AVI to write (folders are made).
    fps: frame rate of the video written (frames/s).
    height: frame height of the frames given to `write` (pixels).
    width: frame width (pixels).
    scale: the enlargement, an integer >= 1; None chooses it as above.
    es_frames: frame indices (counted over all `write` calls) marked as end-systoles.
    ed_frames: frame indices marked as end-diastoles.

  Raises:
    RuntimeError: OpenCV cannot open a Motion-JPEG writer for the file.
  """

  def __init__(
    self,
    path,
    fps: float,
    height: int,
    width: int,
    *,
    scale: int | None = None,
    es_frames: Iterable[int] = (),
    ed_frames: Iterable[int] = (),
  ):
    if height < 1 or width < 1:
      raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if not (math.isfinite(fps) and fps > 0):
      raise ValueError(f"fps must be positive, got {fps}")
    self.scale = (
      int(scale) if scale is not None else math.ceil(MIN_OVERLAY_SIDE / min(height, width))
    )
    if self.scale < 1:
      raise ValueError(f"scale must be >= 1, got {scale}")
    self.path = pathlib.Path(path)
    self.height, self.width = int(height), int(width)
    self.es_frames = {int(f) for f in es_frames}
    self.ed_frames = {int(f) for f in ed_frames}
    self.frames_written = 0
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = _tmp_path(self.path)
    size = (self.width * self.scale, self.height * self.scale)
    self._writer = cv2.VideoWriter(
      str(self._tmp), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), size
    )
    if not self._writer.isOpened():
      self._writer.release()
      self._tmp.unlink(missing_ok=True)
      self._writer = None
      raise RuntimeError(f"cv2.VideoWriter could not open a Motion-JPEG AVI at {self._tmp}")

  def __enter__(self) -> OverlayWriter:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.close()
    else:
      self.abort()

  def _check(self, frames, masks) -> tuple[np.ndarray, np.ndarray]:
    if self._writer is None:
      raise ValueError(f"the overlay writer of {self.path} is closed")
    frames, masks = np.asarray(frames), np.asarray(masks)
    shape = (self.height, self.width)
    if frames.dtype != np.uint8 or frames.ndim != 3 or frames.shape[1:] != shape:
      raise ValueError(
        f"frames must be uint8 [n, {shape[0]}, {shape[1]}], got {frames.dtype} {frames.shape}"
      )
    if masks.shape != frames.shape:
      raise ValueError(f"masks {masks.shape} do not match frames {frames.shape}")
    return frames, masks

  def write(self, frames, masks) -> None:
    """Appends grey frames ``uint8 [n, H, W]`` with their binary LV masks ``[n, H, W]``
    (non-zero = LV). A wrong shape or dtype raises ValueError before anything is written."""
    frames, masks = self._check(frames, masks)
    size = (self.width * self.scale, self.height * self.scale)
    for frame, mask in zip(frames, masks):
      index = self.frames_written
      image = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
      image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
      big = cv2.resize((mask != 0).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
      contours, _ = cv2.findContours(
        (big >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
      )
      colour, label = OUTLINE, None
      if index in self.ed_frames:
        colour, label = ED_COLOUR, "ED"
      if index in self.es_frames:
        colour, label = ES_COLOUR, "ES"
      cv2.drawContours(image, contours, -1, colour, 1, cv2.LINE_8)
      if label:
        cv2.putText(image, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
      self._writer.write(image)
      self.frames_written += 1

  def close(self) -> pathlib.Path:
    """Finishes the file and renames it to ``path``; returns ``path``. A second call does
    nothing more."""
    if self._writer is not None:
      writer, self._writer = self._writer, None
      try:
        writer.release()
        self._tmp.replace(self.path)
      finally:
        self._tmp.unlink(missing_ok=True)
    return self.path

  def abort(self) -> None:
    """Stops writing and removes the unfinished file; ``path`` is left as it was."""
    if self._writer is not None:
      writer, self._writer = self._writer, None
      writer.release()
    self._tmp.unlink(missing_ok=True)
