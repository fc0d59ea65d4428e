"""Spatial and temporal stream inputs, made inside the model from one clip tensor.

The input pipeline stays one clip ``[B, T, H, W, 1]`` for every family; the Two-Stream and
Fusion models derive their two inputs here, on the device:
- the spatial stream sees frames scaled to [0, 1];
- the temporal stream sees the ``T - 1`` frame differences ``x[t] - x[t-1]``, each difference
  frame standardised to zero mean and unit standard deviation (a flat difference is divided
  by 1e-6 instead of 0), as the adapted Two-Stream code does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

# "halves": the adapted code's split, the left half of each frame to the spatial stream and
# the differences of the right half to the temporal stream; "full": both see whole frames.
SPLITS = ("halves", "full")


def frame_differences(x: jax.Array) -> jax.Array:
  """Per-frame standardised differences of a ``[B, T, H, W, C]`` float clip: ``[B, T-1, ...]``."""
  diff = (x[:, 1:] - x[:, :-1]).astype(jnp.float32)
  mean = jnp.mean(diff, axis=(2, 3, 4), keepdims=True)
  std = jnp.std(diff, axis=(2, 3, 4), keepdims=True)
  return ((diff - mean) / jnp.where(std > 0, std, 1e-6)).astype(x.dtype)


def stream_inputs(video: jax.Array, split: str, dtype) -> tuple[jax.Array, jax.Array]:
  """``(spatial, temporal)`` inputs of a uint8 or [0, 1] clip batch for ``split``."""
  if split not in SPLITS:
    raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
  x = layers.to_unit_range(video, dtype)
  if split == "full":
    return x, frame_differences(x)
  half = x.shape[3] // 2
  return x[:, :, :, :half], frame_differences(x[:, :, :, half:])


def stream_width(image_size: int, split: str) -> int:
  """Width of each stream's frames for a square ``image_size`` clip."""
  return image_size // 2 if split == "halves" else image_size


def align_time(*maps: jax.Array) -> list[jax.Array]:
  """Crops feature maps to their shortest time axis so they can be concatenated on channels.

  Frames and their differences give maps of equal length whenever the clip length is even
  (28 frames and 27 differences both give 14 after the stride-2 stem); an odd clip length
  leaves the frame stream one step longer.
  """
  frames = min(m.shape[1] for m in maps)
  return [m[:, :frames] for m in maps]
