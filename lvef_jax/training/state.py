"""Train state as a plain pytree of arrays, and the optimizer (paper: Adam, halving the rate;
EchoNet-Dynamic: SGD with momentum, the rate x0.1 every 15 epochs)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lvef_jax import models
from lvef_jax.errors import ConfigError
from lvef_jax.training import members as members_lib


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
  # A several-member run's grid values (``train.grid``: name -> float32, one a member);
  # empty otherwise. Read inside the step (`make_optimizer`, `models.set_member_hparams`).
  hparams: dict = flax.struct.field(default_factory=dict)


def learning_rate_schedule(train_cfg, steps_per_epoch: int, init_value=None) -> optax.Schedule:
  """Step-wise schedule equal to the paper's per-epoch staircase decay, from
  ``train.learning_rate`` (or ``init_value``: a member's rate, an array inside the step)."""
  decay = optax.exponential_decay(
    init_value=1.0,
    transition_steps=max(1, train_cfg.lr_decay_epochs * steps_per_epoch),
    decay_rate=train_cfg.lr_decay_factor,
    staircase=True,
  )
  rate = train_cfg.learning_rate if init_value is None else init_value
  return lambda count: rate * decay(count)


def make_optimizer(
  train_cfg, steps_per_epoch: int, trainable=None, hparams: dict | None = None
) -> optax.GradientTransformation:
  """``train.optimizer``: Adam (AdamW when weight_decay > 0), or SGD with momentum (weight
  decay added to the gradient, as PyTorch's SGD); optionally after global-norm clipping.

  Args:
    train_cfg: ``config.train``.
    steps_per_epoch: steps of one epoch, for the per-epoch learning-rate staircase.
    trainable: a pytree like the parameters of booleans; parameters marked False get no
      update at all (and no optimizer state): frozen backbone layers.
    hparams: a member's ``learning_rate``, ``weight_decay`` and ``grad_clip_norm`` where the
      run's grid varies them (arrays inside the step). The optimizer's structure, and so its
      state, is the same for every member: decay and clipping are there when any member has
      them, and a member's 0 disables them as the config's 0 does.
  """
  hparams = hparams or {}
  schedule = learning_rate_schedule(train_cfg, steps_per_epoch, hparams.get("learning_rate"))
  grid = members_lib.parse_grid(train_cfg.get("grid", ""))
  varied = {name: max(values) for name, values in grid}
  decay = max(train_cfg.weight_decay, varied.get("weight_decay", 0.0)) > 0
  weight_decay = hparams.get("weight_decay", train_cfg.weight_decay)
  if train_cfg.optimizer == "sgd":
    tx = optax.sgd(schedule, momentum=train_cfg.momentum or None)
    if decay:  # torch.optim.SGD's weight decay: added to the gradient, before the momentum
      tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  elif train_cfg.optimizer != "adam":
    raise ConfigError(f"train.optimizer must be adam or sgd, got {train_cfg.optimizer!r}")
  elif decay:
    tx = optax.adamw(schedule, weight_decay=weight_decay)
  else:
    tx = optax.adam(schedule)
  if max(train_cfg.grad_clip_norm, varied.get("grad_clip_norm", 0.0)) > 0:
    clip = hparams.get("grad_clip_norm", train_cfg.grad_clip_norm)
    if "grad_clip_norm" in hparams:  # a member's 0: no clipping
      clip = jnp.where(clip > 0, clip, jnp.inf)
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
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

  The model starts from ``model.init_from`` where set (`models.load_initial_weights`).
  Used by the trainer, the benchmark and the tests. Returns ``(graphdef, state, tx)``; the
  state lives on the default device (put it on the mesh with ``jax.device_put``). A run of
  several members (`lvef_jax.training.members`) gets `create_members`' state and optimizer.
  """
  if members_lib.count(config) > 1:
    return create_members(config, steps_per_epoch)
  model = models.create_model(config, seed=config.seed)
  models.load_initial_weights(model, config.model)
  trainable = models.trainable_mask(model, nnx.as_pure(nnx.state(model, nnx.Param)))
  tx = make_optimizer(config.train, steps_per_epoch, trainable)
  graphdef, state = create_train_state(model, tx, config.seed)
  return graphdef, state, tx


def create_members(config, steps_per_epoch: int):
  """Every member's fresh state (each from its own solo config, `members.member_config`),
  stacked on a leading member axis, and the optimizer as a function of a member's
  ``state.hparams`` (what `steps.make_train_step` takes for a several-member run)."""
  states, graphdef, trainable = [], None, None
  for member in members_lib.members(config):
    solo = members_lib.member_config(config, member)
    model = models.create_model(solo, seed=solo.seed)
    models.load_initial_weights(model, solo.model)
    trainable = models.trainable_mask(model, nnx.as_pure(nnx.state(model, nnx.Param)))
    tx = make_optimizer(solo.train, steps_per_epoch, trainable)
    member_graphdef, state = create_train_state(model, tx, solo.seed)
    graphdef = graphdef or member_graphdef  # a grid's dropout is set inside the step
    hparams = {name: jnp.float32(value) for name, value in member.hparams.items()}
    states.append(state.replace(hparams=hparams))
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

  def optimizer(hparams: dict) -> optax.GradientTransformation:
    return make_optimizer(config.train, steps_per_epoch, trainable, hparams)

  return graphdef, stacked, optimizer


def member_state(state: TrainState, index: int) -> TrainState:
  """Member ``index`` of a several-member state, as a solo run's state."""
  return jax.tree.map(lambda x: x[index], state)
