"""The training driver: epochs of jitted sharded steps, validation, early stopping, checkpoints.

``train_and_evaluate`` is what ``launch.py --mode=train`` runs. Rerunning it in the same workdir
resumes from the latest checkpoint (epoch granularity: a partly done epoch is redone).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import shutil
import threading
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lvef_jax.data import device_data, normalization, pipeline, preparation
from lvef_jax.errors import ConfigError, NonFiniteLossError
from lvef_jax.evaluation import evaluator, metrics, segmentation
from lvef_jax.reporting import plots, results as run_files, tensorboard
from lvef_jax import checkpoints, config_base, sharding
from lvef_jax.training import members as members_lib, state as state_lib, steps, tasks

METRICS_FILE = "metrics.jsonl"
MEMBERS_DIR = "members"  # a several-member run's files of each member: members/<i>/


@dataclasses.dataclass
class EarlyStopping:
  """Bookkeeping of the validation value that chooses the best epoch (`tasks.Task.selection`:
  the EF task's RMSE, the segmentation task's loss; the field keeps its first name, which the
  checkpoints' meta holds); saved in each checkpoint's meta so a resumed run continues it."""

  best_val_rmse: float = math.inf
  best_epoch: int = 0
  epochs_without_improvement: int = 0

  def update(self, epoch: int, val_rmse: float) -> bool:
    """Records one epoch; returns True if it is the best so far."""
    if val_rmse < self.best_val_rmse:
      self.best_val_rmse, self.best_epoch, self.epochs_without_improvement = val_rmse, epoch, 0
      return True
    self.epochs_without_improvement += 1
    return False

  def should_stop(self, patience: int) -> bool:
    return patience > 0 and self.epochs_without_improvement >= patience


@dataclasses.dataclass
class TrainingRun:
  """One training run (its config and workdir; not a benchmark row, which is
  `lvef_jax.experiments.Experiment`): what both training and checkpoint evaluation need: data,
  mesh, model structure, steps."""

  config: object
  workdir: pathlib.Path
  builder: object
  mesh: jax.sharding.Mesh
  graphdef: object
  state: state_lib.TrainState
  steps_per_epoch: int
  local_batch_size: int  # this process's share of train.batch_size
  train_step: object
  predict_step: object
  batch_stats_step: object
  checkpoints: checkpoints.Checkpoints
  # The members trained in this program (`lvef_jax.training.members`); one for a solo run,
  # whose state then has no member axis.
  members: list = dataclasses.field(default_factory=list)
  stopping: list = dataclasses.field(default_factory=list)  # an EarlyStopping a member
  # Train steps in a row skipped for a non-finite loss or gradient, one count a member.
  bad_streak: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))
  # data.device_resident: the train split on the devices, and the jitted clip sampler.
  device_videos: device_data.DeviceVideos | None = None
  clip_sampler: object = None
  task: tasks.Task = tasks.EF  # what the run learns (config.task)

  @property
  def several(self) -> bool:
    """Several members: every state array has a leading member axis."""
    return len(self.members) > 1

  def predict_fn(self):
    """The current weights as an evaluator's prediction function."""
    return lambda inputs: self.predict_step(self.state, {self.task.input_key: inputs})

  def validate(self) -> list[dict]:
    """The validation record of the current weights, one a member: ``val_loss`` and the
    task's scores (EF: ``val_rmse``, ``val_mae``, ``val_r2``; segmentation: ``val_dice``,
    ``val_dice_ed``, ``val_dice_es``)."""
    if self.task.name == "ef":
      vals = [metrics.regression_metrics(p.ef, p.ef_pred) for p in self.score("val")]
      return [
        {"val_loss": v["mse"], "val_rmse": v["rmse"], "val_mae": v["mae"], "val_r2": v["r2"]}
        for v in vals
      ]
    records = []
    for frames in self.score_frames("val"):
      summary = frames.summary()
      records.append({"val_loss": summary["loss"]})
      records[-1].update({f"val_{k}": summary[k] for k in ("dice", "dice_ed", "dice_es")})
    return records

  def score_frames(self, split: str) -> list:
    """Every traced frame of ``split`` segmented with the current weights: one
    `segmentation.FrameScores` a member."""
    return segmentation.score_frames(
      self.predict_fn(),
      self.builder,
      split,
      self.config.data,
      self.mesh,
      batch_size=self.config.eval.batch_size,
      members=len(self.members),
    )

  def score(self, split: str, clips: str = "one") -> list:
    """Every video of ``split`` with the current weights: one clip (from frame 0), or all
    clips (``eval.clip_stride`` apart) averaged per video. One `VideoPredictions` a member."""
    split_evaluator = evaluator.Evaluator(
      split,
      clips=clips,
      stride=self.config.eval.clip_stride,
      batch_size=self.config.eval.batch_size,
    )
    if not self.several:
      return [split_evaluator.run(self.predict_fn(), self.builder, self.config.data, self.mesh)]
    return evaluator.run_members(
      split_evaluator,
      self.predict_fn(),
      len(self.members),
      self.builder,
      self.config.data,
      self.mesh,
    )


def build_training_run(config, workdir: str | pathlib.Path) -> TrainingRun:
  """Prepares the data and builds a fresh, replicated train state for ``config``."""
  workdir = pathlib.Path(workdir)
  task = tasks.task_of(config)
  members = members_lib.members(config)
  mesh = sharding.make_mesh(members=len(members))
  local_batch_size = sharding.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  builder = preparation.prepare(config.data)
  if task.name == "ef":
    num_train, what = preparation.num_examples(builder, "train"), "videos"
  else:
    num_train, what = pipeline.num_frame_examples(builder, "train"), "traced frames"
  steps_per_epoch = config.train.steps_per_epoch
  if steps_per_epoch <= 0:
    steps_per_epoch = num_train // config.train.batch_size
    if steps_per_epoch == 0:
      raise ConfigError(
        f"the train split has {num_train} {what}, fewer than one batch of "
        f"train.batch_size={config.train.batch_size}"
      )
  graphdef, state, tx = state_lib.create(config, steps_per_epoch)
  state = jax.device_put(state, sharding.state_sharding(mesh, len(members)))
  device_videos, clip_sampler = None, None
  if task.name == "ef":  # the frames of segmentation come from tf.data
    device_videos, clip_sampler = _device_videos(config.data, builder, mesh, len(members))
  return TrainingRun(
    config=config,
    workdir=workdir,
    builder=builder,
    mesh=mesh,
    graphdef=graphdef,
    state=state,
    steps_per_epoch=steps_per_epoch,
    local_batch_size=local_batch_size,
    train_step=steps.make_train_step(
      graphdef, tx, mesh, len(members), member_map=config.compute.members, task=task
    ),
    predict_step=steps.make_predict_step(graphdef, mesh, len(members), task.input_key),
    batch_stats_step=steps.make_batch_stats_step(
      graphdef, mesh, len(members), member_map=config.compute.members, input_key=task.input_key
    ),
    checkpoints=checkpoints.Checkpoints(workdir / "checkpoints", writer=True),
    members=members,
    bad_streak=np.zeros(len(members), np.int64),
    device_videos=device_videos,
    clip_sampler=clip_sampler,
    task=task,
  )


def _device_videos(data_cfg, builder, mesh, members: int = 1):
  """The train split on the devices and its clip sampler, if ``data.device_resident`` says so;
  else ``(None, None)``."""
  frames = int(preparation.split_listing(builder, "train")["num_frames"].sum())
  on, why = device_data.use_device_videos(data_cfg.device_resident, frames * data_cfg.image_size**2)
  if not on:
    logging.info("training clips from tf.data (%s)", why)
    return None, None
  start = time.perf_counter()
  videos = device_data.DeviceVideos.put(pipeline.train_videos(builder, data_cfg), mesh)
  logging.info(
    "training clips cut on the devices from the train split held there (%s; loaded in %.1f s)",
    why,
    time.perf_counter() - start,
  )
  sampler = device_data.make_clip_sampler(
    mesh,
    clip_frames=data_cfg.clip_frames,
    period=data_cfg.period,
    pad=data_cfg.augment_pad,
    members=members,
  )
  return videos, sampler


def _device_batches(run: TrainingRun, epoch: int, num_batches: int, salt: int = 0) -> Iterator:
  """``num_batches`` train batches for ``epoch`` on the devices, each ``(host, device)`` as
  from `sharding.device_prefetch` (``host`` is None on the device-resident path). Several
  members: each member's batch of its own stream, stacked (``[members, B, ...]``)."""
  make = run.task.train_batches() if run.device_videos is None else pipeline.train_plans
  streams = [_train_stream(run, epoch, num_batches, salt, make, m.seed) for m in run.members]
  stream = streams[0] if not run.several else _stacked(streams)
  if run.device_videos is None:
    return sharding.device_prefetch(
      stream,
      run.mesh,
      keys=run.task.device_keys,
      size=run.config.data.prefetch,
      members=len(run.members),
    )
  return ((None, run.clip_sampler(run.device_videos, plan)) for plan in stream)


def _stacked(streams: list[Iterator[dict]]) -> Iterator[dict]:
  """One batch of each stream a step, stacked key by key on a leading member axis."""
  for batches in zip(*streams):
    yield {key: np.stack([batch[key] for batch in batches]) for key in batches[0]}


def _train_stream(
  run: TrainingRun,
  epoch: int,
  num_batches: int,
  salt: int = 0,
  make=pipeline.train_batches,
  seed: int | None = None,
) -> Iterator[dict]:
  """``num_batches`` train batches for ``epoch``, passing over the split as often as needed.

  ``salt`` gives another, equally reproducible, draw of the same epoch (BatchNorm
  recalibration uses 1). ``make`` is `pipeline.train_batches` (clips) or
  `pipeline.train_plans` (where to cut them, for the device-resident path). ``seed``: the
  member's (default ``config.seed``); a member's stream is its solo run's.
  """
  config = run.config
  base_seed = config.seed if seed is None else seed

  def passes():
    for repeat in itertools.count():
      # A distinct, reproducible shuffle and clip sampling for every epoch (and repeat).
      seed = ((base_seed * 100_003 + epoch) * 1_009 + repeat) * 7 + salt
      yield from make(
        run.builder,
        config.data,
        batch_size=run.local_batch_size,
        seed=seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
      )

  def counted():
    stream = passes()
    yield from itertools.islice(stream, num_batches)
    # Releasing a tf.data iterator can block for seconds (the demo's epochs stalled 4.5 s at
    # their end); do it off the training thread. Not a daemon thread: at exit Python waits for
    # it, instead of finalising the interpreter while it may still be inside TensorFlow.
    threading.Thread(target=stream.close, name="release-train-stream").start()

  return counted()


def _read_history(path: pathlib.Path, up_to_epoch: int) -> list[dict]:
  """Epoch records of ``metrics.jsonl`` up to ``up_to_epoch`` (later ones belong to lost work)."""
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if r["epoch"] <= up_to_epoch]


def _write_history(path: pathlib.Path, records: list[dict]) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
  tmp.replace(path)


def _format_seconds(seconds: float) -> str:
  """``H:MM:SS``; an estimate below zero (clock jitter, a bad guess) reads as ``0:00:00``."""
  seconds = max(0, int(seconds))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _etas(
  *,
  step: int,
  steps_per_epoch: int,
  epoch: int,
  first_epoch: int,
  total_epochs: int,
  epoch_elapsed: float,
  run_elapsed: float,
) -> tuple[float, float]:
  """Seconds left in the current epoch's training and in the whole run (before early stopping).

  Args:
    step: Train steps done in this epoch (1-based).
    steps_per_epoch: Train steps per epoch.
    epoch: The current epoch (1-based).
    first_epoch: The epoch this run resumed from (0 for a fresh run); this run trains epochs
      ``first_epoch + 1`` to ``total_epochs``.
    total_epochs: The last epoch.
    epoch_elapsed: Seconds since this epoch started.
    run_elapsed: Seconds since this run started, so only epochs trained by this process count.

  Returns:
    ``(epoch_seconds, run_seconds)``, never negative. Later epochs count whole (validation
    included, once this run has timed one), the validation after this epoch not at all, so in
    the last epoch both are the same.
  """
  epoch_seconds = epoch_elapsed / step * (steps_per_epoch - step)
  finished = epoch - first_epoch - 1  # whole epochs this run trained before the current one
  if finished > 0:
    # Whole epochs include validation, BN recalibration and checkpointing, not just steps.
    per_epoch = (run_elapsed - epoch_elapsed) / finished
  else:
    per_epoch = epoch_elapsed / step * steps_per_epoch
  return epoch_seconds, epoch_seconds + (total_epochs - epoch) * per_epoch


def _train_epoch(
  run: TrainingRun, epoch: int, total_epochs: int, first_epoch: int, run_start: float
) -> tuple[np.ndarray, float, np.ndarray]:
  """Runs one epoch of train steps; returns the mean finite train loss and the skipped steps
  of each member (arrays, one value a member) and the clips/s of all members together."""
  config = run.config
  log_every = max(1, config.train.log_every_steps)
  losses, logged, start = [], 0, time.perf_counter()
  batches = _device_batches(run, epoch, run.steps_per_epoch)
  skipped_flags, skipped = [], np.zeros(len(run.members), np.int64)
  clips_per_step = config.train.batch_size * len(run.members)
  for index, (_, batch) in enumerate(batches, start=1):
    run.state, step_metrics = run.train_step(run.state, batch)
    losses.append(step_metrics["loss"])
    skipped_flags.append(step_metrics["skipped"])
    if index % log_every == 0 or index == run.steps_per_epoch:
      # Fetching the losses is the only host sync; it happens at log steps only.
      recent = _per_member(jax.device_get(losses[logged:]))
      flags = _per_member(jax.device_get(skipped_flags[logged:]))
      logged = len(losses)
      skipped += flags.sum(0)
      _check_bad_steps(run, flags, epoch, index)
      now = time.perf_counter()
      elapsed = now - start
      epoch_eta, run_eta = _etas(
        step=index,
        steps_per_epoch=run.steps_per_epoch,
        epoch=epoch,
        first_epoch=first_epoch,
        total_epochs=total_epochs,
        epoch_elapsed=elapsed,
        run_elapsed=now - run_start,
      )
      logging.info(
        "epoch %d/%d step %d/%d loss %.2f grad_norm %.2f%s | %.1f clips/s | "
        "epoch ETA %s | run ETA %s (before early stopping)",
        epoch,
        total_epochs,
        index,
        run.steps_per_epoch,
        float(np.mean(recent[np.isfinite(recent)])) if np.isfinite(recent).any() else math.nan,
        float(np.mean(jax.device_get(step_metrics["grad_norm"]))),
        f" | {int(skipped.sum())} non-finite steps skipped this epoch" if skipped.any() else "",
        index * clips_per_step / elapsed,
        _format_seconds(epoch_eta),
        _format_seconds(run_eta),
      )
  seconds = time.perf_counter() - start
  all_losses = _per_member(jax.device_get(losses))
  mean_losses = np.array(
    [
      column[np.isfinite(column)].mean() if np.isfinite(column).any() else math.nan
      for column in all_losses.T
    ]
  )
  return mean_losses, run.steps_per_epoch * clips_per_step / seconds, skipped


def _per_member(values: list) -> np.ndarray:
  """Step values (scalars, or one a member) as ``[steps, members]``."""
  values = np.asarray(values)
  return values.reshape(len(values), -1)


def _check_bad_steps(run: TrainingRun, skipped: np.ndarray, epoch: int, index: int) -> None:
  """Counts each member's non-finite steps in a row (across log windows and epochs); too many
  in a member still training stop the run. ``skipped``: ``[steps, members]`` flags."""
  for flags in skipped:
    run.bad_streak = np.where(flags > 0, run.bad_streak + 1, 0)
  limit = run.config.train.max_bad_steps
  patience = run.config.train.early_stopping_patience
  active = np.array([not stop.should_stop(patience) for stop in run.stopping] or [True])
  streak = int(np.max(np.where(active, run.bad_streak, 0)))
  if streak >= limit > 0:
    kept = run.checkpoints.epoch("latest")
    which = ""
    if run.several:
      bad = np.flatnonzero(active & (run.bad_streak >= limit))
      which = f" of member {', '.join(str(i) for i in bad)}"
    raise NonFiniteLossError(
      f"{streak} train steps in a row{which} had a non-finite loss or gradient (up to epoch "
      f"{epoch} step {index}; train.max_bad_steps={limit}); the run stopped, and its last good "
      + (f"checkpoint (epoch {kept}) is kept" if kept else "state was never checkpointed")
      + "; lower train.learning_rate or set train.grad_clip_norm"
    )


def _recalibrate_batch_norm(run: TrainingRun, epoch: int) -> None:
  """Sets the BatchNorm averages to the mean statistics of fresh train batches (precise BN)."""
  num_batches = run.config.train.bn_recalibration_batches
  if num_batches <= 0 or not jax.tree.leaves(run.state.batch_stats):
    return  # disabled, or a model without BatchNorm
  total, count = None, 0
  for _, batch in _device_batches(run, epoch, num_batches, salt=1):
    # One at a time: these calls do not depend on each other, so without waiting several would
    # be in flight at once, and on XLA's CPU client (8 fake devices in the tests) devices then
    # entered different calls' all-reduces first and waited for each other until XLA aborted.
    stats = jax.block_until_ready(run.batch_stats_step(run.state, batch))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  run.state = run.state.replace(batch_stats=jax.tree.map(lambda x: x / count, total))


# Keys that may change between a run and its resumption: where the data and caches live, how
# long to train, how much to log and how to evaluate. Any other difference is another run.
RESUMABLE_KEYS = (
  "data.root",
  "data.cache_dir",
  "data.tfds_dir",
  "data.num_parallel_calls",
  "data.prefetch",
  "data.cache_in_memory",
  "train.num_epochs",
  "train.early_stopping_patience",
  "train.log_every_steps",
  "eval.",
  "experiment.",
  "compute.",
)
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "plots", "eval", MEMBERS_DIR)


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def config_differences(old: dict, new: dict) -> list[str]:
  """The keys (``section.key``) whose values differ, beyond ``RESUMABLE_KEYS``."""
  old, new = _flat(old), _flat(new)
  return sorted(
    key
    for key in old.keys() | new.keys()
    if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_KEYS)
  )


def check_workdir(config, workdir: pathlib.Path, overwrite: bool) -> None:
  """Refuses to mix two runs in one workdir; ``overwrite`` removes the old run instead."""
  path = workdir / config_base.RUN_CONFIG_FILE
  if not path.is_file():
    return
  old = config_base.with_new_defaults(json.loads(path.read_text()))
  differences = config_differences(old, json.loads(config.to_json_best_effort()))
  if not differences:
    return
  if not overwrite:
    shown = ", ".join(
      f"{k} ({_flat(old).get(k)!r} there, {_flat(config.to_dict()).get(k)!r} now)"
      for k in differences[:8]
    )
    more = f" and {len(differences) - 8} more" if len(differences) > 8 else ""
    raise ConfigError(
      f"{workdir} holds a run of another config: {shown}{more}. Use another --workdir, or "
      "--overwrite to delete that run and start again"
    )
  logging.warning(
    "--overwrite: deleting the run in %s (%s differ)", workdir, ", ".join(differences)
  )
  for name in RUN_FILES:
    target = workdir / name
    if target.is_dir():
      shutil.rmtree(target)
    elif target.exists():
      target.unlink()


def input_statistics(config, workdir: pathlib.Path) -> None:
  """Fills ``model.input_mean`` / ``input_std`` where the family takes them and they are not
  given: the run's own values when ``workdir`` already holds it (a resumed or imported run),
  else computed on the train split (`normalization.resolve`)."""
  if not normalization.needs_statistics(config.model):
    return
  path = workdir / config_base.RUN_CONFIG_FILE
  recorded = json.loads(path.read_text()).get("model", {}) if path.is_file() else {}
  with config.unlocked():
    for key in ("input_mean", "input_std"):
      if config.model[key] is None and recorded.get(key) is not None:
        value = recorded[key]
        config.model[key] = tuple(value) if isinstance(value, list) else value
  if normalization.needs_statistics(config.model):
    normalization.resolve(config, preparation.prepare(config.data))


def train_and_evaluate(config, workdir: str | pathlib.Path, *, overwrite: bool = False) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if possible), then evaluates the best checkpoint.

  A workdir that holds a run of another config is refused (see ``check_workdir``). A run of
  several members (``train.seeds``, ``train.grid``) trains them in one program, each with its
  own early stopping and best weights; it ends when every member has stopped or the epochs
  are done.

  Returns:
    The ``results.json`` contents.
  """
  is_main = jax.process_index() == 0
  input_statistics(config, pathlib.Path(workdir))
  if is_main:
    check_workdir(config, pathlib.Path(workdir), overwrite)
  run = build_training_run(config, workdir)
  if is_main:
    run.workdir.mkdir(parents=True, exist_ok=True)
    (run.workdir / config_base.RUN_CONFIG_FILE).write_text(config_base.run_config_json(config))
    skipped = preparation.skipped_videos_csv(run.builder)
    if skipped:
      (run.workdir / preparation.SKIPPED_FILE).write_text(skipped)
  first_epoch, best_state = _resume(run)
  patience = config.train.early_stopping_patience
  history_path = run.workdir / METRICS_FILE
  history = _read_history(history_path, first_epoch)
  writer = tensorboard.SummaryWriter(run.workdir, enabled=is_main)
  schedules = [
    state_lib.learning_rate_schedule(
      config.train, run.steps_per_epoch, m.hparams.get("learning_rate")
    )
    for m in run.members
  ]
  total_epochs, run_start = config.train.num_epochs, time.perf_counter()
  logging.info(
    "training %s: %d epochs x %d steps of %d clips on %d devices%s",
    config.model.name,
    total_epochs,
    run.steps_per_epoch,
    config.train.batch_size,
    run.mesh.devices.size,
    f", {len(run.members)} members in one program" if run.several else "",
  )

  for epoch in range(first_epoch + 1, total_epochs + 1):
    active = [not stop.should_stop(patience) for stop in run.stopping]
    if not any(active):
      for index, stop in enumerate(run.stopping):
        logging.info(
          "early stopping%s: no better %s for %d epochs (best %.4g at epoch %d)",
          f" of member {index}" if run.several else "",
          run.task.selection_label,
          stop.epochs_without_improvement,
          stop.best_val_rmse,
          stop.best_epoch,
        )
      break
    epoch_start = time.perf_counter()
    train_losses, clips_per_s, skipped = _train_epoch(
      run, epoch, total_epochs, first_epoch, run_start
    )
    _recalibrate_batch_norm(run, epoch)
    vals = run.validate()
    step = int(np.max(jax.device_get(run.state.step)))
    records = [
      {
        "train_loss": float(train_losses[i]),
        **val,
        "lr": float(schedules[i](step)),
        "skipped_steps": int(skipped[i]),
      }
      for i, val in enumerate(vals)
    ]
    # A member that has stopped trains on in the program, unrecorded: it keeps its best weights.
    improved = [
      on and stop.update(epoch, val[run.task.selection])
      for on, stop, val in zip(active, run.stopping, vals)
    ]
    seconds = time.perf_counter() - epoch_start
    if run.several:
      for record, on in zip(records, active):
        record["stopped"] = not on
      mean = {key: float(np.mean([r[key] for r in records])) for key in records[0]}
      del mean["stopped"]
      mean["skipped_steps"] = int(sum(r["skipped_steps"] for r in records))
      record = {"epoch": epoch, "step": step, **mean, "clips_per_s": clips_per_s}
      record.update(seconds=seconds, members=records)
    else:
      record = {"epoch": epoch, "step": step, **records[0], "clips_per_s": clips_per_s}
      record["seconds"] = seconds
    meta = _meta(run, epoch)
    # History first, checkpoint second: a crash in between leaves a record that resuming drops.
    history.append(record)
    if is_main:
      _write_history(history_path, history)
    writer.scalars(step, {k: v for k, v in record.items() if k not in ("epoch", "step", "members")})
    run.checkpoints.save("latest", epoch, run.state, meta)
    if any(improved):
      best_state = _with_members(improved, run.state, best_state)
      run.checkpoints.save("best", epoch, best_state, meta)
    for index, (member_record, better) in enumerate(zip(records, improved)):
      if run.several and not active[index]:
        continue
      shown = " ".join(
        f"{key} {value:.4g}" if key == "val_loss" else f"{key} {value:.3f}"
        for key, value in member_record.items()
        if key.startswith("val_")
      )
      logging.info(
        "epoch %d%s: train_loss %.4g %s%s (%.0f s)",
        epoch,
        f" member {index}" if run.several else "",
        member_record["train_loss"],
        shown,
        " *best*" if better else "",
        seconds,
      )
  _log_compilations(run.train_step)
  run.checkpoints.wait()
  writer.close()
  return evaluate_best(run, history)


def _meta(run: TrainingRun, epoch: int) -> dict:
  """A checkpoint's meta: the epoch and the early-stopping progress (several members: one a
  member, and each member's best epoch)."""
  progress = [dataclasses.asdict(stop) for stop in run.stopping]
  if not run.several:
    return {"epoch": epoch, "early_stopping": progress[0]}
  return {
    "epoch": epoch,
    "early_stopping": progress,
    "best_epochs": [stop.best_epoch for stop in run.stopping],
  }


def _with_members(chosen: list[bool], new, old):
  """``new``'s arrays for the chosen members, ``old``'s for the rest (one member: ``new``)."""
  if len(chosen) == 1:
    return new if chosen[0] else old
  mask = jnp.asarray(chosen)

  def pick(n, o):
    return jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def _resume(run: TrainingRun):
  """Restores the latest checkpoint, if any, into ``run`` (state, early stopping); returns
  the epoch it holds (0 for a fresh run) and the best weights so far (several members: each
  member's own; a solo run saves its state as the best, so needs none kept)."""
  count = len(run.members)
  run.stopping = [EarlyStopping() for _ in range(count)]
  best_state = jax.tree.map(jnp.copy, run.state) if run.several else None
  if run.checkpoints.epoch("latest") is None:
    return 0, best_state
  run.state, meta = run.checkpoints.restore("latest", run.state)
  first_epoch = meta["epoch"]
  progress = meta["early_stopping"]
  progress = [progress] if isinstance(progress, dict) else progress
  run.stopping = [EarlyStopping(**p) for p in progress]
  for index, stop in enumerate(run.stopping):
    logging.info(
      "resuming %s%s from epoch %d (best %s %.4g at epoch %d)",
      run.workdir,
      f" member {index}" if run.several else "",
      first_epoch,
      run.task.selection_label,
      stop.best_val_rmse,
      stop.best_epoch,
    )
  best_epoch = run.checkpoints.epoch("best")
  if run.several and best_epoch is not None:
    best_state, _ = run.checkpoints.restore("best", run.state)
  lost = [stop.best_epoch == first_epoch for stop in run.stopping]
  if any(lost) and best_epoch != first_epoch:
    # Killed while saving the best checkpoint: for the members whose best epoch is the
    # latest, the latest checkpoint holds their best weights.
    logging.warning(
      "the best checkpoint (epoch %d) was not saved before the run stopped: saving it again "
      "from the latest checkpoint, which is the same epoch",
      first_epoch,
    )
    best_state = _with_members(lost, run.state, best_state)
    run.checkpoints.save("best", first_epoch, best_state, _meta(run, first_epoch))
  return first_epoch, best_state


def _log_compilations(train_step) -> int:
  """Says how often this process compiled the train step: once, unless a batch of another
  shape, dtype or sharding (or a state placed differently) reached it; each recompilation
  costs as much time as the first step. Returns the count."""
  count = train_step._cache_size()  # jax.jit's count of compiled versions
  if count > 1:
    logging.warning(
      "the train step was compiled %d times in this process (expected once): a batch or "
      "state of another shape, dtype or placement reached it",
      count,
    )
  elif count == 1:
    logging.info("the train step was compiled once in this process")
  return count


def evaluate_best(run: TrainingRun, history: list[dict]) -> dict:
  """Restores the best checkpoint (the latest if none is marked best) and scores every split.

  Writes ``results.json``, ``predictions_{split}.csv`` and ``plots/`` into the workdir, with
  ``eval.clips`` clips per video: ``one`` (from frame 0, the paper's protocol; the default) or
  ``all``. Validation during training always uses one clip. ``launch.py --mode=eval`` goes
  further (confidence intervals, ROC, prediction intervals).

  Several members: each member's own best weights; ``results.json``'s ``splits`` hold each
  metric's mean over the members and its standard deviation (``rmse_sd``, ...), ``members``
  each member's scores, seed and grid values, ``ensemble`` the scores of the members'
  averaged prediction; the top-level predictions and plots are the ensemble's, each member's
  are under ``members/<i>/``.
  """
  kind = "best" if run.checkpoints.epoch("best") is not None else "latest"
  run.state, meta = run.checkpoints.restore(kind, run.state)
  logging.info(
    "evaluating the %s checkpoint (epoch %d) on %s",
    kind,
    meta["epoch"],
    ", ".join(run.config.eval.splits),
  )
  is_main = jax.process_index() == 0
  if run.task.name == "segmentation":
    results = _evaluate_frames(run, meta)
  elif not run.several:
    results = {"best_epoch": meta["epoch"], "eval_clips": run.config.eval.clips, "splits": {}}
    for split in run.config.eval.splits:
      (predictions,) = run.score(split, run.config.eval.clips)
      results["splits"][split] = _scores(predictions, run.workdir if is_main else None, split)
  else:
    results = _evaluate_members(run, meta.get("best_epochs", [meta["epoch"]] * len(run.members)))
  if is_main:
    if history:
      plots.history(history, run.workdir / "plots" / "history.png")
    run_files.write_results(run.workdir, results)
    print(run_files.format_table(results))
  return results


def _scores(predictions, workdir: pathlib.Path | None, split: str) -> dict:
  """The results.json scores of one split's predictions; their files go to ``workdir``."""
  scores = metrics.regression_metrics(predictions.ef, predictions.ef_pred)
  if workdir is not None:
    run_files.write_split(
      workdir, split, predictions.file_name, predictions.ef, predictions.ef_pred, scores
    )
  return {key: scores[key] for key in run_files.RESULT_KEYS}


def _evaluate_members(run: TrainingRun, best_epochs: list[int]) -> dict:
  """Every member's scores, their mean and spread, and the ensemble's (see `evaluate_best`)."""
  is_main = jax.process_index() == 0
  results = {
    "eval_clips": run.config.eval.clips,
    "best_epochs": best_epochs,
    "splits": {},
    "members": [
      {**member.describe(), "best_epoch": epoch, "splits": {}}
      for member, epoch in zip(run.members, best_epochs)
    ],
    "ensemble": {},
  }
  for split in run.config.eval.splits:
    predictions = run.score(split, run.config.eval.clips)
    for index, (member, member_predictions) in enumerate(zip(results["members"], predictions)):
      out = run.workdir / MEMBERS_DIR / str(index) if is_main else None
      member["splits"][split] = _scores(member_predictions, out, split)
    ensemble = dataclasses.replace(
      predictions[0], ef_pred=np.mean([p.ef_pred for p in predictions], axis=0)
    )
    results["ensemble"][split] = _scores(ensemble, run.workdir if is_main else None, split)
    results["splits"][split] = run_files.spread([m["splits"][split] for m in results["members"]])
  return results


def _evaluate_frames(run: TrainingRun, meta: dict) -> dict:
  """A segmentation run's results: Dice and loss of every split's traced frames
  (``segmentation_{split}.csv`` a split; several members: each member's, their mean and
  spread, each member's CSV under ``members/<i>/``)."""
  is_main = jax.process_index() == 0
  best_epochs = meta.get("best_epochs", [meta["epoch"]] * len(run.members))
  results = {"task": "segmentation", "splits": {}}
  if run.several:
    results.update(best_epochs=best_epochs, members=[])
    results["members"] = [
      {**member.describe(), "best_epoch": epoch, "splits": {}}
      for member, epoch in zip(run.members, best_epochs)
    ]
  else:
    results["best_epoch"] = meta["epoch"]
  for split in run.config.eval.splits:
    names = preparation.split_listing(run.builder, split)["file_name"]
    scored = run.score_frames(split)
    for index, frames in enumerate(scored):
      out = run.workdir if not run.several else run.workdir / MEMBERS_DIR / str(index)
      if is_main:
        segmentation.write_split(out, split, frames, names)
      if run.several:
        results["members"][index]["splits"][split] = frames.summary()
    if run.several:
      member_scores = [m["splits"][split] for m in results["members"]]
      results["splits"][split] = run_files.spread(member_scores, segmentation.SCORE_KEYS)
    else:
      results["splits"][split] = scored[0].summary()
  return results
