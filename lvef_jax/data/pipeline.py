"""tf.data input pipeline: EchoNet folder (or synthetic stand-in) -> TFDS -> numpy clip batches.

Everything TensorFlow lives here so that model and training code only ever see numpy dicts.
This module must not import JAX: it runs in the input-feeding part of each process, and TF
must not grab the accelerators JAX uses (`hide_gpus_from_tensorflow` runs at import).

All settings come from an `ml_collections.ConfigDict` `data_cfg` (defaults in the config
files); `_Settings.from_cfg` is the one place each key is read.

Multi-process use: every process calls the same function with its own `shard_index` and the
same `num_shards`; train and eval yield the same number of batches in every shard, so
processes stay in step. Run `prepare` once (e.g. on process 0, then a barrier) before other
processes call it on a shared file system: preparation is not guarded against concurrency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Iterator

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lvef_jax import filelock
from lvef_jax.data import echonet
from lvef_jax.data.clips import clip_starts
from lvef_jax.data import synthetic
from lvef_jax.data import tfds_builder
from lvef_jax.errors import ConfigError
from lvef_jax.reporting import files

SPLITS = ("train", "val", "test")
SKIPPED_FILE = "skipped_videos.csv"  # with data.on_bad_video=skip: the videos left out, why
_SOURCE_FILE = "source.json"  # Fingerprint of the folder a TFDS dir was prepared from.
# Exists while a preparation runs (its last step removes it): found by the next preparer, who
# holds the lock, it marks one that was killed, whose leftovers are removed.
_PREPARING_FILE = ".preparing"


def hide_gpus_from_tensorflow() -> None:
  """Makes TensorFlow CPU-only, leaving every GPU to JAX.

  TF would otherwise reserve most of each GPU's memory on first use.
  """
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF already initialised its devices: too late to change.
    logging.warning("Could not hide GPUs from TensorFlow: %s", e)


hide_gpus_from_tensorflow()
tfds.disable_progress_bar()  # Carriage-return bars garble log files; progress is logged instead.


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The data config, read and type-checked in one place."""

  root: str
  cache_dir: str
  synthetic_num_videos: int
  synthetic_seed: int
  synthetic_min_frames: int
  synthetic_max_frames: int
  tfds_dir: str
  clip_frames: int
  period: int
  image_size: int
  augment_pad: int
  train_clip_start: str
  on_bad_video: str
  shuffle_buffer: int
  cache_in_memory: bool
  num_parallel_calls: int
  prefetch: int

  @classmethod
  def from_cfg(cls, data_cfg) -> "_Settings":
    casts = {"str": str, "int": int, "bool": bool}  # Field types are strings (annotations).
    s = cls(**{f.name: casts[f.type](data_cfg[f.name]) for f in dataclasses.fields(cls)})
    if s.clip_frames < 1 or s.period < 1 or s.image_size < 1 or s.augment_pad < 0:
      raise ConfigError(
        f"Bad clip settings: clip_frames={s.clip_frames}, period={s.period}, "
        f"image_size={s.image_size}, augment_pad={s.augment_pad}"
      )
    if s.on_bad_video not in ("error", "skip"):
      raise ConfigError(f"data.on_bad_video={s.on_bad_video!r}: expected error or skip")
    if s.train_clip_start not in ("random", "first"):
      raise ConfigError(f"data.train_clip_start={s.train_clip_start!r}: expected random or first")
    return s

  @property
  def parallel(self) -> int:
    return tf.data.AUTOTUNE if self.num_parallel_calls < 0 else max(1, self.num_parallel_calls)


# ----------------------------------------------------------------------------- preparation
def _synthetic_params(s: _Settings) -> dict[str, int]:
  return {
    "num_videos": s.synthetic_num_videos,
    "seed": s.synthetic_seed,
    "min_frames": s.synthetic_min_frames,
    "max_frames": s.synthetic_max_frames,
  }


def _marker_matches(folder: pathlib.Path, params: dict[str, int]) -> bool:
  """True if `folder` holds a complete synthetic dataset generated with `params`."""
  try:
    marker = json.loads((folder / ".synthetic.json").read_text())
  except (OSError, ValueError):
    return False
  # Tolerate the generator nesting its params or recording extra fields.
  found = marker.get("params", marker) if isinstance(marker, dict) else {}
  return all(found.get(k) == v for k, v in params.items())


def resolve_root(data_cfg) -> pathlib.Path:
  """Returns the EchoNet folder to use, generating the synthetic stand-in if `root` is "".

  The synthetic dataset lives at `{cache_dir}/synthetic-n{N}-s{seed}-f{min}-{max}` and is
  reused only if its `.synthetic.json` records the same parameters; otherwise it is
  (re)generated.
  """
  s = _Settings.from_cfg(data_cfg)
  if s.root:
    root = pathlib.Path(s.root).expanduser().absolute()
    logging.info("Using EchoNet folder %s.", root)
    return root
  params = _synthetic_params(s)
  folder = pathlib.Path(s.cache_dir).expanduser().absolute() / (
    f"synthetic-n{s.synthetic_num_videos}-s{s.synthetic_seed}"
    f"-f{s.synthetic_min_frames}-{s.synthetic_max_frames}"
  )
  if _marker_matches(folder, params):
    logging.info("Reusing synthetic dataset %s.", folder)
    return folder
  if folder.exists():
    logging.warning("%s does not match %s (or is incomplete): regenerating it.", folder, params)
  logging.info("Generating synthetic dataset %s (%s).", folder, params)
  start = time.perf_counter()
  synthetic.generate(
    folder,
    s.synthetic_num_videos,
    s.synthetic_seed,
    min_frames=s.synthetic_min_frames,
    max_frames=s.synthetic_max_frames,
    overwrite=True,
  )
  logging.info(
    "Generated %d videos in %.1f s.", s.synthetic_num_videos, time.perf_counter() - start
  )
  return folder


def _tfds_dir(s: _Settings, root: pathlib.Path) -> pathlib.Path:
  if s.tfds_dir:
    return pathlib.Path(s.tfds_dir).expanduser().absolute()
  # Basename for humans, hash of the absolute path so two folders named alike never collide.
  digest = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:8]
  return pathlib.Path(s.cache_dir).expanduser().absolute() / "tfds" / f"{root.name}-{digest}"


def _fingerprint(root: pathlib.Path) -> dict[str, str]:
  """Cheap content fingerprint: the two CSVs' bytes plus every video's name and size.

  Lets `prepare` notice a folder edited after it was prepared (stale data would otherwise be
  reused silently). Sizes, not mtimes, so that copying the folder does not force a rebuild.
  """

  def file_hash(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""

  videos = root / "Videos"
  listing = (
    sorted(f"{e.name}:{e.stat().st_size}" for e in os.scandir(videos)) if videos.is_dir() else []
  )
  return {
    "file_list": file_hash(root / "FileList.csv"),
    "tracings": file_hash(root / "VolumeTracings.csv"),
    "videos": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
  }


def _remove_empty_dirs(top: pathlib.Path) -> None:
  """Removes empty folders under (and including) `top`; anything holding files stays."""
  if not top.is_dir():
    return
  for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
    try:
      os.rmdir(dirpath)
    except OSError:  # Not empty.
      pass


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  # TFDS warns "Variant folder ... has no dataset_info.json" about a folder that does not
  # exist yet, i.e. on every first preparation: ask it only about folders that exist.
  return builder.data_path.exists() and builder.is_prepared()


def prepare(data_cfg) -> tfds.core.DatasetBuilder:
  """Returns the builder for the configured data, preparing the TFDS files if needed.

  The folder is fully validated before anything is written; on any error nothing prepared is
  left behind and the error (`echonet.EchoNetFormatError` for format problems, a missing
  folder included) propagates. Processes sharing a cache folder (a sweep on several GPUs)
  prepare one at a time; the others wait, then reuse what the first prepared.
  """
  s = _Settings.from_cfg(data_cfg)
  with filelock.exclusive(pathlib.Path(s.cache_dir).expanduser().absolute() / ".prepare.lock"):
    return _prepare(data_cfg, s)


def _prepare(data_cfg, s: _Settings) -> tfds.core.DatasetBuilder:
  root = resolve_root(data_cfg)
  data_dir = _tfds_dir(s, root)
  source_file = data_dir / _SOURCE_FILE
  fingerprint = _fingerprint(root) if root.is_dir() else {}
  builder = tfds_builder.EchonetDynamic(data_dir=data_dir)
  marker = data_dir / _PREPARING_FILE
  if marker.exists():
    # TFDS writes into a temporary folder and renames it when done, but a process killed before
    # the rename leaves that folder behind (for EchoNet, gigabytes), and one killed after it
    # leaves data without its record of the source folder: either way, start again.
    logging.warning(
      "An earlier preparation into %s was interrupted; removing what it left and preparing again.",
      data_dir,
    )
    shutil.rmtree(data_dir / builder.name, ignore_errors=True)
    (data_dir / _SOURCE_FILE).unlink(missing_ok=True)
    marker.unlink()
  if _is_prepared(builder):
    recorded = json.loads(source_file.read_text()) if source_file.is_file() else None
    # Training needs only the prepared data, so a folder moved away afterwards is no error.
    # No record: prepared by someone else into an explicit tfds_dir; trust it.
    same_policy = recorded is None or recorded.get("on_bad_video", "error") == s.on_bad_video
    if same_policy and (
      not root.is_dir() or recorded is None or recorded.get("fingerprint") == fingerprint
    ):
      if not root.is_dir():
        logging.warning("%s is gone; using the data prepared from it earlier.", root)
      logging.info("Reusing prepared data %s (%s).", builder.data_dir, _counts(builder))
      return builder
    logging.warning(
      "%s changed since %s was prepared (or data.on_bad_video did): preparing it again.",
      root,
      builder.data_dir,
    )
    shutil.rmtree(builder.data_dir)
  # Validated here, before TFDS runs at all, so that a bad folder is refused in the reader's
  # words (every problem listed) and nothing is created for it.
  skipped = {} if s.on_bad_video == "skip" else None
  records = echonet.load_dataset_index(root, skipped=skipped)
  if skipped:
    logging.warning(
      "data.on_bad_video=skip: %d videos left out (listed in %s): %s",
      len(skipped),
      SKIPPED_FILE,
      echonet.name_list(skipped),
    )
  builder = tfds_builder.EchonetDynamic(data_dir=data_dir, index=records, skipped=skipped)
  logging.info(
    "preparing the dataset copy of %s in %s (%s); every video is decoded once.",
    root,
    builder.data_dir,
    tfds_builder.split_counts(records),
  )
  start = time.perf_counter()
  data_dir.mkdir(parents=True, exist_ok=True)
  marker.write_text(f"pid {os.getpid()}\n")
  try:
    builder.download_and_prepare(
      download_dir=data_dir / "downloads",
      download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(root), try_download_gcs=False
      ),
    )
  except BaseException:
    marker.unlink()  # TFDS deleted its temporary folder: nothing is left to clean up.
    raise
  finally:
    # This removes the empty download and dataset folders TFDS creates around its own.
    _remove_empty_dirs(data_dir)
  (pathlib.Path(builder.data_dir) / SKIPPED_FILE).write_text(
    files.csv_text(("FileName", "reason"), sorted((skipped or {}).items()))
  )
  source_file.write_text(
    json.dumps(
      {"root": str(root), "fingerprint": fingerprint, "on_bad_video": s.on_bad_video}, indent=1
    )
  )
  marker.unlink()
  _DATASET_MEMO.clear()  # Cached datasets may hold the previous preparation's data.
  logging.info(
    "Prepared %s in %.1f s (%s).", builder.data_dir, time.perf_counter() - start, _counts(builder)
  )
  return builder


def skipped_videos_csv(builder: tfds.core.DatasetBuilder) -> str:
  """The CSV of videos the preparation left out (``FileName,reason``), or "" if none."""
  path = pathlib.Path(builder.data_dir) / SKIPPED_FILE
  text = path.read_text() if path.is_file() else ""
  return text if text.count("\n") > 1 else ""


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Number of examples in `split` ("train", "val" or "test")."""
  return int(builder.info.splits[split].num_examples)


def _counts(builder) -> str:  # For log lines.
  return ", ".join(f"{num_examples(builder, k)} {k}" for k in SPLITS)


# ----------------------------------------------------------------------------- clips
def _take_clip(frames: tf.Tensor, start: tf.Tensor, s: _Settings) -> tf.Tensor:
  """uint8 [n, H, W] -> [clip_frames, H, W, 1]; frames past the end are zeros (never dropped)."""
  n = tf.shape(frames)[0]
  idx = start + s.period * tf.range(s.clip_frames)
  valid = idx < n
  # Gather clamped indices, then zero the invalid ones: avoids copying the whole video.
  clip = tf.gather(frames, tf.minimum(idx, n - 1))
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


def _read(builder, split_spec, *, shuffle_seed=None) -> tf.data.Dataset:
  """The split's examples with "video" still serialized: decode with `_decode_video`.

  Shuffle buffers and memory caches then hold one string per video (its raw frame bytes, as
  stored); videos are turned into tensors only inside the parallel map.
  """
  read_config = tfds.ReadConfig(
    try_autocache=False,  # Caching is our decision (cache_in_memory), made after SkipDecoding.
    shuffle_seed=shuffle_seed,
  )
  return builder.as_dataset(
    split=split_spec,
    shuffle_files=shuffle_seed is not None,
    read_config=read_config,
    decoders={"video": tfds.decode.SkipDecoding()},
  )


def _decode_video(builder) -> Callable[[Any], tf.Tensor]:
  return builder.info.features["video"].decode_example


# Memory caches must be reused across calls (one call = one epoch) to be of any use, so the
# cached datasets are kept here, keyed by everything that determines their content.
_DATASET_MEMO: dict[tuple, tf.data.Dataset] = {}


def _memo(key: tuple, make: Callable[[], tf.data.Dataset]) -> tf.data.Dataset:
  if key not in _DATASET_MEMO:
    _DATASET_MEMO[key] = make().cache()
  return _DATASET_MEMO[key]


def _check_shard(shard_index: int, num_shards: int, batch_size: int) -> None:
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _with_prefetch(ds: tf.data.Dataset, s: _Settings) -> tf.data.Dataset:
  if s.prefetch == 0:
    return ds
  return ds.prefetch(tf.data.AUTOTUNE if s.prefetch < 0 else s.prefetch)


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  for batch in ds.as_numpy_iterator():
    if "file_name" in batch:
      batch["file_name"] = np.array([b.decode("utf-8") for b in batch["file_name"]], dtype=str)
    yield batch


def _clip_plan(ex, num_frames: tf.Tensor, seed: int, s: _Settings) -> dict[str, tf.Tensor]:
  """Where a training clip of `ex` starts and where its augmentation crops.

  Randomness keyed on (seed, file name): independent of read order, shard and buffer size, and
  the same for the tf.data path and the device-resident one.
  """
  key = tf.stack(
    [tf.constant(seed, tf.int64), tf.strings.to_hash_bucket_fast(ex["file_name"], 2**62)]
  )
  start_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  if s.train_clip_start == "first":  # the paper's recipe: every epoch the same clip
    start = tf.constant(0, tf.int32)
  else:  # Highest start, as in max_clip_start.
    hi = tf.maximum(num_frames - (s.clip_frames - 1) * s.period - 1, 0)
    start = tf.random.stateless_uniform((), start_seed, minval=0, maxval=hi + 1, dtype=tf.int32)
  offset = _crop_offset(s.augment_pad, crop_seed) if s.augment_pad > 0 else tf.zeros(2, tf.int32)
  return {"start": start, "offset": offset}


def _train_order(
  ds: tf.data.Dataset,
  s: _Settings,
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
  if s.shuffle_buffer > 1:
    ds = ds.shuffle(s.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
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
    builder: From `prepare`.
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
  s = _Settings.from_cfg(data_cfg)
  total = num_examples(builder, "train")
  if s.cache_in_memory:
    ds = _memo((os.fspath(builder.data_dir), "train"), lambda: _read(builder, "train"))
  else:
    ds = _read(builder, "train", shuffle_seed=seed)
  ds = _train_order(
    ds, s, total, batch_size=batch_size, seed=seed, shard_index=shard_index, num_shards=num_shards
  )
  decode = _decode_video(builder)

  def make_clip(ex):
    frames = decode(ex["video"])
    plan = _clip_plan(ex, tf.shape(frames)[0], seed, s)
    clip = _resize(_take_clip(frames, plan["start"], s), s.image_size)
    if s.augment_pad > 0:
      clip = _pad_and_crop(clip, s.augment_pad, plan["offset"])
    return {"video": clip, "ef": ex["ef"]}

  ds = ds.map(make_clip, num_parallel_calls=s.parallel, deterministic=True)
  ds = _with_prefetch(ds.batch(batch_size, drop_remainder=True), s)
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
  s = _Settings.from_cfg(data_cfg)
  decode = _decode_video(builder)
  ds = _read(builder, "train").map(
    lambda ex: _resize(decode(ex["video"])[..., None], s.image_size)[..., 0],
    num_parallel_calls=s.parallel,
    deterministic=True,
  )
  listing = split_listing(builder, "train")
  length = listing["num_frames"].astype(np.int32)
  first = (np.cumsum(length) - length).astype(np.int32)
  # Filled in place: EchoNet's split is ~16 GB at 112x112, so no second copy is ever made.
  frames = np.empty((int(length.sum()), s.image_size, s.image_size), np.uint8)
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
  s = _Settings.from_cfg(data_cfg)
  listing = split_listing(builder, "train")
  total = len(listing["file_name"])
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "index": np.arange(total, dtype=np.int32),
      "file_name": [name.encode("utf-8") for name in listing["file_name"]],
      "num_frames": listing["num_frames"].astype(np.int32),
    }
  )
  ds = _train_order(
    ds, s, total, batch_size=batch_size, seed=seed, shard_index=shard_index, num_shards=num_shards
  )
  ds = ds.map(lambda ex: {"index": ex["index"], **_clip_plan(ex, ex["num_frames"], seed, s)})
  yield from ds.batch(batch_size, drop_remainder=True).prefetch(2).as_numpy_iterator()


# ----------------------------------------------------------------------------- every clip
_LISTINGS: dict[tuple, dict[str, np.ndarray]] = {}


def split_listing(builder, split: str) -> dict[str, np.ndarray]:
  """`file_name`, `ef` and `num_frames` of every video of `split`, in split order.

  A video's position here is its video index: every clip of it carries that index, so
  predictions are averaged per video from integers (which gather across processes, unlike
  file names). Reads the records without decoding any video.
  """
  key = (os.fspath(builder.data_dir), split)
  if key not in _LISTINGS:
    ds = _read(builder, split).map(lambda ex: {k: ex[k] for k in ("file_name", "ef", "num_frames")})
    rows = list(ds.as_numpy_iterator())
    _LISTINGS[key] = {
      "file_name": np.array([r["file_name"].decode("utf-8") for r in rows], dtype=str),
      "ef": np.array([r["ef"] for r in rows], np.float64),
      "num_frames": np.array([r["num_frames"] for r in rows], np.int64),
    }
  return _LISTINGS[key]


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
    builder: From `prepare`.
    split: "train", "val" or "test".
    data_cfg: The data config (augmentation settings are ignored).
    batch_size: Clips per batch in this process.
    clips: "one" (the clip from frame 0 of each video) or "all" (every start of
      `clip_starts`).
    stride: Frames between the starts of "all"; 0 means clip_frames * period (clips that
      follow each other without overlap).
    shard_index, num_shards: This process's share of the videos.

  Yields:
    {"video": uint8 [B, clip_frames, S, S, 1], "video_index": int32 [B] (position in
    `split_listing`; -1 for padding), "mask": float32 [B]}. Videos are decoded one at a time
    and their clips streamed, so host memory stays bounded however long the videos and however
    many the clips; every shard yields the same number of batches (the last padded).
  """
  s = _Settings.from_cfg(data_cfg)
  _check_shard(shard_index, num_shards, batch_size)
  if clips not in ("one", "all"):
    raise ConfigError(f"clips must be 'one' or 'all', got {clips!r}")
  stride = stride or s.clip_frames * s.period
  listing = split_listing(builder, split)
  total = len(listing["ef"])
  sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
  offsets = np.cumsum([0] + sizes)
  if clips == "one":
    counts = np.ones(total, np.int64)
  else:
    counts = np.array(
      [len(clip_starts(n, s.clip_frames, s.period, stride)) for n in listing["num_frames"]],
      np.int64,
    )
  shard_clips = [int(counts[offsets[i] : offsets[i + 1]].sum()) for i in range(num_shards)]
  num_batches = math.ceil(max(shard_clips) / batch_size) if total else 0
  spec = tfds.even_splits(split, n=num_shards)[shard_index]
  decode = _decode_video(builder)
  offset = int(offsets[shard_index])

  def tagged(index, ex) -> tuple[tf.Tensor, tf.Tensor]:
    return decode(ex["video"]), tf.cast(index, tf.int32) + offset

  def first_clip(index, ex):
    frames, video_index = tagged(index, ex)
    return {
      "video": _resize(_take_clip(frames, tf.constant(0), s), s.image_size),
      "video_index": video_index,
      "mask": tf.constant(1.0),
    }

  def every_clip(index, ex):
    frames, video_index = tagged(index, ex)
    last = tf.maximum(tf.shape(frames)[0] - (s.clip_frames - 1) * s.period - 1, 0)
    starts = tf.range(0, last + 1, stride, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices(starts).map(
      lambda start: {
        "video": _resize(_take_clip(frames, start, s), s.image_size),
        "video_index": video_index,
        "mask": tf.constant(1.0),
      }
    )

  def read():
    return _read(builder, spec).enumerate()

  if clips == "one":

    def one_per_video():
      return read().map(first_clip, num_parallel_calls=s.parallel, deterministic=True)

    if s.cache_in_memory:  # one clip per video: small enough to keep after decoding
      ds = _memo(
        (
          os.fspath(builder.data_dir),
          split,
          "first_clip",
          shard_index,
          num_shards,
          s.clip_frames,
          s.period,
          s.image_size,
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
    "video": tf.zeros((s.clip_frames, s.image_size, s.image_size, 1), tf.uint8),
    "video_index": tf.constant(-1, tf.int32),
    "mask": tf.constant(0.0),
  }
  pad = num_batches * batch_size - shard_clips[shard_index]
  ds = ds.concatenate(tf.data.Dataset.from_tensors(dummy).repeat(pad))
  ds = _with_prefetch(ds.batch(batch_size, drop_remainder=True), s)
  yield from _numpy_batches(ds)
