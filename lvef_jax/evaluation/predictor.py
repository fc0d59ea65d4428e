"""A trained model as a prediction function: parameters and BatchNorm statistics, nothing else.

``Predictor.from_run(workdir)`` rebuilds the model from the run's own ``config.json`` and
restores only its parameters and BatchNorm averages from a checkpoint (no optimizer state), so
evaluation and prediction never need the training config retyped, nor the trainer.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
from flax import nnx

from lvef_jax import checkpoints, models, sharding
from lvef_jax.config_base import load_run_config
from lvef_jax.errors import ConfigError


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
  ) -> "Predictor":
    """The model of run ``workdir`` with the weights of ``checkpoint``.

    Args:
      workdir: a run directory (``config.json`` and ``checkpoints/``).
      checkpoint: ``best``, ``latest``, or an epoch number that one of them holds.
      config: the run's config with the caller's overrides (default: ``config.json``).
      mesh: default: every device.
    """
    workdir = pathlib.Path(workdir)
    config = config if config is not None else load_run_config(workdir)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    model = models.create_model(config, seed=config.seed)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
    template = jax.device_put(
      (nnx.as_pure(params), nnx.as_pure(batch_stats)), sharding.replicated(mesh)
    )
    store = checkpoints.Checkpoints(workdir / "checkpoints")
    kind = store.kind_of(checkpoint)
    (params, batch_stats), meta = store.restore_variables(kind, template)
    return cls(
      config,
      graphdef,
      params,
      batch_stats,
      mesh,
      epoch=meta["epoch"],
      source=f"{workdir} ({kind} checkpoint, epoch {meta['epoch']})",
    )


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
