"""Clip geometry and the names evaluation chooses from, defined once for every module.

Where clips sit in a video (their frames, the latest start, the starts of all-clips
evaluation and the stride between them), the dataset's split names and the clip modes. Only
numpy is imported (no TensorFlow, no JAX): the tf.data pipeline, the device-resident batches,
evaluation, ``--mode=predict`` and the benchmark share these definitions.
"""

from __future__ import annotations

import numpy as np

from lvef_jax.errors import ConfigError

# The dataset's splits, in FileList.csv's order (its Split column spells them upper-case).
SPLITS = ("train", "val", "test")
# What ``--mode=eval`` calls every split of `SPLITS` at once.
EVERY_SPLIT = "all"
# Clips scored per video: "one" (the clip from frame 0, the paper's protocol) or "all" (every
# start of `clip_starts`, averaged).
CLIP_MODES = ("one", "all")


def check_split(split: str, what: str) -> tuple[str, ...]:
  """The splits that ``split`` names: itself, or every split for `EVERY_SPLIT`.

  Args:
    split: a name of `SPLITS` or `EVERY_SPLIT`.
    what: the setting it came from, for the error message (e.g. "eval split").

  Raises:
    ConfigError: ``split`` is neither.
  """
  if split == EVERY_SPLIT:
    return SPLITS
  if split not in SPLITS:
    raise ConfigError(f"{what} {split!r}: expected one of {', '.join((*SPLITS, EVERY_SPLIT))}")
  return (split,)


def check_clip_mode(mode: str, what: str) -> str:
  """Returns ``mode`` if it is one of `CLIP_MODES`.

  Args:
    mode: the clip mode asked for.
    what: the setting it came from, for the error message (e.g. "eval clips").

  Raises:
    ConfigError: ``mode`` is another.
  """
  if mode not in CLIP_MODES:
    raise ConfigError(f"{what} {mode!r}: expected {' or '.join(CLIP_MODES)}")
  return mode


def clip_stride(stride: int, clip_frames: int, period: int) -> int:
  """Frames between the starts of all-clips evaluation: ``stride``, or where it is 0 (the
  default of ``eval.clip_stride``) ``clip_frames * period``, clips that follow each other
  without overlap."""
  return stride or clip_frames * period


def clip_indices(num_frames: int, start: int, clip_frames: int, period: int) -> np.ndarray:
  """Frame indices of a clip; -1 marks positions past the video's end (zero frames).

  The numpy reference of what `pipeline._take_clip` does in-graph.
  """
  idx = start + period * np.arange(clip_frames)
  return np.where(idx < num_frames, idx, -1)


def take_clip(frames: np.ndarray, start: int, clip_frames: int, period: int) -> np.ndarray:
  """``[clip_frames, H, W, 1]`` from decoded frames ``[n, H, W]``: zero frames past the end."""
  index = clip_indices(len(frames), start, clip_frames, period)
  clip = frames[np.maximum(index, 0)].copy()
  clip[index < 0] = 0
  return clip[..., None]


def max_clip_start(num_frames, clip_frames: int, period: int):
  """Largest clip start: the last one whose clip still fits (0 if none fits).

  ``num_frames`` may be an int, a numpy array or an integer TensorFlow tensor (the tf.data
  graph draws training starts and cuts all-clips evaluation with this too); the result has its
  type. ``max(last, 0)`` is written as ``(last + |last|) // 2`` because Python's ``max``
  cannot compare tensors in a graph, and this module must not import TensorFlow.
  """
  last = num_frames - (clip_frames - 1) * period - 1
  return (last + abs(last)) // 2


def clip_starts(num_frames: int, clip_frames: int, period: int, stride: int) -> np.ndarray:
  """Start frames of the clips that all-clips evaluation averages: 0, stride, 2*stride, ...

  up to the last start whose clip fits in the video (`max_clip_start`); always at least [0]
  (a video shorter than one clip gives one zero-padded clip, as in training).
  """
  if stride < 1:
    raise ConfigError(f"clip stride must be at least 1, got {stride}")
  return np.arange(0, max_clip_start(num_frames, clip_frames, period) + 1, stride)
