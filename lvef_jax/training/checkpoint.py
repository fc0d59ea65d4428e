"""Orbax checkpoints of a run: the latest epoch (to resume) and the best by validation RMSE."""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

from lvef_jax.errors import MissingCheckpointError
from lvef_jax.training.state import TrainState

KINDS = ("latest", "best")


class Checkpoints:
  """Two one-slot Orbax ``CheckpointManager``s under ``directory/{latest,best}``.

  Each checkpoint holds the :class:`TrainState` and a JSON ``meta`` dict (epoch, early-stopping
  progress), saved under the epoch number. Saves are asynchronous; Orbax commits a checkpoint
  atomically, so an interrupted save never replaces the previous one.
  """

  def __init__(self, directory: pathlib.Path):
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self._managers = {
      kind: ocp.CheckpointManager(pathlib.Path(directory).absolute() / kind, options=options)
      for kind in KINDS
    }

  def epoch(self, kind: str) -> int | None:
    """The epoch stored as ``kind``, or None."""
    return self._managers[kind].latest_step()

  def save(self, kind: str, epoch: int, state: TrainState, meta: dict) -> None:
    self._managers[kind].save(
      epoch,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )

  def restore(self, kind: str, template: TrainState) -> tuple[TrainState, dict]:
    """Restores ``kind`` into arrays shaped and sharded like ``template``."""
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

  def wait(self) -> None:
    for manager in self._managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()
