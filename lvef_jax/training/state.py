"""Train state as a plain pytree of arrays, and the optimizer (paper: Adam, halving the rate)."""

from __future__ import annotations

import flax.struct
import jax
import optax
from flax import nnx

from lvef_jax import models


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes; only arrays, so it jits, donates and checkpoints as is.

  The model's structure (``graphdef``) and the optimizer stay outside, in the step's closure.
  """

  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State  # BatchNorm running averages (empty for LayerNorm models)
  opt_state: optax.OptState
  rng: jax.Array  # dropout key; each step folds in its step number


def learning_rate_schedule(train_cfg, steps_per_epoch: int) -> optax.Schedule:
  """Step-wise schedule equal to the paper's per-epoch staircase decay."""
  return optax.exponential_decay(
    init_value=train_cfg.learning_rate,
    transition_steps=max(1, train_cfg.lr_decay_epochs * steps_per_epoch),
    decay_rate=train_cfg.lr_decay_factor,
    staircase=True,
  )


def make_optimizer(train_cfg, steps_per_epoch: int, trainable=None) -> optax.GradientTransformation:
  """Adam (AdamW when weight_decay > 0), optionally after global-norm gradient clipping.

  Args:
    train_cfg: ``config.train``.
    steps_per_epoch: steps of one epoch, for the per-epoch learning-rate staircase.
    trainable: a pytree like the parameters of booleans; parameters marked False get no
      update at all (and no optimizer state): frozen backbone layers.
  """
  schedule = learning_rate_schedule(train_cfg, steps_per_epoch)
  if train_cfg.weight_decay > 0:
    tx = optax.adamw(schedule, weight_decay=train_cfg.weight_decay)
  else:
    tx = optax.adam(schedule)
  if train_cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), tx)
  if trainable is not None and not all(jax.tree.leaves(trainable)):
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


def create_train_state(
  model: nnx.Module, tx: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
  """Splits ``model`` into its graph definition and a fresh :class:`TrainState`."""
  # Pure states (plain arrays, no Variable objects): every trace level gets fresh Variables
  # when ``nnx.merge`` rebuilds the model inside the step.
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
  params, batch_stats = nnx.as_pure(params), nnx.as_pure(batch_stats)
  state = TrainState(
    step=jax.numpy.zeros((), jax.numpy.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(seed + 1)),
  )
  return graphdef, state


def create(
  config, steps_per_epoch: int
) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
  """The one way to build a run's model, optimizer and fresh state from its config.

  Used by the trainer, the benchmark and the tests. Returns ``(graphdef, state, tx)``; the
  state lives on the default device (put it on the mesh with ``jax.device_put``).
  """
  model = models.create_model(config, seed=config.seed)
  trainable = models.trainable_mask(model, nnx.as_pure(nnx.state(model, nnx.Param)))
  tx = make_optimizer(config.train, steps_per_epoch, trainable)
  graphdef, state = create_train_state(model, tx, config.seed)
  return graphdef, state, tx
