"""The tf.data streams: a prepared TFDS copy -> numpy batches of clips, for training and evaluation.

`train_batches` gives an epoch of shuffled, augmented training clips; `train_videos` and
`train_plans` give the device-resident path (`lvef_jax.data.device_data`) the train split and,
per epoch, where to cut the same clips; `clip_batches` gives the evaluation clips of a split
(one per video, or every clip), each tagged with its video's index; `frame_batches` gives the
segmentation examples, the traced ED and ES frames with their LV masks. The data are prepared, and
the data config read, by `lvef_jax.data.preparation`; where clips sit in a video is defined in
`lvef_jax.data.clips`.

Everything TensorFlow does with clips lives here, so that model and training code only ever see
numpy dicts. This module must not import JAX: it runs in the input-feeding part of each process
(importing `preparation` keeps TensorFlow off the GPUs).

Multi-process use: every process calls the same function with its own `shard_index` and the
same `num_shards`; train and eval yield the same number of batches in every shard, so
processes stay in step.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lvef_jax.data import preparation
from lvef_jax.data.clips import check_clip_mode, clip_starts, clip_stride, max_clip_start
from lvef_jax.errors import ConfigError


# ----------------------------------------------------------------------------- clips
def _take_clip(
  frames: tf.Tensor, start: tf.Tensor, settings: preparation.DataSettings
) -> tf.Tensor:
  """uint8 [n, H, W] -> [clip_frames, H, W, 1]; frames past the end are zeros (never dropped)."""
  num_frames = tf.shape(frames)[0]
  index = start + settings.period * tf.range(settings.clip_frames)
  valid = index < num_frames
  # Gather clamped indices, then zero the invalid ones: avoids copying the whole video.
  clip = tf.gather(frames, tf.minimum(index, num_frames - 1))
  clip = clip * tf.cast(valid, tf.uint8)[:, None, None]
  return clip[..., None]


def _resize(clip: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes [T, H, W, 1] uint8 to [T, size, size, 1], skipping the work if already that size."""

  def resized():
    # antialias only matters when shrinking, where plain bilinear would alias speckle.
    out = tf.image.resize(
      tf.cast(clip, tf.float32), (size, size), method="bilinear", antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  shape = tf.shape(clip)
  same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
  out = tf.cond(same, lambda: clip, resized)
  return tf.ensure_shape(out, (clip.shape[0], size, size, 1))


def resize_frames(frames: tf.Tensor, size: int) -> tf.Tensor:
  """A decoded video's frames [T, H, W] at [T, size, size], as the clips are resized."""
  return _resize(frames[..., None], size)[..., 0]


def _crop_offset(pad: int, seed: tf.Tensor) -> tf.Tensor:
  """The random (y, x) crop offset of `_pad_and_crop`, in [0, 2*pad] each."""
  return tf.random.stateless_uniform((2,), seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)


def _pad_and_crop(clip: tf.Tensor, pad: int, offset: tf.Tensor) -> tf.Tensor:
  """EchoNet-Dynamic's augmentation: zero-pad `pad` px per side, crop back at `offset` (y, x).

  One offset for the whole clip, so motion between frames is not distorted. Offsets span
  [0, 2*pad] inclusive, i.e. shifts of up to `pad` px in either direction.
  """
  t, h, w, c = clip.shape
  padded = tf.pad(clip, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  return tf.slice(padded, tf.stack([0, offset[0], offset[1], 0]), (t, h, w, c))


def _check_shard(shard_index: int, num_shards: int, batch_size: int) -> None:
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _with_prefetch(ds: tf.data.Dataset, settings: preparation.DataSettings) -> tf.data.Dataset:
  if settings.prefetch == 0:
    return ds
  return ds.prefetch(tf.data.AUTOTUNE if settings.prefetch < 0 else settings.prefetch)


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  for batch in ds.as_numpy_iterator():
    if "file_name" in batch:
      batch["file_name"] = np.array(
        [name.decode("utf-8") for name in batch["file_name"]], dtype=str
      )
    yield batch


def _clip_plan(
  ex, num_frames: tf.Tensor, seed: int, settings: preparation.DataSettings
) -> dict[str, tf.Tensor]:
  """Where a training clip of `ex` starts and where its augmentation crops.

  Randomness keyed on (seed, file name): independent of read order, shard and buffer size, and
  the same for the tf.data path and the device-resident one.
  """
  key = tf.stack(
    [tf.constant(seed, tf.int64), tf.strings.to_hash_bucket_fast(ex["file_name"], 2**62)]
  )
  start_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  if settings.train_clip_start == "first":  # the paper's recipe: every epoch the same clip
    start = tf.constant(0, tf.int32)
  else:
    latest = max_clip_start(num_frames, settings.clip_frames, settings.period)
    start = tf.random.stateless_uniform((), start_seed, minval=0, maxval=latest + 1, dtype=tf.int32)
  offset = (
    _crop_offset(settings.augment_pad, crop_seed)
    if settings.augment_pad > 0
    else tf.zeros(2, tf.int32)
  )
  return {"start": start, "offset": offset}


def _train_order(
  ds: tf.data.Dataset,
  settings: preparation.DataSettings,
  total: int,
  *,
  batch_size: int,
  seed: int,
  shard_index: int,
  num_shards: int,
) -> tf.data.Dataset:
  """An epoch's examples in training order: shuffled, whole global batches, this process's rows.

  Shuffling does not look at the elements, so datasets of the same length in the same order
  come out in the same order: the device-resident path relies on this. Building it checks the
  shard and that the split holds at least one global batch (`ConfigError` if not); no example
  is read until it is iterated.
  """
  _check_shard(shard_index, num_shards, batch_size)
  global_batch = batch_size * num_shards
  if total < global_batch:
    raise ConfigError(f"Train split has {total} examples, fewer than one batch of {global_batch}.")
  if settings.shuffle_buffer > 1:
    ds = ds.shuffle(settings.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
  ds = ds.take(total // global_batch * global_batch)
  if num_shards > 1:  # this process's rows of each global batch, before any decoding
    ds = ds.enumerate().filter(lambda i, ex: (i // batch_size) % num_shards == shard_index)
    ds = ds.map(lambda i, ex: ex)
  return ds


def train_batches(
  builder, data_cfg, *, batch_size: int, seed: int, shard_index: int = 0, num_shards: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """One shuffled, augmented epoch of this process's rows of every global batch of the train split.

  Every process reads the same shuffled order and keeps its `batch_size` rows of each global
  batch (`batch_size * num_shards` clips), decoding only those: the global batches, and so a
  run's results, are the same whatever the number of processes.

  Args:
    builder: From `preparation.prepare`.
    data_cfg: The data config.
    batch_size: Clips per batch in this process.
    seed: Shuffle / clip start / crop seed; pass base_seed + epoch so epochs differ and runs
      repeat exactly.
    shard_index: This process's index.
    num_shards: Number of processes reading the split.

  Yields:
    {"video": uint8 [B, clip_frames, S, S, 1], "ef": float32 [B]}; only full global batches, so
    every process yields the same number of batches.

  Raises:
    ConfigError: the split holds fewer examples than one global batch (an epoch would be empty).
  """
  settings = preparation.DataSettings.from_cfg(data_cfg)
  total = preparation.num_examples(builder, "train")
  if settings.cache_in_memory:
    ds = preparation.cached_dataset(
      (os.fspath(builder.data_dir), "train"), lambda: preparation.read_examples(builder, "train")
    )
  else:
    ds = preparation.read_examples(builder, "train", shuffle_seed=seed)
  ds = _train_order(
    ds,
    settings,
    total,
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    num_shards=num_shards,
  )
  decode = preparation.decode_video(builder)

  def make_clip(ex):
    frames = decode(ex["video"])
    plan = _clip_plan(ex, tf.shape(frames)[0], seed, settings)
    clip = _resize(_take_clip(frames, plan["start"], settings), settings.image_size)
    if settings.augment_pad > 0:
      clip = _pad_and_crop(clip, settings.augment_pad, plan["offset"])
    return {"video": clip, "ef": ex["ef"]}

  ds = ds.map(make_clip, num_parallel_calls=settings.parallel, deterministic=True)
  ds = _with_prefetch(ds.batch(batch_size, drop_remainder=True), settings)
  yield from _numpy_batches(ds)


# ----------------------------------------------------------------------------- device-resident
def train_videos(builder, data_cfg) -> dict[str, np.ndarray]:
  """The whole train split as one array, for `lvef_jax.data.device_data`.

  Every video is resized to `image_size` here, once, with the op the tf.data path applies per
  clip (it works frame by frame, so the pixels are the same).

  Returns:
    ``frames`` uint8 [total frames, S, S] (the videos one after another, in split order),
    ``first`` int32 [V] (each video's first row in ``frames``), ``length`` int32 [V], ``ef``
    float32 [V]; video i is the i-th example of the unshuffled split, as `train_plans` counts.
  """
  settings = preparation.DataSettings.from_cfg(data_cfg)
  decode = preparation.decode_video(builder)
  ds = preparation.read_examples(builder, "train").map(
    lambda ex: resize_frames(decode(ex["video"]), settings.image_size),
    num_parallel_calls=settings.parallel,
    deterministic=True,
  )
  listing = preparation.split_listing(builder, "train")
  length = listing["num_frames"].astype(np.int32)
  first = (np.cumsum(length) - length).astype(np.int32)
  # Filled in place: EchoNet's split is ~16 GB at 112x112, so no second copy is ever made.
  frames = np.empty((int(length.sum()), settings.image_size, settings.image_size), np.uint8)
  for i, video in enumerate(ds.as_numpy_iterator()):
    frames[first[i] : first[i] + length[i]] = video
  return {
    "frames": frames,
    "first": first,
    "length": length,
    "ef": listing["ef"].astype(np.float32),
  }


def train_plans(
  builder, data_cfg, *, batch_size: int, seed: int, shard_index: int = 0, num_shards: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """The epoch `train_batches` would give for the same arguments with `cache_in_memory`, as
  indices: ``index`` (video, as in `train_videos`) int32 [B], ``start`` int32 [B] and
  ``offset`` (the crop's y, x) int32 [B, 2]. No video is read or decoded.
  """
  settings = preparation.DataSettings.from_cfg(data_cfg)
  listing = preparation.split_listing(builder, "train")
  total = len(listing["file_name"])
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "index": np.arange(total, dtype=np.int32),
      "file_name": [name.encode("utf-8") for name in listing["file_name"]],
      "num_frames": listing["num_frames"].astype(np.int32),
    }
  )
  ds = _train_order(
    ds,
    settings,
    total,
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    num_shards=num_shards,
  )
  ds = ds.map(lambda ex: {"index": ex["index"], **_clip_plan(ex, ex["num_frames"], seed, settings)})
  yield from ds.batch(batch_size, drop_remainder=True).prefetch(2).as_numpy_iterator()


# ----------------------------------------------------------------------------- every clip
def clip_batches(
  builder,
  split: str,
  data_cfg,
  *,
  batch_size: int,
  clips: str = "one",
  stride: int = 0,
  shard_index: int = 0,
  num_shards: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation clips of this shard of `split`, each tagged with its video's index.

  Args:
    builder: From `preparation.prepare`.
    split: One of `clips.SPLITS`.
    data_cfg: The data config (augmentation settings are ignored).
    batch_size: Clips per batch in this process.
    clips: One of `clips.CLIP_MODES`: "one" (the clip from frame 0 of each video) or "all"
      (every start of `clips.clip_starts`).
    stride: Frames between the starts of "all"; 0 means clip_frames * period (clips that
      follow each other without overlap; `clips.clip_stride`).
    shard_index, num_shards: This process's share of the videos.

  Yields:
    {"video": uint8 [B, clip_frames, S, S, 1], "video_index": int32 [B] (position in
    `preparation.split_listing`; -1 for padding), "mask": float32 [B]}. Videos are decoded one
    at a time and their clips streamed, so host memory stays bounded however long the videos
    and however many the clips; every shard yields the same number of batches (the last
    padded).
  """
  settings = preparation.DataSettings.from_cfg(data_cfg)
  _check_shard(shard_index, num_shards, batch_size)
  check_clip_mode(clips, "clips")
  stride = clip_stride(stride, settings.clip_frames, settings.period)
  listing = preparation.split_listing(builder, split)
  total = len(listing["ef"])
  sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
  offsets = np.cumsum([0] + sizes)
  if clips == "one":
    counts = np.ones(total, np.int64)
  else:
    counts = np.array(
      [
        len(clip_starts(num_frames, settings.clip_frames, settings.period, stride))
        for num_frames in listing["num_frames"]
      ],
      np.int64,
    )
  shard_clips = [int(counts[offsets[i] : offsets[i + 1]].sum()) for i in range(num_shards)]
  num_batches = math.ceil(max(shard_clips) / batch_size) if total else 0
  spec = tfds.even_splits(split, n=num_shards)[shard_index]
  decode = preparation.decode_video(builder)
  offset = int(offsets[shard_index])

  def tagged(index, ex) -> tuple[tf.Tensor, tf.Tensor]:
    return decode(ex["video"]), tf.cast(index, tf.int32) + offset

  def first_clip(index, ex):
    frames, video_index = tagged(index, ex)
    return {
      "video": _resize(_take_clip(frames, tf.constant(0), settings), settings.image_size),
      "video_index": video_index,
      "mask": tf.constant(1.0),
    }

  def every_clip(index, ex):
    frames, video_index = tagged(index, ex)
    # The starts of `clip_starts`, in-graph: the video's length is known only once decoded.
    latest = max_clip_start(tf.shape(frames)[0], settings.clip_frames, settings.period)
    starts = tf.range(0, latest + 1, stride, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices(starts).map(
      lambda start: {
        "video": _resize(_take_clip(frames, start, settings), settings.image_size),
        "video_index": video_index,
        "mask": tf.constant(1.0),
      }
    )

  def read():
    return preparation.read_examples(builder, spec).enumerate()

  if clips == "one":

    def one_per_video():
      return read().map(first_clip, num_parallel_calls=settings.parallel, deterministic=True)

    if settings.cache_in_memory:  # one clip per video: small enough to keep after decoding
      ds = preparation.cached_dataset(
        (
          os.fspath(builder.data_dir),
          split,
          "first_clip",
          shard_index,
          num_shards,
          settings.clip_frames,
          settings.period,
          settings.image_size,
        ),
        one_per_video,
      )
    else:
      ds = one_per_video()
  else:
    # A few videos decode in parallel, each streaming its clips: memory holds those videos
    # and the batches in flight, however long the videos and however many their clips.
    ds = read().interleave(
      every_clip, cycle_length=4, block_length=batch_size, num_parallel_calls=4, deterministic=True
    )
  dummy = {
    "video": tf.zeros(
      (settings.clip_frames, settings.image_size, settings.image_size, 1), tf.uint8
    ),
    "video_index": tf.constant(-1, tf.int32),
    "mask": tf.constant(0.0),
  }
  pad = num_batches * batch_size - shard_clips[shard_index]
  ds = ds.concatenate(tf.data.Dataset.from_tensors(dummy).repeat(pad))
  ds = _with_prefetch(ds.batch(batch_size, drop_remainder=True), settings)
  yield from _numpy_batches(ds)


# ----------------------------------------------------------------------------- traced frames
def num_frame_examples(builder, split: str) -> int:
  """Segmentation examples of `split`: the traced ED and ES frame of every video with LV masks."""
  return 2 * int(preparation.split_listing(builder, split)["has_masks"].sum())


def _resize_masks(masks: tf.Tensor, size: int) -> tf.Tensor:
  """0/1 uint8 [n, H, W] -> [n, size, size]: resized as `_resize` resizes frames, then 1 where
  the resized value is at least 0.5; unchanged if already that size."""

  def resized():
    out = tf.image.resize(
      tf.cast(masks[..., None], tf.float32), (size, size), method="bilinear", antialias=True
    )
    return tf.cast(out[..., 0] >= 0.5, tf.uint8)

  shape = tf.shape(masks)
  same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
  return tf.ensure_shape(tf.cond(same, lambda: masks, resized), (masks.shape[0], size, size))


def _shard_sizes(total: int, num_shards: int) -> list[int]:
  """Videos in each shard of a split, as `tfds.even_splits` divides it."""
  return [total // num_shards + (i < total % num_shards) for i in range(num_shards)]


def frame_batches(
  builder,
  split: str,
  data_cfg,
  *,
  batch_size: int,
  train: bool,
  seed: int = 0,
  shard_index: int = 0,
  num_shards: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """The segmentation examples of this shard of `split`: the traced ED and ES frame of every
  video with LV masks (``has_masks``), each with its mask.

  Only the two traced frames of a video are kept (the video is decoded, the frames gathered
  in-graph), so with ``data.cache_in_memory`` the decoded frames of the shard are kept in memory
  after the first pass: ~2 S^2 bytes a frame, its mask included.

  Args:
    builder: From `preparation.prepare`.
    split: One of `clips.SPLITS`.
    data_cfg: The data config: ``image_size`` S, and for training ``augment_pad`` and
      ``shuffle_buffer``.
    batch_size: Frames per batch in this process.
    train: True: one shuffled pass (`seed`), each frame and its mask padded by ``augment_pad``
      px and cropped back at one random offset, whole batches only; every shard yields the
      batches the smallest shard fills, so processes stay in step. False: every frame once, in
      split order (ED then ES of each video), the last batch padded; every shard yields the
      same number of batches.
    seed: Shuffle and crop seed (train only); crops are keyed on (seed, file name, phase).
    shard_index, num_shards: This process's share of the videos (`tfds.even_splits`).

  Yields:
    {"image": uint8 [B, S, S, 1] (the frame resized as `resize_frames` resizes it), "mask":
    float32 [B, S, S] of 0/1 (the mask resized the same way, then thresholded at 0.5),
    "video_index": int32 [B] (position in `preparation.split_listing`, -1 for padding),
    "phase": int32 [B] (0 ED, 1 ES), "valid": float32 [B] (0 for padding)}.

  Raises:
    ConfigError: train, and the split's smallest shard holds fewer traced frames than one batch
      (on iteration, as `train_batches`).
  """
  settings = preparation.DataSettings.from_cfg(data_cfg)
  _check_shard(shard_index, num_shards, batch_size)
  size = settings.image_size
  listing = preparation.split_listing(builder, split)
  total = len(listing["file_name"])
  offsets = np.cumsum([0] + _shard_sizes(total, num_shards))
  shard_frames = [
    2 * int(listing["has_masks"][offsets[i] : offsets[i + 1]].sum()) for i in range(num_shards)
  ]
  spec = tfds.even_splits(split, n=num_shards)[shard_index]
  decode = preparation.decode_video(builder)
  names = [name.encode("utf-8") for name in listing["file_name"]]

  def read(shuffle_seed=None) -> tf.data.Dataset:
    """The shard's traced frames, unbatched, in read order."""

    def traced(ex):
      frames = tf.gather(decode(ex["video"]), tf.stack([ex["ed_frame"], ex["es_frame"]]))
      # By name, not by read position: the shuffled reads of training come in another order.
      # (A few thousand string comparisons a video; a lookup table's lifetime would have to be
      # tied to the cached dataset's.)
      video_index = tf.where(tf.equal(tf.constant(names, tf.string), ex["file_name"]))[0, 0]
      return {
        "image": resize_frames(frames, size)[..., None],
        "mask": _resize_masks(tf.stack([ex["ed_mask"], ex["es_mask"]]), size),
        "video_index": tf.fill([2], tf.cast(video_index, tf.int32)),
        "phase": tf.constant([0, 1], tf.int32),
        "file_name": tf.fill([2], ex["file_name"]),
      }

    ds = preparation.read_examples(builder, spec, shuffle_seed=shuffle_seed)
    ds = ds.filter(lambda ex: ex["has_masks"])
    ds = ds.map(traced, num_parallel_calls=settings.parallel, deterministic=True)
    return ds.unbatch()

  count = shard_frames[shard_index]
  if settings.cache_in_memory:
    key = (os.fspath(builder.data_dir), split, "traced_frames", shard_index, num_shards, size)
    ds = preparation.cached_dataset(key, read)
  else:
    ds = read(shuffle_seed=seed if train else None)

  def example(ex, valid=1.0):
    return {
      "image": ex["image"],
      "mask": tf.cast(ex["mask"], tf.float32),
      "video_index": ex["video_index"],
      "phase": ex["phase"],
      "valid": tf.constant(valid, tf.float32),
    }

  if train:
    num_batches = min(shard_frames) // batch_size
    if num_batches == 0:
      where = f" (in the smallest of its {num_shards} shards)" if num_shards > 1 else ""
      raise ConfigError(
        f"Split {split} has {min(shard_frames)} traced frames{where}, fewer than one batch of "
        f"{batch_size}."
      )
    # Cached, the whole shard is shuffled at once (its frames are in memory already); read from
    # disk, the record files are shuffled and a buffer of decoded frames.
    buffer = count if settings.cache_in_memory else settings.shuffle_buffer
    if buffer > 1:
      ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    pad = settings.augment_pad

    def augmented(ex):
      out = example(ex)
      if pad > 0:
        key = tf.stack(
          [tf.constant(seed, tf.int64), tf.strings.to_hash_bucket_fast(ex["file_name"], 2**62)]
        )
        offset = _crop_offset(pad, tf.random.experimental.stateless_fold_in(key, ex["phase"]))
        out["image"] = _pad_and_crop(out["image"][None], pad, offset)[0]
        out["mask"] = _pad_and_crop(out["mask"][None, ..., None], pad, offset)[0, ..., 0]
      return out

    ds = ds.take(num_batches * batch_size)
    ds = ds.map(augmented, num_parallel_calls=settings.parallel, deterministic=True)
  else:
    num_batches = math.ceil(max(shard_frames) / batch_size) if total else 0
    dummy = {
      "image": tf.zeros((size, size, 1), tf.uint8),
      "mask": tf.zeros((size, size), tf.uint8),
      "video_index": tf.constant(-1, tf.int32),
      "phase": tf.constant(0, tf.int32),
      "file_name": tf.constant(b""),
    }
    padding = tf.data.Dataset.from_tensors(dummy).repeat(num_batches * batch_size - count)
    ds = ds.map(example).concatenate(padding.map(lambda ex: example(ex, valid=0.0)))
  ds = _with_prefetch(ds.batch(batch_size, drop_remainder=True), settings)
  yield from _numpy_batches(ds)
