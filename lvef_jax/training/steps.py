"""Pure, jit-compiled train and predict steps over a device mesh.

The functional NNX pattern: ``nnx.merge`` the graph definition with the state arrays, run, and
``nnx.split`` the updated BatchNorm statistics back out, all inside one ``jax.jit``. Batches
arrive sharded over the ``data`` axis and the state is replicated, so XLA inserts the gradient
all-reduce; BatchNorm statistics are computed over the global batch, which is why the result
does not depend on the number of devices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from lvef_jax import models, sharding
from lvef_jax.errors import ConfigError
from lvef_jax.training import tasks
from lvef_jax.training.state import TrainState

# A run's optimizer: one for every member, or (a grid over optimizer hyperparameters) a
# function of a member's ``state.hparams`` (`state.create_members`).
Optimizer = optax.GradientTransformation | Callable[[dict], optax.GradientTransformation]


def _merge(graphdef: nnx.GraphDef, state: TrainState, batch_stats=None) -> nnx.Module:
  """The model with ``state``'s weights (and ``batch_stats``, default the state's) and its
  member's grid values."""
  model = nnx.merge(
    graphdef, state.params, state.batch_stats if batch_stats is None else batch_stats
  )
  models.set_member_hparams(model, state.hparams)
  return model


# How a several-member train step maps its member axis (``compute.members``): ``vmap``
# (``jax.vmap``: one batched op for all members), ``loop`` (each member's step in turn, inside
# the one jitted program), or ``auto``, the measured best of the mesh's platform
# (`member_map_for`; docs/benchmarks.md, "Several members in one program").
MEMBER_MAPS = ("auto", "vmap", "loop")


def member_map_for(member_map: str, platform: str) -> str:
  """The form ``member_map`` names on ``platform`` (a device's ``platform``): ``auto`` is the
  loop on the CPU, where vmapped convolutions become grouped ones that XLA:CPU runs slowly,
  and ``vmap`` on every other platform, where one batched kernel serves all members."""
  if member_map not in MEMBER_MAPS:
    raise ConfigError(
      f"compute.members must be one of {', '.join(MEMBER_MAPS)}, got {member_map!r}"
    )
  if member_map == "auto":
    return "loop" if platform == "cpu" else "vmap"
  return member_map


def _over_member_parts(
  fn: Callable, members: int, form: str, mesh: Mesh, shared_batch: bool = False
) -> Callable:
  """``fn(state, batch)`` of one member, over a leading member axis of the state and the batch
  (``shared_batch``: every member takes the same batch) and of every result: ``jax.vmap``, or
  (``loop``) one member after another inside the program, their results stacked.

  Where the mesh splits the members over devices, each part maps only its own members
  (``jax.shard_map`` over the ``members`` axis; ``data`` stays automatic): left to XLA, a
  vmapped pointwise convolution, grouped over members split over devices, all-gathers the
  input and keeps one part's kernel, and computes wrong values (jax 0.10.2, on the CPU and in
  the compiled GPU program alike; tests/test_members_step.py)."""
  if members <= 1:
    return fn
  if form == "vmap":
    mapped = jax.vmap(fn, in_axes=(0, None) if shared_batch else 0)
  else:

    def mapped(state, batch):
      def take(tree, i):
        return jax.tree.map(lambda x: x[i], tree)

      count = jax.tree.leaves(state)[0].shape[0]  # this part's members
      outs = []
      for i in range(count):
        inputs = (take(state, i), batch if shared_batch else take(batch, i))
        if outs:
          # One member after another: the next member's inputs wait for the last one's
          # results, so only one member's temporaries are alive at a time (left free, XLA's
          # scheduler interleaves the members, and at 8 members a step ran a fifth slower a
          # clip than one member on a 2-core CPU). ``lax.map`` (a while loop) ran 45x slower.
          inputs, outs[-1] = jax.lax.optimization_barrier((inputs, outs[-1]))
        outs.append(fn(*inputs))
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  if mesh.shape.get(sharding.MEMBERS_AXIS, 1) > 1:
    split = PartitionSpec(sharding.MEMBERS_AXIS)
    mapped = jax.shard_map(
      mapped,
      mesh=mesh,
      in_specs=(split, PartitionSpec() if shared_batch else split),
      out_specs=split,
      axis_names={sharding.MEMBERS_AXIS},
    )
  return mapped


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: Optimizer,
  mesh: Mesh,
  members: int = 1,
  member_map: str = "auto",
  task: tasks.Task = tasks.EF,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns ``step(state, batch) -> (state, metrics)``, jitted with ``state`` donated.

  ``batch`` holds the ``task``'s input and labels: ``video`` (uint8 ``[B, T, H, W, 1]``) and
  ``ef`` (``[B]``) for EF, ``image`` (``[B, H, W, 1]``) and ``mask`` (``[B, H, W]``) for
  segmentation. The model's ``regularization_loss()`` (L1/L2 penalties; zero for most
  families) is added to the task's loss (`tasks.Task.loss`) for the gradient. Metrics: the
  batch's reported ``loss`` (the MSE; BCE per pixel), the ``penalty``, the gradient global norm
  ``grad_norm`` and ``skipped`` (1 when a non-finite loss or gradient left the state as it was).

  ``members > 1`` trains that many runs in one program (``jax.vmap`` of the same step): every
  array of ``state`` has a leading member axis, the batch is ``[members, B, ...]`` (each member
  its own clips, ``B`` split over the ``data`` axis) and every metric has one value a member.
  The member axis is split over the mesh's ``members`` axis where it has one
  (`sharding.make_mesh`). ``tx`` may be a function of the member's ``state.hparams``.
  ``member_map`` (``compute.members``) chooses how the member axis is mapped (`MEMBER_MAPS`):
  every form computes the same step.
  """

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params, batch_stats):
      model = _merge(graphdef, state.replace(params=params), batch_stats)
      outputs = model(batch[task.input_key], train=True, dropout_key=dropout_key)
      objective, reported = task.loss(outputs, batch)
      penalty = model.regularization_loss()
      batch_stats = nnx.as_pure(nnx.state(model, nnx.BatchStat))
      return objective + penalty, (objective, reported, penalty, batch_stats)

    (_, (objective, reported, penalty, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(state.params, state.batch_stats)
    optimizer = tx(state.hparams) if callable(tx) else tx
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient skips the step: the weights, BatchNorm statistics and
    # optimizer state stay as they were (the step counter still advances).
    ok = jnp.isfinite(objective) & jnp.isfinite(penalty) & jnp.isfinite(grad_norm)

    def keep_if_bad(new, old):
      return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    new_state = state.replace(
      step=state.step + 1,
      params=keep_if_bad(params, state.params),
      batch_stats=keep_if_bad(batch_stats, state.batch_stats),
      opt_state=keep_if_bad(opt_state, state.opt_state),
    )
    metrics = {"loss": reported, "penalty": penalty, "grad_norm": grad_norm}
    return new_state, {**metrics, "skipped": jnp.logical_not(ok).astype(jnp.int32)}

  form = member_map_for(member_map, mesh.devices.flat[0].platform)
  state_sharding = sharding.state_sharding(mesh, members)
  return jax.jit(
    _over_member_parts(step, members, form, mesh),
    in_shardings=(state_sharding, sharding.batch_sharding(mesh, members)),
    out_shardings=(state_sharding, state_sharding),
    donate_argnums=0,
  )


def make_predict_step(
  graphdef: nnx.GraphDef, mesh: Mesh, members: int = 1, input_key: str = "video"
) -> Callable[[TrainState, dict], jax.Array]:
  """Returns ``predict(state, batch) -> EF [B]`` (a segmentation model's logits ``[B, H, W]``,
  from ``batch[input_key]``): running BatchNorm averages, no dropout.

  ``members > 1``: every member predicts the same clips, ``[members, B]``, one member after
  another inside the program (the ``loop`` form; prediction is a small part of a run's work): the
  vmapped inference step, partitioned over a mesh of 2 members x 4 devices, gave each member
  predictions mixed with the other's weights (XLA:CPU, jax 0.10.2), the loop each member's
  own (tests/test_members.py)."""

  def predict(state: TrainState, batch: dict) -> jax.Array:
    return _merge(graphdef, state)(batch[input_key], train=False)

  return jax.jit(
    _over_member_parts(predict, members, "loop", mesh, shared_batch=True),
    in_shardings=(sharding.state_sharding(mesh, members), sharding.batch_sharding(mesh)),
    out_shardings=sharding.batch_sharding(mesh, members),
  )


def make_batch_stats_step(
  graphdef: nnx.GraphDef,
  mesh: Mesh,
  members: int = 1,
  member_map: str = "auto",
  input_key: str = "video",
) -> Callable[[TrainState, dict], nnx.State]:
  """Returns ``stats(state, batch)``: the BatchNorm statistics of ``batch`` alone, as a state
  (``members > 1``: each member's of its own batch, ``[members, B, ...]``, the member axis
  mapped as the train step's, ``member_map``).

  Used to recalibrate the running averages with the final weights (``precise BN``): the
  exponential averages kept during training lag behind weights that move every step, which
  shifted the demo's validation predictions by up to 11 EF points in some epochs.
  """

  def stats(state: TrainState, batch: dict) -> nnx.State:
    model = _merge(graphdef, state)
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.BatchNorm):
        module.momentum = 0.0  # keep only this batch's statistics
    # In every head dropout comes after the last normalisation, so it cannot change them.
    model(batch[input_key], train=True, dropout_key=jax.random.wrap_key_data(state.rng))
    return nnx.as_pure(nnx.state(model, nnx.BatchStat))

  state_sharding = sharding.state_sharding(mesh, members)
  return jax.jit(
    _over_member_parts(
      stats, members, member_map_for(member_map, mesh.devices.flat[0].platform), mesh
    ),
    in_shardings=(state_sharding, sharding.batch_sharding(mesh, members)),
    out_shardings=state_sharding,
  )
