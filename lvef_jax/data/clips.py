"""Where clips sit in a video, in numpy only (no TensorFlow, no JAX): the tf.data pipeline,
the benchmark's device-resident batches and ``--mode=predict`` share these definitions."""

from __future__ import annotations

import numpy as np

from lvef_jax.errors import ConfigError


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


def max_clip_start(num_frames: int, clip_frames: int, period: int) -> int:
  """Largest random start: the last one whose clip still fits (0 if none fits)."""
  return max(num_frames - (clip_frames - 1) * period - 1, 0)


def clip_starts(num_frames: int, clip_frames: int, period: int, stride: int) -> np.ndarray:
  """Start frames of the clips that all-clips evaluation averages: 0, stride, 2*stride, ...

  up to the last start whose clip fits in the video (`max_clip_start`); always at least [0]
  (a video shorter than one clip gives one zero-padded clip, as in training).
  """
  if stride < 1:
    raise ConfigError(f"clip stride must be at least 1, got {stride}")
  return np.arange(0, max_clip_start(num_frames, clip_frames, period) + 1, stride)
