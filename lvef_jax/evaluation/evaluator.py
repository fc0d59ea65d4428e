"""Evaluators: per-video EF predictions of a split, from prediction functions and options.

An :class:`Evaluator` is built from its own options (split, one clip or every clip, stride,
batch size, Monte-Carlo dropout samples) and run with one or more prediction functions (an
ensemble averages them). It returns :class:`VideoPredictions`; files, plots and tables are
written by ``lvef_jax.reporting``. Nothing here imports the trainer: the trainer hands its
current weights over as a prediction function, and ``launch.py --mode=eval`` hands over a
:class:`~lvef_jax.evaluation.predictor.Predictor` restored from a checkpoint.

Every clip carries the integer index of its video, so all-clips averages are sums per index,
which gather across processes (file names could not).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from lvef_jax import sharding
from lvef_jax.evaluation import metrics

# A prediction function: a device batch of clips (and a dropout key, for Monte-Carlo dropout)
# -> EF per clip, as a device array sharded like the batch.
PredictFn = Callable[..., jax.Array]

# Nominal level of the prediction intervals (EF_low, EF_high).
INTERVAL_LEVEL = 0.9


@dataclasses.dataclass
class VideoPredictions:
  """One row per video of a split, in split order.

  ``ef_pred`` averages every prediction of the video (each clip, each dropout sample, each
  ensemble member); ``ef_pred_std`` is their standard deviation; ``n_clips`` counts the clips.
  """

  file_name: np.ndarray
  ef: np.ndarray
  ef_pred: np.ndarray
  ef_pred_std: np.ndarray
  n_clips: np.ndarray

  def interval(self, level: float = INTERVAL_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` interval of a normal with the predictions' mean and spread."""
    z = metrics.central_z(level)
    return self.ef_pred - z * self.ef_pred_std, self.ef_pred + z * self.ef_pred_std


def local_rows(x: jax.Array, axis: int = 0) -> np.ndarray:
  """This process's rows of a batch-sharded array (the batch axis ``axis``), in batch order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[axis].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[axis].start or 0
    if start not in seen:  # a replicated shard appears on several devices
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows, axis=axis)


class _Sums:
  """Per-video sums of predictions, their squares, and clip counts."""

  def __init__(self, num_videos: int):
    self.total = np.zeros(num_videos)
    self.squares = np.zeros(num_videos)
    self.clips = np.zeros(num_videos, np.int64)
    self.values = np.zeros(num_videos, np.int64)

  def add(self, video_index: np.ndarray, mask: np.ndarray, values: np.ndarray, clips: bool):
    keep = mask > 0
    index, values = video_index[keep], values[keep].astype(np.float64)
    np.add.at(self.total, index, values)
    np.add.at(self.squares, index, values**2)
    np.add.at(self.values, index, 1)
    if clips:
      np.add.at(self.clips, index, 1)

  def score(self, predict_fns, video, video_index, mask, number: int, options) -> None:
    """Adds every prediction of one batch: each function, each dropout sample.

    ``options`` gives ``mc_samples`` and ``seed``; ``number`` (the batch's) seeds its samples.
    """
    first = True
    for fn in predict_fns:
      if options.mc_samples <= 0:
        samples = [fn(video)]
      else:
        base = jax.random.fold_in(jax.random.key(options.seed), number)
        samples = (fn(video, key) for key in jax.random.split(base, options.mc_samples))
      for values in samples:
        self.add(video_index, mask, local_rows(values), clips=first)
        first = False

  def gathered(self) -> "_Sums":
    """The sums over every process (each process scored its own videos)."""
    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils

    out = _Sums(0)
    for name in ("total", "squares", "clips", "values"):
      stacked = multihost_utils.process_allgather(getattr(self, name))
      setattr(out, name, np.asarray(stacked).reshape(-1, len(getattr(self, name))).sum(0))
    return out


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Scores every video of ``split``.

  Attributes:
    split: one of `lvef_jax.data.clips.SPLITS`.
    clips: one of `lvef_jax.data.clips.CLIP_MODES`: ``one`` (the clip from frame 0) or ``all``
      (every start ``stride`` frames apart, averaged per video).
    stride: frames between the clip starts of ``all``; 0: clip length x period
      (`lvef_jax.data.clips.clip_stride`).
    batch_size: clips per compiled call (global); the last batch is padded, so one compiled
      function serves every batch and memory stays bounded.
    mc_samples: 0 for the inference-mode prediction; N for N Monte-Carlo dropout samples of
      every clip.
    seed: seeds the dropout samples.
  """

  split: str
  clips: str = "one"
  stride: int = 0
  batch_size: int = 16
  mc_samples: int = 0
  seed: int = 0

  def batches(self, builder, data_cfg, mesh) -> Iterator[tuple[dict, dict]]:
    from lvef_jax.data import pipeline  # TensorFlow: only where a prepared split is read

    local = sharding.check_batch_size(self.batch_size, mesh, "eval.batch_size")
    host_batches = pipeline.clip_batches(
      builder,
      self.split,
      data_cfg,
      batch_size=local,
      clips=self.clips,
      stride=self.stride,
      shard_index=jax.process_index(),
      num_shards=jax.process_count(),
    )
    return sharding.device_prefetch(host_batches, mesh, keys=("video",), size=data_cfg.prefetch)

  def run(
    self, predict_fns: Sequence[PredictFn] | PredictFn, builder, data_cfg, mesh
  ) -> VideoPredictions:
    """Averages ``predict_fns`` (an ensemble, or one function) over the clips of every video."""
    from lvef_jax.data import preparation  # TensorFlow: only where a prepared split is read

    if callable(predict_fns):
      predict_fns = [predict_fns]
    listing = preparation.split_listing(builder, self.split)
    sums = _Sums(len(listing["ef"]))
    for number, (host, device) in enumerate(self.batches(builder, data_cfg, mesh)):
      sums.score(predict_fns, device["video"], host["video_index"], host["mask"], number, self)
    return _finish(listing, sums.gathered())


def run_members(
  evaluator: Evaluator, predict_fn: PredictFn, members: int, builder, data_cfg, mesh
) -> list[VideoPredictions]:
  """Each member's predictions of every video of ``evaluator``'s split, from one function that
  predicts a batch for every member at once (``[members, B]``: a several-member run's vmapped
  predict step, `lvef_jax.training.steps.make_predict_step`), so each clip is read and sent
  to the devices once. Monte-Carlo dropout is not sampled here."""
  from lvef_jax.data import preparation  # TensorFlow: only where a prepared split is read

  listing = preparation.split_listing(builder, evaluator.split)
  sums = [_Sums(len(listing["ef"])) for _ in range(members)]
  for host, device in evaluator.batches(builder, data_cfg, mesh):
    values = local_rows(predict_fn(device["video"]), axis=1)
    for member_sums, member_values in zip(sums, values):
      member_sums.add(host["video_index"], host["mask"], member_values, clips=True)
  return [_finish(listing, member_sums.gathered()) for member_sums in sums]


def _finish(listing: dict, sums: _Sums) -> VideoPredictions:
  missing = np.flatnonzero(sums.values == 0)
  if len(missing):
    raise RuntimeError(f"{len(missing)} videos got no prediction, e.g. index {missing[0]}")
  mean = sums.total / sums.values
  variance = np.maximum(sums.squares / sums.values - mean**2, 0.0)
  return VideoPredictions(
    file_name=listing["file_name"],
    ef=listing["ef"],
    ef_pred=mean,
    ef_pred_std=np.sqrt(variance),
    n_clips=sums.clips,
  )


def predict_clips(
  predict_fns: Sequence[PredictFn],
  clips_of_videos: Iterable[np.ndarray],
  mesh,
  *,
  batch_size: int,
  mc_samples: int = 0,
  seed: int = 0,
) -> list[tuple[float, float, int]]:
  """``(mean, std, n_clips)`` per video for clips already cut on the host (``--mode=predict``).

  Args:
    predict_fns: one function or an ensemble.
    clips_of_videos: per video, uint8 clips ``[n_clips, T, S, S, 1]``.
    mesh: the device mesh.
    batch_size: clips per compiled call (global, padded).
  """
  options = Evaluator("", batch_size=batch_size, mc_samples=mc_samples, seed=seed)
  results = []
  for clips in clips_of_videos:
    sums = _Sums(1)
    for number, start in enumerate(range(0, len(clips), batch_size)):
      chunk = clips[start : start + batch_size]
      mask = np.zeros(batch_size, np.float32)
      mask[: len(chunk)] = 1.0
      padded = np.zeros((batch_size, *clips.shape[1:]), clips.dtype)
      padded[: len(chunk)] = chunk
      video = sharding.shard_batch({"video": padded}, mesh)["video"]
      sums.score(predict_fns, video, np.zeros(batch_size, np.int64), mask, number, options)
    mean = sums.total[0] / sums.values[0]
    std = math.sqrt(max(sums.squares[0] / sums.values[0] - mean**2, 0.0))
    results.append((float(mean), std, int(sums.clips[0])))
  return results
