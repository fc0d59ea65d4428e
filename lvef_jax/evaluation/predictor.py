"""A trained model as a prediction function: parameters and BatchNorm statistics, nothing else.

``Predictor.from_run(workdir)`` rebuilds the model from the run's own ``config.json`` and
restores only its parameters and BatchNorm averages from a checkpoint (no optimizer state), so
evaluation and prediction never need the training config retyped, nor the trainer.

A run of several members (``train.seeds``, ``train.grid``: `lvef_jax.training.members`, plain
config logic, the one module of ``training/`` read here) keeps every array with a leading
member axis; ``predictors_from_run`` restores it once and gives one Predictor a member, each
rebuilt from its member's own config (its seed and grid values, such as its dropout rate).
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
from flax import nnx

from lvef_jax import checkpoints, models, sharding
from lvef_jax.config_base import load_run_config
from lvef_jax.errors import ConfigError
from lvef_jax.training import members as members_lib


class Predictor:
  """``predictor(video) -> EF [B]`` on a device mesh, in inference mode.

  ``predictor(video, key)`` samples Monte-Carlo dropout instead: BatchNorm still uses its
  running averages, and the dropout layers of the regression head drop with ``key``.

  Attributes:
    config: the run's config (data settings say which clips the model expects).
    epoch: the checkpoint's epoch (None for a state handed over by the trainer).
    source: where the weights came from, for logs and reports.
  """

  def __init__(self, config, graphdef, params, batch_stats, mesh, *, epoch=None, source=""):
    self.config, self.epoch, self.source, self.mesh = config, epoch, source, mesh
    replicated = sharding.replicated(mesh)
    self._variables = jax.device_put((params, batch_stats), replicated)
    batch = sharding.batch_sharding(mesh)

    def predict(variables, video):
      return nnx.merge(graphdef, *variables)(video, train=False)

    def sample(variables, video, key_data):
      model = nnx.merge(graphdef, *variables)
      return model(video, train=False, dropout_key=jax.random.wrap_key_data(key_data))

    self._predict = jax.jit(predict, in_shardings=(replicated, batch), out_shardings=batch)
    self._sample = jax.jit(
      sample, in_shardings=(replicated, batch, replicated), out_shardings=batch
    )

  def __call__(self, video: jax.Array, key: jax.Array | None = None) -> jax.Array:
    if key is None:
      return self._predict(self._variables, video)
    return self._sample(self._variables, video, jax.random.key_data(key))

  @classmethod
  def from_run(
    cls,
    workdir: str | pathlib.Path,
    checkpoint: str = "best",
    *,
    config: ml_collections.ConfigDict | None = None,
    mesh: jax.sharding.Mesh | None = None,
    member: int | None = None,
  ) -> "Predictor":
    """The model of run ``workdir`` with the weights of ``checkpoint``.

    Args:
      workdir: a run directory (``config.json`` and ``checkpoints/``).
      checkpoint: ``best``, ``latest``, or an epoch number that one of them holds.
      config: the run's config with the caller's overrides (default: ``config.json``).
      mesh: default: every device.
      member: which member of a several-member run (required there; `predictors_from_run`
        gives all of them); a solo run is its own member 0.
    """
    config = config if config is not None else load_run_config(workdir)
    count = members_lib.count(config)
    if member is None and count > 1:
      raise ConfigError(
        f"{workdir} is a run of {count} members: name one (member 0 to {count - 1}) or take "
        "them all (predictors_from_run)"
      )
    (predictor,) = predictors_from_run(workdir, checkpoint, config=config, mesh=mesh, member=member)
    return predictor


def check_member(workdir, member: int, count: int) -> int:
  """``member`` if run ``workdir`` of ``count`` members has it, else one clear error."""
  if isinstance(member, bool) or not 0 <= member < count:
    numbers = "only member 0 (a solo run)" if count == 1 else f"members 0 to {count - 1}"
    raise ConfigError(f"member {member} of {workdir}: the run has {numbers}")
  return member


def predictors_from_run(
  workdir: str | pathlib.Path,
  checkpoint: str = "best",
  *,
  config: ml_collections.ConfigDict | None = None,
  mesh: jax.sharding.Mesh | None = None,
  member: int | None = None,
) -> list[Predictor]:
  """One Predictor a member of run ``workdir`` (one for a solo run), from one restore.

  A several-member checkpoint stacks every member's parameters and BatchNorm statistics on a
  leading member axis; its ``best`` kind holds each member's own best weights, of the epochs
  in its meta's ``best_epochs``. Member ``i``'s Predictor has member ``i``'s own config and
  model (`members.member_config`: its seed and grid values; its dropout rate counts for
  Monte-Carlo dropout) and its slice of the weights; its ``epoch`` is its own best epoch for
  ``best``, the checkpoint's epoch for ``latest``.

  Args:
    workdir, checkpoint, config, mesh: as for `Predictor.from_run`.
    member: only this member (a solo run: only 0); default every member, in member order.

  Raises:
    ConfigError: ``member`` is not one of the run's.
  """
  workdir = pathlib.Path(workdir)
  config = config if config is not None else load_run_config(workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  run_members = members_lib.members(config)
  several = len(run_members) > 1
  if member is not None:
    check_member(workdir, member, len(run_members))
  chosen = range(len(run_members)) if member is None else [member]
  configs = {
    i: members_lib.member_config(config, run_members[i]) if several else config for i in chosen
  }
  models_of = {i: models.create_model(c, seed=c.seed) for i, c in configs.items()}
  graphdefs, template = {}, None
  for i, model in models_of.items():
    graphdefs[i], params, batch_stats = nnx.split(model, nnx.Param, ...)
    if template is None:  # the members' weights have the same shapes
      template = (nnx.as_pure(params), nnx.as_pure(batch_stats))
  del models_of
  replicated = sharding.replicated(mesh)
  if several:  # every member's weights are restored (the checkpoint's arrays are stacked)
    template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((len(run_members), *x.shape), x.dtype, sharding=replicated),
      template,
    )
  else:
    template = jax.device_put(template, replicated)
  store = checkpoints.Checkpoints(workdir / "checkpoints")
  kind = store.kind_of(checkpoint)
  variables, meta = store.restore_variables(kind, template)
  predictors = []
  for i in chosen:
    if not several:
      epoch, source = meta["epoch"], f"{workdir} ({kind} checkpoint, epoch {meta['epoch']})"
    else:
      best_epochs = meta.get("best_epochs", [meta["epoch"]] * len(run_members))
      epoch = best_epochs[i] if kind == "best" else meta["epoch"]
      grid = "".join(f", {k}={v:g}" for k, v in run_members[i].hparams.items())
      source = (
        f"{workdir} ({kind} checkpoint, member {i}, seed {run_members[i].seed}{grid}, "
        f"epoch {epoch})"
      )
    params, batch_stats = jax.tree.map(lambda x: x[i], variables) if several else variables
    predictors.append(
      Predictor(configs[i], graphdefs[i], params, batch_stats, mesh, epoch=epoch, source=source)
    )
  return predictors


def check_same_inputs(predictors: list[Predictor]) -> None:
  """An ensemble averages clips of one shape: its members must read the data alike."""
  keys = ("clip_frames", "period", "image_size")
  first = {k: predictors[0].config.data[k] for k in keys}
  for p in predictors[1:]:
    other = {k: p.config.data[k] for k in keys}
    if other != first:
      raise ConfigError(
        f"ensemble members read different clips: {predictors[0].source} has {first}, "
        f"{p.source} has {other}"
      )
