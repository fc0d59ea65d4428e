"""Orbax checkpoints of a run: the latest epoch (to resume) and the best by validation RMSE.

Shared by training (save, resume) and evaluation (restore the weights alone).
"""

from __future__ import annotations

import pathlib
import shutil

import jax
from absl import logging
import orbax.checkpoint as ocp

from lvef_jax.errors import ConfigError, MissingCheckpointError

KINDS = ("latest", "best")
# Orbax writes this file last into a checkpoint's folder: without it the save never finished.
FINISHED_MARKER = "_CHECKPOINT_METADATA"
# Beside the managers' folders: where half-written saves are moved (never read).
INCOMPLETE = "incomplete"


def _set_aside_incomplete(folder: pathlib.Path) -> None:
  """Moves away the checkpoints a killed process left half-written, with a warning.

  Orbax saves into ``<epoch>.orbax-checkpoint-tmp*`` and renames the folder when done, so
  normally a half-written save only leaves such a folder; a step folder without Orbax's
  finished marker (a filesystem without atomic renames) is just as incomplete. Either is moved
  to ``../incomplete/<kind>/<name>`` (kept for inspection, never read), and the previous
  checkpoint is used. Not kept inside ``folder``: when Orbax later removes the epoch of the
  same number it deletes a folder named ``<epoch>.*`` there instead of the epoch's own.
  """
  if not folder.is_dir():
    return
  for entry in sorted(folder.iterdir()):
    if not entry.is_dir():
      continue
    interrupted = ".orbax-checkpoint-tmp" in entry.name
    unfinished = entry.name.isdigit() and not (entry / FINISHED_MARKER).exists()
    if interrupted or unfinished:
      target = folder.parent / INCOMPLETE / folder.name / entry.name
      if target.exists():
        shutil.rmtree(target)
      target.parent.mkdir(parents=True, exist_ok=True)
      entry.rename(target)
      logging.warning(
        "%s is a half-written checkpoint (its save was interrupted): ignored, moved to %s",
        entry,
        target,
      )


class Checkpoints:
  """Two one-slot Orbax ``CheckpointManager``s under ``directory/{latest,best}``.

  Each checkpoint holds the train state (step, params, batch_stats, opt_state, rng) and a JSON
  ``meta`` dict (epoch, early-stopping progress), saved under the epoch number. Saves are
  asynchronous; Orbax commits a checkpoint atomically, so an interrupted save never replaces
  the previous one.
  """

  def __init__(self, directory: pathlib.Path, *, writer: bool = False):
    """``writer``: the training process, which sets aside checkpoints that an earlier, killed
    run left half-written (a reader never touches them: they may be a live run's saves)."""
    self.directory = pathlib.Path(directory).absolute()
    if writer and jax.process_index() == 0:
      for kind in KINDS:
        _set_aside_incomplete(self.directory / kind)
    # The two managers save the same epoch at once; with several processes their barriers
    # would share names ("async_write_complete.<epoch>") and collide without a prefix each.
    self._managers = {
      kind: ocp.CheckpointManager(
        self.directory / kind,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1,
          create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind),
        ),
      )
      for kind in KINDS
    }

  def epoch(self, kind: str) -> int | None:
    """The epoch stored as ``kind``, or None."""
    return self._managers[kind].latest_step()

  def kind_of(self, checkpoint: str | int) -> str:
    """``best``, ``latest``, or the kind that holds epoch ``checkpoint``.

    Only the best and the latest epoch are kept; another epoch is an error that says which
    epochs there are.
    """
    stored = {kind: self.epoch(kind) for kind in KINDS}
    if not any(e is not None for e in stored.values()):
      raise MissingCheckpointError(f"no checkpoint under {self.directory}: train first")
    if str(checkpoint) in KINDS:
      kind = str(checkpoint)
      if stored[kind] is None:  # a run stopped before its first best epoch: use the latest
        kind = next(k for k in KINDS if stored[k] is not None)
      return kind
    try:
      epoch = int(checkpoint)
    except ValueError:
      raise ConfigError(
        f"checkpoint {checkpoint!r}: expected best, latest or an epoch number"
      ) from None
    for kind in ("best", "latest"):
      if stored[kind] == epoch:
        return kind
    have = ", ".join(f"{kind} = epoch {e}" for kind, e in stored.items() if e is not None)
    raise MissingCheckpointError(
      f"no checkpoint of epoch {epoch} under {self.directory}: only the best and the latest "
      f"epochs are kept ({have})"
    )

  def save(self, kind: str, epoch: int, state, meta: dict) -> None:
    self._managers[kind].save(
      epoch,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )

  def restore(self, kind: str, template):
    """Restores ``kind`` (the whole train state) into arrays shaped and sharded like
    ``template``; returns ``(state, meta)``."""
    epoch = self.epoch(kind)
    if epoch is None:
      raise MissingCheckpointError(f"no {kind!r} checkpoint in {self._managers[kind].directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._managers[kind].restore(
      epoch,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return restored.state, dict(restored.meta)

  def restore_variables(self, kind: str, template: tuple) -> tuple[tuple, dict]:
    """Restores only the parameters and BatchNorm statistics of ``kind``.

    Args:
      template: ``(params, batch_stats)`` shaped and sharded as wanted.

    Returns:
      ``((params, batch_stats), meta)``; the optimizer state is never read.
    """
    epoch = self.epoch(kind)
    if epoch is None:
      raise MissingCheckpointError(f"no {kind!r} checkpoint in {self._managers[kind].directory}")
    params, batch_stats = template
    abstract = jax.tree.map(
      ocp.utils.to_shape_dtype_struct, {"params": params, "batch_stats": batch_stats}
    )
    restored = self._managers[kind].restore(
      epoch,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=abstract,
          # The template's layout, not the one saved with the checkpoint (another topology).
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True,
        ),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return (restored.state["params"], restored.state["batch_stats"]), dict(restored.meta)

  def wait(self) -> None:
    for manager in self._managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()
