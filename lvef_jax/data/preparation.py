"""Dataset preparation: the configured EchoNet folder (or synthetic stand-in) -> its TFDS copy.

`prepare` resolves the folder (`resolve_root` generates the synthetic dataset when
``data.root`` is ""), validates it, and writes the TFDS copy once (reused while the folder's
fingerprint and ``data.on_bad_video`` stay the same; a copy of an older version of the builder
is prepared again, then removed). What a prepared copy holds is read here too: `num_examples`,
`split_listing` (every video's name, EF, length and whether it has LV masks, no video decoded),
`skipped_videos_csv`, and `read_examples`, the raw records the tf.data streams of
`lvef_jax.data.pipeline` start from. The caches of prepared data (`split_listing`'s, and
`cached_dataset`'s memory caches) live here too, beside the one function that makes them stale.

All settings come from an `ml_collections.ConfigDict` `data_cfg` (defaults in the config
files); `DataSettings.from_cfg` is the one place each key is read.

This module must not import JAX: it runs in the input-feeding part of each process, and TF
must not grab the accelerators JAX uses (`hide_gpus_from_tensorflow` runs at import).
Processes on one machine that share a cache folder prepare one at a time (a file lock); across
machines on a shared file system, run `prepare` once (e.g. on process 0, then a barrier) before
the other processes call it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Callable

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lvef_jax import filelock
from lvef_jax.data import echonet
from lvef_jax.data import formats
from lvef_jax.data import synthetic
from lvef_jax.data import tfds_builder
from lvef_jax.data.clips import SPLITS
from lvef_jax.errors import ConfigError
from lvef_jax.reporting import files

SKIPPED_FILE = "skipped_videos.csv"  # with data.on_bad_video=skip: the videos left out, why
# The dataset's own strata of each video (CAMUS image quality, view, ...): FileName, then one
# column per stratum. Only the header for a dataset without strata (EchoNet-Dynamic).
STRATA_FILE = "strata.csv"
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
class DataSettings:
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
  def from_cfg(cls, data_cfg) -> "DataSettings":
    casts = {"str": str, "int": int, "bool": bool}  # Field types are strings (annotations).
    settings = cls(
      **{field.name: casts[field.type](data_cfg[field.name]) for field in dataclasses.fields(cls)}
    )
    if (
      settings.clip_frames < 1
      or settings.period < 1
      or settings.image_size < 1
      or settings.augment_pad < 0
    ):
      raise ConfigError(
        f"Bad clip settings: clip_frames={settings.clip_frames}, period={settings.period}, "
        f"image_size={settings.image_size}, augment_pad={settings.augment_pad}"
      )
    if settings.on_bad_video not in ("error", "skip"):
      raise ConfigError(f"data.on_bad_video={settings.on_bad_video!r}: expected error or skip")
    if settings.train_clip_start not in ("random", "first"):
      raise ConfigError(
        f"data.train_clip_start={settings.train_clip_start!r}: expected random or first"
      )
    return settings

  @property
  def parallel(self) -> int:
    return tf.data.AUTOTUNE if self.num_parallel_calls < 0 else max(1, self.num_parallel_calls)


# ----------------------------------------------------------------------------- the folder
def _synthetic_params(settings: DataSettings) -> dict[str, int]:
  return {
    "num_videos": settings.synthetic_num_videos,
    "seed": settings.synthetic_seed,
    "min_frames": settings.synthetic_min_frames,
    "max_frames": settings.synthetic_max_frames,
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
  settings = DataSettings.from_cfg(data_cfg)
  if settings.root:
    root = pathlib.Path(settings.root).expanduser().absolute()
    logging.info("Using the dataset folder %s.", root)
    return root
  params = _synthetic_params(settings)
  folder = pathlib.Path(settings.cache_dir).expanduser().absolute() / (
    f"synthetic-n{settings.synthetic_num_videos}-s{settings.synthetic_seed}"
    f"-f{settings.synthetic_min_frames}-{settings.synthetic_max_frames}"
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
    settings.synthetic_num_videos,
    settings.synthetic_seed,
    min_frames=settings.synthetic_min_frames,
    max_frames=settings.synthetic_max_frames,
    overwrite=True,
  )
  logging.info(
    "Generated %d videos in %.1f s.", settings.synthetic_num_videos, time.perf_counter() - start
  )
  return folder


def _tfds_dir(
  settings: DataSettings, root: pathlib.Path, identity: dict | None = None
) -> pathlib.Path:
  if settings.tfds_dir:
    return pathlib.Path(settings.tfds_dir).expanduser().absolute()
  # Basename for humans, hash of the absolute path so two folders named alike never collide,
  # and of the format's settings (`formats.FormatSettings.identity`: the folds that make the
  # splits, CAMUS's clip construction), so that copies prepared otherwise never mix.
  key = str(root.absolute()) + (json.dumps(identity, sort_keys=True) if identity else "")
  digest = hashlib.sha256(key.encode()).hexdigest()[:8]
  return pathlib.Path(settings.cache_dir).expanduser().absolute() / "tfds" / f"{root.name}-{digest}"


def _file_hash(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _fingerprint(root: pathlib.Path, fmt: str = formats.ECHONET) -> dict[str, str]:
  """Cheap content fingerprint: the two CSVs' bytes plus every video's name and size (CAMUS:
  every Info cfg's bytes plus every file's path and size).

  Lets `prepare` notice a folder edited after it was prepared (stale data would otherwise be
  reused silently). Sizes, not mtimes, so that copying the folder does not force a rebuild.
  """
  if fmt == formats.CAMUS:
    infos, listing = [], []
    for dirpath, _, names in sorted(os.walk(root)):
      for name in sorted(names):
        path = pathlib.Path(dirpath) / name
        listing.append(f"{path.relative_to(root)}:{path.stat().st_size}")
        if name.endswith(".cfg"):
          infos.append(_file_hash(path))
    return {
      "info": hashlib.sha256("\n".join(infos).encode()).hexdigest(),
      "files": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
    }

  videos = root / "Videos"
  listing = (
    sorted(f"{entry.name}:{entry.stat().st_size}" for entry in os.scandir(videos))
    if videos.is_dir()
    else []
  )
  return {
    "file_list": _file_hash(root / "FileList.csv"),
    "tracings": _file_hash(root / "VolumeTracings.csv"),
    "videos": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
  }


def _remove_empty_dirs(top: pathlib.Path) -> None:
  """Removes empty folders under (and including) `top`; anything holding files stays."""
  if not top.is_dir():
    return
  for dirpath, _, _ in sorted(os.walk(top), key=lambda walked: -len(walked[0])):
    try:
      os.rmdir(dirpath)
    except OSError:  # Not empty.
      pass


# ----------------------------------------------------------------------------- preparation
def _older_versions(builder: tfds.core.DatasetBuilder) -> list[pathlib.Path]:
  """The prepared copies beside ``builder``'s of an older VERSION of the builder, oldest first.

  A copy of a newer version (prepared by a newer checkout) is not listed: it is left alone.
  """
  builder_dir = pathlib.Path(builder.data_path).parent
  older = []
  for entry in builder_dir.iterdir() if builder_dir.is_dir() else ():
    try:
      version = tfds.core.Version(entry.name)
    except ValueError:  # TFDS's own "incomplete.*" folders, anything else.
      continue
    if version < builder.version and (entry / "dataset_info.json").is_file():
      older.append((version, entry))
  return [entry for _, entry in sorted(older)]


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
  settings = DataSettings.from_cfg(data_cfg)
  cache_dir = pathlib.Path(settings.cache_dir).expanduser().absolute()
  with filelock.exclusive(cache_dir / ".prepare.lock"):
    return _prepare(data_cfg, settings)


def _prepare(data_cfg, settings: DataSettings) -> tfds.core.DatasetBuilder:
  root = resolve_root(data_cfg)
  fmt = formats.FormatSettings.from_cfg(data_cfg)
  data_dir = _tfds_dir(settings, root, fmt.identity())
  source_file = data_dir / _SOURCE_FILE
  fingerprint = _fingerprint(root, fmt.format) if root.is_dir() else {}
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
  older = _older_versions(builder)
  if _is_prepared(builder):
    recorded = json.loads(source_file.read_text()) if source_file.is_file() else None
    # Training needs only the prepared data, so a folder moved away afterwards is no error.
    # No record: prepared by someone else into an explicit tfds_dir; trust it.
    same_policy = recorded is None or recorded.get("on_bad_video", "error") == settings.on_bad_video
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
  else:
    for old in older:
      logging.warning(
        "The dataset copy at %s is of an older version (%s) and is prepared again because %s.",
        old,
        old.name,
        tfds_builder.NEW_IN_VERSION,
      )
  # Validated here, before TFDS runs at all, so that a bad folder is refused in the reader's
  # words (every problem listed) and nothing is created for it.
  skipped = {} if settings.on_bad_video == "skip" else None
  records = formats.load_index(root, data_cfg, skipped=skipped)
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
  names = sorted({name for record in records for name in record.strata})
  (pathlib.Path(builder.data_dir) / STRATA_FILE).write_text(
    files.csv_text(
      ("FileName", *names),
      [[r.file_name, *(r.strata.get(n, "") for n in names)] for r in records if r.strata],
    )
  )
  source_file.write_text(
    json.dumps(
      {
        "root": str(root),
        "fingerprint": fingerprint,
        "on_bad_video": settings.on_bad_video,
        **fmt.identity(),
      },
      indent=1,
    )
  )
  # Copies of older versions are removed, now that this one is prepared: nothing here reads
  # them again, and EchoNet's is ~22 GB. Before the marker goes: a process killed in between
  # leaves it, and the next preparation removes them with the rest (see above).
  for old in older:
    shutil.rmtree(old)
  marker.unlink()
  # Both caches are keyed by the data folder, which a new preparation reuses: they may hold
  # the previous preparation's data.
  _DATASETS.clear()
  _LISTINGS.clear()
  logging.info(
    "Prepared %s in %.1f s (%s).", builder.data_dir, time.perf_counter() - start, _counts(builder)
  )
  return builder


# ----------------------------------------------------------------------------- what it holds
def skipped_videos_csv(builder: tfds.core.DatasetBuilder) -> str:
  """The CSV of videos the preparation left out (``FileName,reason``), or "" if none."""
  path = pathlib.Path(builder.data_dir) / SKIPPED_FILE
  text = path.read_text() if path.is_file() else ""
  return text if text.count("\n") > 1 else ""


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Number of examples in `split` (one of `clips.SPLITS`)."""
  return int(builder.info.splits[split].num_examples)


def _counts(builder) -> str:  # For log lines.
  return ", ".join(f"{num_examples(builder, split)} {split}" for split in SPLITS)


def read_examples(builder, split_spec, *, shuffle_seed=None) -> tf.data.Dataset:
  """The split's examples with "video" still serialized: decode with `decode_video`.

  Shuffle buffers and memory caches then hold one string per video (its raw frame bytes, as
  stored); videos are turned into tensors only inside the parallel map.
  """
  unshuffled = shuffle_seed is None
  read_config = tfds.ReadConfig(
    try_autocache=False,  # Caching is our decision (cache_in_memory), made after SkipDecoding.
    shuffle_seed=shuffle_seed,
    # Unshuffled, the record files are read one after another: the split's order is then the
    # files' order, and a slice of the split (a process's share) reads as that slice of it.
    # TFDS's default interleaves 16 examples of each file, which orders a slice spanning fewer
    # files differently: the train split of a two-process evaluation scored the wrong videos.
    **({"interleave_cycle_length": 1} if unshuffled else {}),
  )
  return builder.as_dataset(
    split=split_spec,
    shuffle_files=shuffle_seed is not None,
    read_config=read_config,
    decoders={"video": tfds.decode.SkipDecoding()},
  )


def decode_video(builder) -> Callable[[tf.Tensor], tf.Tensor]:
  """The in-graph decoder of a "video" that `read_examples` left serialized."""
  return builder.info.features["video"].decode_example


# Memory caches must be reused across calls (one call = one epoch) to be of any use, so the
# cached datasets are kept here, keyed by everything that determines their content.
_DATASETS: dict[tuple, tf.data.Dataset] = {}


def cached_dataset(key: tuple, make: Callable[[], tf.data.Dataset]) -> tf.data.Dataset:
  """``make()`` cached in memory, the same dataset for every call with ``key`` until the next
  preparation. ``key`` starts with the builder's data folder and names everything else the
  content depends on."""
  if key not in _DATASETS:
    _DATASETS[key] = make().cache()
  return _DATASETS[key]


_LISTINGS: dict[tuple, dict[str, np.ndarray]] = {}


def strata(builder, split: str) -> dict[str, np.ndarray]:
  """The dataset's own strata of every video of ``split``, in `split_listing`'s order.

  Returns:
    {stratum name: str array, one value per video} (CAMUS: ``image_quality``, ``view``,
    ``sex``, ``age_group``; EchoNet-Pediatric: ``view``, ``age_group``, ``sex``); {} for a
    dataset without strata (EchoNet-Dynamic) or a copy prepared before strata were recorded.
  """
  path = pathlib.Path(builder.data_dir) / STRATA_FILE
  if not path.is_file():
    return {}
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if not rows or len(rows[0]) < 2:
    return {}
  names = rows[0][1:]
  by_file = {row[0]: row[1:] for row in rows[1:] if len(row) == len(rows[0])}
  files_ = split_listing(builder, split)["file_name"]
  return {
    name: np.array([by_file.get(f, [""] * len(names))[i] for f in files_], dtype=str)
    for i, name in enumerate(names)
  }


def split_listing(builder, split: str) -> dict[str, np.ndarray]:
  """`file_name`, `ef`, `num_frames` and `has_masks` of every video of `split`, in split order.

  A video's position here is its video index: every clip of it carries that index, so
  predictions are averaged per video from integers (which gather across processes, unlike
  file names). Reads the records without decoding any video.
  """
  key = (os.fspath(builder.data_dir), split)
  if key not in _LISTINGS:
    ds = read_examples(builder, split).map(
      lambda ex: {k: ex[k] for k in ("file_name", "ef", "num_frames", "has_masks")}
    )
    rows = list(ds.as_numpy_iterator())
    _LISTINGS[key] = {
      "file_name": np.array([row["file_name"].decode("utf-8") for row in rows], dtype=str),
      "ef": np.array([row["ef"] for row in rows], np.float64),
      "num_frames": np.array([row["num_frames"] for row in rows], np.int64),
      "has_masks": np.array([row["has_masks"] for row in rows], bool),
    }
  return _LISTINGS[key]
