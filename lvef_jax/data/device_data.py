"""The train split kept in accelerator memory, and training clips cut from it on the device.

EchoNet-Dynamic's train split is 7,465 videos; at 175 frames each, as uint8 112x112 grey frames
it takes 16.4 GB, which fits in one H100 or H200 with room for I3D. Kept there, a training
batch costs the host only a few integers per clip (which video, where the clip starts, where
the augmentation crops: `pipeline.train_plans`, no video read); cutting, padding and cropping
the clips is a gather on the device (`make_clip_sampler`), dispatched asynchronously like the
train step, so no host work sits between two steps.

The clips are the ones the tf.data path (`pipeline.train_batches` with
``data.cache_in_memory``) gives for the same seed: the plans are drawn by the same code, and
the cutting here follows `pipeline._take_clip` and `pipeline._pad_and_crop`.

Only JAX and numpy are imported here; `pipeline.train_videos` reads the frames.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lvef_jax import sharding
from lvef_jax.errors import ConfigError

MODES = ("auto", "on", "off")
# "auto" keeps the split on the device only on accelerators, and only if it takes at most this
# share of the device's memory (the rest is for the model, its activations and the optimizer).
AUTO_MAX_SHARE = 0.4


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceVideos:
  """The train split on the devices (replicated): ``frames`` uint8 [N, S, S], ``first`` and
  ``length`` int32 [V] (video i is ``frames[first[i]:first[i] + length[i]]``), ``ef`` [V]."""

  frames: jax.Array
  first: jax.Array
  length: jax.Array
  ef: jax.Array

  @classmethod
  def put(cls, videos: dict[str, np.ndarray], mesh: Mesh) -> "DeviceVideos":
    """Copies `pipeline.train_videos` output to every device of ``mesh``."""
    replicated = sharding.replicated(mesh)
    return cls(
      **{
        k: jax.device_put(np.asarray(videos[k]), replicated)
        for k in ("frames", "first", "length", "ef")
      }
    )


def take_clips(
  videos: DeviceVideos,
  index: jax.Array,
  start: jax.Array,
  offset: jax.Array,
  *,
  clip_frames: int,
  period: int,
  pad: int,
) -> jax.Array:
  """Cuts one clip per row: uint8 [B, clip_frames, S, S, 1].

  Frames past a video's end are zeros, as in `pipeline._take_clip`; with ``pad`` > 0 each clip
  is zero-padded by ``pad`` px per side and cropped back at its ``offset`` (y, x), as in
  `pipeline._pad_and_crop`.
  """
  length = videos.length[index][:, None]  # [B, 1]
  positions = start[:, None] + period * jnp.arange(clip_frames)[None, :]  # [B, T]
  rows = videos.first[index][:, None] + jnp.minimum(positions, length - 1)
  clips = videos.frames[rows] * (positions < length).astype(jnp.uint8)[..., None, None]
  if pad > 0:
    size = clips.shape[-1]
    padded = jnp.pad(clips, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    clips = jax.vmap(
      lambda clip, yx: jax.lax.dynamic_slice(clip, (0, yx[0], yx[1]), (clip_frames, size, size))
    )(padded, offset)
  return clips[..., None]


def make_clip_sampler(
  mesh: Mesh, *, clip_frames: int, period: int, pad: int, members: int = 1
) -> Callable[[DeviceVideos, dict], dict]:
  """Returns ``sample(videos, plan) -> {"video", "ef"}``, jitted, the batch sharded over the
  ``data`` axis like the batches the tf.data path puts on the devices. ``plan`` is one of
  `pipeline.train_plans` (numpy; a few bytes per clip); for several members, their plans
  stacked (``[members, B]``), giving each member's batch (``[members, B, ...]``)."""
  cut = functools.partial(take_clips, clip_frames=clip_frames, period=period, pad=pad)

  def sample(videos: DeviceVideos, plan: dict) -> dict:
    index = plan["index"]
    return {"video": cut(videos, index, plan["start"], plan["offset"]), "ef": videos.ef[index]}

  batch = sharding.batch_sharding(mesh, members)
  if members > 1:
    sample = jax.vmap(sample, in_axes=(None, 0))
  return jax.jit(sample, out_shardings={"video": batch, "ef": batch})


def use_device_videos(mode: str, num_bytes: int) -> tuple[bool, str]:
  """Whether to keep a train split of ``num_bytes`` on the devices, and why (for the log).

  ``on`` always (one process only: every device holds the whole split), ``off`` never,
  ``auto`` on a GPU or TPU with one process when the split takes at most `AUTO_MAX_SHARE` of a
  device's memory.
  """
  if mode not in MODES:
    raise ConfigError(f"data.device_resident must be one of {', '.join(MODES)}, got {mode!r}")
  gb = f"{num_bytes / 1e9:.2f} GB"
  if mode == "off":
    return False, "data.device_resident=off"
  if jax.process_count() > 1:
    if mode == "on":
      raise ConfigError(
        "data.device_resident=on needs a single process (every device holds the whole train "
        "split); with several processes use data.device_resident=off or auto"
      )
    return False, "several processes: the tf.data path"
  if mode == "on":
    return True, f"data.device_resident=on ({gb})"
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return False, "auto: on the CPU the tf.data path"
  limit = (device.memory_stats() or {}).get("bytes_limit", 0)
  if num_bytes <= AUTO_MAX_SHARE * limit:
    return True, f"auto: the train split ({gb}) fits in {device.device_kind}'s memory"
  return False, f"auto: the train split ({gb}) is too large for {device.device_kind}"
