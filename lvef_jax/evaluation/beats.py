"""From a left-ventricle (LV) area curve to heartbeats, and the ejection fraction of LV masks.

A segmentation model gives a binary LV mask per frame; its pixel count over time is the LV area
curve. EchoNet-Dynamic (Ouyang et al., Nature 2020) finds each end-systole (ES) as a deep local
minimum of that curve, takes every heartbeat of the video and averages the model's EF over the
clips that end at them ("beat-to-beat" evaluation). This module does the curve side of that:
`end_systoles`, `beats` and `beat_clip_starts`, plus the EF the masks themselves give, from the
single-plane area-length volume of each beat's end-diastolic (ED) and ES mask (`mask_ef`).
`MaskStats` collects the per-frame area and length from masks segmented in chunks, so a long
video never has all its masks in memory.

Units: frames (indices into the video), pixels (area in pixels, length in pixels, volume in
pixels³) and EF in percent. The pixel size cancels in the EF, so none is needed. Only numpy and
scipy are imported (no TensorFlow, no JAX).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.signal

# EchoNet-Dynamic's minimum spacing of two end-systoles: 20 frames at its videos' 50 fps
# (0.4 s, a heart rate of up to 150 beats/min).
REFERENCE_DISTANCE = 20


def _curve(area, what: str = "area") -> np.ndarray:
  area = np.asarray(area, np.float64)
  if area.ndim != 1:
    raise ValueError(f"{what} must be 1-D (one value per frame), got shape {area.shape}")
  if not np.all(np.isfinite(area)):
    bad = np.flatnonzero(~np.isfinite(area))
    raise ValueError(f"{what} has {bad.size} non-finite values (first at frame {bad[0]})")
  return area


def _frames(frames, num_frames: int, what: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 1 or (frames.size and not np.issubdtype(frames.dtype, np.integer)):
    raise ValueError(f"{what} must be a 1-D array of frame indices, got {frames!r}")
  frames = frames.astype(np.int64)
  if frames.size and (frames.min() < 0 or frames.max() >= num_frames):
    raise ValueError(f"{what} {frames.tolist()} outside the video's frames [0, {num_frames})")
  return frames


def peak_distance(fps: float, reference_fps: float = 50.0) -> int:
  """The least spacing of two end-systoles, in frames: `REFERENCE_DISTANCE` frames at
  ``reference_fps``, scaled to ``fps`` (the same 0.4 s at any frame rate), at least 1."""
  if not (math.isfinite(fps) and fps > 0 and math.isfinite(reference_fps) and reference_fps > 0):
    raise ValueError(f"fps and reference_fps must be positive, got {fps} and {reference_fps}")
  return max(1, round(REFERENCE_DISTANCE * fps / reference_fps))


def end_systoles(area, fps: float, *, reference_fps: float = 50.0) -> np.ndarray:
  """End-systolic frames of a video: the deep local minima of its LV area curve.

  As EchoNet-Dynamic's beat-to-beat evaluation: ``scipy.signal.find_peaks(-area, distance=D,
  prominence=0.5 * (p95 - p5))``, with D = 20 frames scaled by ``fps / reference_fps`` (at
  least 1; 20 frames at 50 fps are 0.4 s) and p5 / p95 the 5th / 95th percentiles of the area,
  so a minimum counts only if it lies at least half the curve's robust range below the maxima
  on either side. EchoNet-Dynamic's own code takes its "5 %" and "95 %" values at the sorted
  indices ``round(n ** 0.05)`` and ``round(n ** 0.95)``, which are not percentiles (for 100
  frames, the 2nd smallest and the 80th); here they are true percentiles (``np.percentile``,
  linear interpolation). A minimum at the first or last frame is never found (``find_peaks``
  needs a rise on both sides).

  Args:
    area: LV area per frame ``[n]`` (pixels, or any unit: only its shape matters).
    fps: the video's frame rate (frames/s).
    reference_fps: the frame rate at which the spacing is 20 frames.

  Returns:
    The end-systolic frame indices, increasing, as int64 ``[k]``. Empty for an empty curve or a
    flat one (p95 = p5).

  Raises:
    ValueError: ``area`` is not 1-D or holds NaN/inf, or a frame rate is not positive.
  """
  area = _curve(area)
  distance = peak_distance(fps, reference_fps)
  if area.size == 0:
    return np.zeros(0, np.int64)
  low, high = np.percentile(area, [5.0, 95.0])
  if not high > low:
    return np.zeros(0, np.int64)
  peaks, _ = scipy.signal.find_peaks(-area, distance=distance, prominence=0.5 * (high - low))
  return peaks.astype(np.int64)


def beats(area, es_frames) -> list[tuple[int, int]]:
  """Each end-systole's heartbeat as ``(ed_frame, es_frame)``.

  The end-diastole (ED) of a beat is the frame of largest area between the previous end-systole
  (excluded) or the video's start and this end-systole (included); ties go to the earliest
  frame. The first beat may be partial: when the video starts during systole, its "ED" is the
  first frame, not a true end-diastole, and its EF is an underestimate (EchoNet-Dynamic keeps it
  as well). Frames after the last end-systole belong to no beat.

  Args:
    area: LV area per frame ``[n]``.
    es_frames: end-systolic frames (`end_systoles`), in any order; duplicates count once.

  Returns:
    One ``(ed_frame, es_frame)`` per end-systole, in increasing order, ``ed_frame <= es_frame``.

  Raises:
    ValueError: ``area`` is not a finite 1-D curve, or a frame lies outside it.
  """
  area = _curve(area)
  es_frames = np.unique(_frames(es_frames, area.size, "es_frames"))
  out, start = [], 0
  for es in es_frames.tolist():
    out.append((start + int(np.argmax(area[start : es + 1])), es))
    start = es + 1
  return out


def beat_clip_starts(es_frames, clip_frames: int, period: int) -> np.ndarray:
  """First frames of the clips that end at each end-systole.

  A clip takes ``clip_frames`` frames every ``period`` frames, so the clip whose last frame is
  ``es`` starts at ``es - (clip_frames - 1) * period``. An end-systole too early in the video for
  a whole clip before it (a start below 0) is dropped; when none remains, the caller falls back
  to the one-clip estimate.

  Args:
    es_frames: end-systolic frames, increasing (`end_systoles`).
    clip_frames: frames per clip (>= 1).
    period: frames between a clip's frames (>= 1).

  Returns:
    The clip starts, int64 ``[k]`` with k <= len(es_frames), in the order of ``es_frames``.

  Raises:
    ValueError: ``clip_frames`` or ``period`` is below 1, or a frame index is negative.
  """
  if clip_frames < 1 or period < 1:
    raise ValueError(f"clip_frames and period must be >= 1, got {clip_frames} and {period}")
  es_frames = _frames(es_frames, np.iinfo(np.int64).max, "es_frames")
  starts = es_frames - (clip_frames - 1) * period
  return starts[starts >= 0]


# ---------------------------------------------------------------------------- masks to volumes
def _masks(masks) -> np.ndarray:
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"masks must be [n, H, W], got shape {masks.shape}")
  return masks != 0


def _long_axis_lengths(masks: np.ndarray) -> np.ndarray:
  """`long_axis_length` of each of boolean ``masks [n, H, W]``, float64 ``[n]``."""
  n, height, width = masks.shape
  if n == 0:
    return np.zeros(0)
  yy = np.arange(height, dtype=np.float64)[:, None]
  xx = np.arange(width, dtype=np.float64)[None, :]
  weight = masks.astype(np.float64)
  count = weight.sum((1, 2))
  safe = np.maximum(count, 1.0)
  mean_y = (weight * yy).sum((1, 2)) / safe
  mean_x = (weight * xx).sum((1, 2)) / safe
  dy = yy[None] - mean_y[:, None, None]
  dx = xx[None] - mean_x[:, None, None]
  cyy, cxx, cxy = ((weight * a * b).sum((1, 2)) for a, b in ((dy, dy), (dx, dx), (dx, dy)))
  theta = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)  # the major axis, from x towards y
  along = dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None]
  high = np.where(masks, along, -np.inf).max((1, 2))
  low = np.where(masks, along, np.inf).min((1, 2))
  return np.where(count > 0, high - low + 1.0, 0.0)


def long_axis_length(mask) -> float:
  """The LV's long-axis length (pixels) for the area-length volume, from a binary mask.

  The extent of the mask's pixels along their principal axis (the major axis of their second
  moments): the distance between the outermost pixel centres along it, plus one pixel for the
  pixels' own width, so that a one-pixel mask is 1 long and an ellipse of semi-major axis a
  about 2a. For an apical view the principal axis is the apex-to-mitral-plane axis; unlike a
  length measured by hand it is not bent by an irregular outline.

  Args:
    mask: binary LV mask ``[H, W]`` (non-zero = inside).

  Returns:
    The length in pixels; 0.0 for an empty mask.
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
  return float(_long_axis_lengths(_masks(mask[None]))[0])


def area_length_volume(area, length):
  """Single-plane area-length volume ``8 A² / (3 π L)`` (pixels³ for A in pixels², L in pixels).

  Exact for a prolate ellipsoid seen in its long-axis section (A = π a b, L = 2a gives
  4/3 π a b²). The pixel size enters the volume as its cube and cancels in the EF. Vectorised
  over broadcastable ``area`` and ``length``; 0 where the length is 0 (an empty mask).
  """
  area = np.asarray(area, np.float64)
  length = np.asarray(length, np.float64)
  safe = np.where(length > 0, length, 1.0)
  volume = np.where(length > 0, 8.0 * area**2 / (3.0 * math.pi * safe), 0.0)
  return volume if volume.ndim else float(volume)


def mask_ef(areas, lengths, beat_list: Sequence[tuple[int, int]]) -> dict:
  """The EF that a video's LV masks give, per heartbeat and averaged.

  For each beat ``(ed_frame, es_frame)`` of `beats` (the frames of its largest and smallest
  area), EF = 100 (EDV - ESV) / EDV with the area-length volumes (`area_length_volume`) of those
  two frames. A beat whose EDV is 0 (an empty mask) has no EF and is left out.

  Args:
    areas: LV area per frame ``[n]`` (pixels, e.g. `MaskStats.area`).
    lengths: long-axis length per frame ``[n]`` (pixels, e.g. `MaskStats.length`).
    beat_list: the beats, ``(ed_frame, es_frame)`` pairs.

  Returns:
    ``{"ef": mean EF over the beats (%, NaN with no beat), "beat_ef": [EF per beat (%)],
    "beats": number of beats scored}``.

  Raises:
    ValueError: ``areas`` and ``lengths`` differ in shape or are not finite, or a beat's frame
      lies outside them.
  """
  areas, lengths = _curve(areas, "areas"), _curve(lengths, "lengths")
  if areas.shape != lengths.shape:
    raise ValueError(f"areas {areas.shape} and lengths {lengths.shape} differ in shape")
  pairs = np.asarray(list(beat_list), np.int64).reshape(-1, 2)
  _frames(pairs.ravel(), areas.size, "beat frames")
  edv = area_length_volume(areas[pairs[:, 0]], lengths[pairs[:, 0]])
  esv = area_length_volume(areas[pairs[:, 1]], lengths[pairs[:, 1]])
  keep = edv > 0
  beat_ef = (100.0 * (edv[keep] - esv[keep]) / edv[keep]).tolist()
  return {
    "ef": float(np.mean(beat_ef)) if beat_ef else math.nan,
    "beat_ef": beat_ef,
    "beats": len(beat_ef),
  }


class MaskStats:
  """Per-frame LV area and long-axis length, accumulated from masks segmented in chunks.

  A caller segments a long video a fixed number of frames at a time and passes each chunk of
  masks to `add`; only two numbers per frame are kept, never the masks. The result is the same
  as computing the whole video's masks at once.

  Attributes:
    area: pixel count per frame so far, float64 ``[n]`` (pixels²).
    length: `long_axis_length` per frame so far, float64 ``[n]`` (pixels).
  """

  def __init__(self):
    self._area: list[np.ndarray] = []
    self._length: list[np.ndarray] = []
    self._shape: tuple[int, int] | None = None

  def add(self, masks) -> None:
    """Appends the frames of binary masks ``[n, H, W]`` (non-zero = LV; n may be 0).

    Raises:
      ValueError: ``masks`` is not 3-D, or its frame size differs from the earlier chunks'.
    """
    masks = _masks(masks)
    if self._shape is not None and masks.shape[1:] != self._shape:
      raise ValueError(f"masks of {masks.shape[1:]} after masks of {self._shape}")
    self._shape = masks.shape[1:]
    self._area.append(masks.sum((1, 2), dtype=np.int64).astype(np.float64))
    self._length.append(_long_axis_lengths(masks))

  def __len__(self) -> int:
    return sum(len(a) for a in self._area)

  @property
  def area(self) -> np.ndarray:
    return np.concatenate(self._area) if self._area else np.zeros(0)

  @property
  def length(self) -> np.ndarray:
    return np.concatenate(self._length) if self._length else np.zeros(0)

  def volume(self) -> np.ndarray:
    """Area-length volume per frame (pixels³), `area_length_volume` of `area` and `length`."""
    return np.asarray(area_length_volume(self.area, self.length))
