"""What a run learns (``config.task``), and the few pieces of training that depend on it.

- ``ef``: EF from clips, the paper's task and every EF family's: batches of clips and their EF
  (`pipeline.train_batches`, or cut on the devices), the mean squared error; the validation
  RMSE chooses the best epoch.
- ``segmentation``: the LV in the traced end-diastolic and end-systolic frames
  (``configs/segmentation.py``): batches of frames and the masks drawn from their tracings
  (`pipeline.frame_batches`), binary cross-entropy on the logits summed over each frame's
  pixels and averaged over the batch (EchoNet-Dynamic's loss, up to its batch's scale); the
  validation loss chooses the best epoch, and Dice is reported (`evaluation.segmentation`).

A task gives the train step its loss, the trainer its batches, an epoch's validation record
and the final scores of a split. Epochs, checkpoints, resuming, members, early stopping and
the files of a run are the trainer's, the same for every task.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from lvef_jax.errors import ConfigError
from lvef_jax import models

TASKS = ("ef", "segmentation")


@dataclasses.dataclass(frozen=True)
class Task:
  """One of ``TASKS``.

  Attributes:
    name: the task's ``config.task``.
    input_key: the batch key the model reads (``video`` clips or ``image`` frames).
    target_key: the batch key of the labels (``ef`` or ``mask``).
    selection: the validation record's key whose lowest value marks the best epoch.
    selection_label: that key for log lines.
    families: the model families that learn this task.
  """

  name: str
  input_key: str
  target_key: str
  selection: str
  selection_label: str
  families: tuple[str, ...]

  @property
  def device_keys(self) -> tuple[str, str]:
    return (self.input_key, self.target_key)

  def loss(self, outputs, batch) -> tuple:
    """``(objective, reported)`` of a train batch: the value differentiated, and the one logged
    as the train loss (the EF task's MSE; the segmentation task's BCE per pixel)."""
    if self.name == "ef":
      mse = jnp.mean(jnp.square(outputs - batch["ef"]))
      return mse, mse
    from lvef_jax.evaluation import segmentation

    per_frame = segmentation.pixel_loss(outputs, batch["mask"])
    objective = jnp.mean(per_frame)
    return objective, objective / (outputs.shape[-1] * outputs.shape[-2])

  def train_batches(self) -> Callable:
    """The tf.data stream of one epoch's train batches (``make(builder, data_cfg, *,
    batch_size, seed, shard_index, num_shards)``)."""
    from lvef_jax.data import pipeline  # TensorFlow: only where batches are read

    if self.name == "ef":
      return pipeline.train_batches

    def frames(builder, data_cfg, **kwargs):
      return pipeline.frame_batches(builder, "train", data_cfg, train=True, **kwargs)

    return frames


EF = Task(
  name="ef",
  input_key="video",
  target_key="ef",
  selection="val_rmse",
  selection_label="val RMSE",
  families=models.EF_FAMILIES,
)
SEGMENTATION = Task(
  name="segmentation",
  input_key="image",
  target_key="mask",
  selection="val_loss",
  selection_label="val loss",
  families=models.SEGMENTATION_FAMILIES,
)


def task_of(config) -> Task:
  """The task of ``config`` (``config.task``), checked against its model family."""
  name = config.get("task", "ef")
  if name not in TASKS:
    raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
  task = EF if name == "ef" else SEGMENTATION
  family = config.model.name
  if family and family not in task.families:
    raise ConfigError(
      f"model {family!r} does not learn task {name!r}: its models are "
      f"{', '.join(task.families)} (configs/segmentation.py for the LV masks)"
    )
  return task
