"""Model registry: every model family is a module ``lvef_jax.models.<name>`` exporting ``Model``.

A ``Model`` maps a clip batch ``[B, T, H, W, 1]`` to EF ``[B]``; a segmentation model
(``SEGMENTATION_FAMILIES``, ``config.task="segmentation"``) maps grey frames ``[B, H, W, 1]`` to
LV logits ``[B, H, W]``. It is built from the keys of
``config.model`` (all but ``name``; each family's config file holds exactly the keys its
``Model`` takes) plus the clip shape from ``config.data``, and the convolution and pooling ops
that ``config.compute.kernels`` names (:func:`ops_for`): a hardware choice, not part of the
model, so a run trained with one resumes, evaluates and predicts with another.
"""

from __future__ import annotations

import importlib

import jax
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

EF_FAMILIES = ("i3d", "two_stream", "fusion", "cnn_rnn", "r2plus1d")
SEGMENTATION_FAMILIES = ("unet", "deeplabv3")
MODEL_FAMILIES = EF_FAMILIES + SEGMENTATION_FAMILIES
# config.compute.kernels: "xla" is XLA's plain convolutions on every backend (what GPUs run),
# "cpu" the CPU's forms of the same ops (lvef_jax.kernels), "auto" the CPU's forms on the CPU
# backend and XLA's everywhere else. The max pools are the models' own on every backend.
KERNELS = ("auto", "xla", "cpu")


def ops_for(kernels: str, backend: str | None = None) -> layers.Ops:
  """The ops that ``config.compute.kernels`` names, on ``backend`` (default: JAX's)."""
  if kernels not in KERNELS:
    raise ConfigError(f"compute.kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
  if kernels == "auto":
    kernels = "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"
  if kernels == "xla":
    return layers.XLA_OPS
  from lvef_jax import kernels as cpu_kernels  # the one place models meet the CPU's forms

  return cpu_kernels.CPU_OPS


def model_class(name: str) -> type[nnx.Module]:
  """Returns the ``Model`` class of family ``name``."""
  if name not in MODEL_FAMILIES:
    raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODEL_FAMILIES)}")
  return importlib.import_module(f"lvef_jax.models.{name}").Model


def create_model(config, seed: int = 0) -> nnx.Module:
  """Builds ``config.model`` for clips of ``config.data.clip_frames`` x ``image_size``^2, with
  the ops of ``config.compute.kernels``."""
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  return model_class(config.model.name)(
    clip_frames=config.data.clip_frames,
    image_size=config.data.image_size,
    ops=ops_for(config.compute.kernels),
    rngs=nnx.Rngs(params=jax.random.key(seed)),
    **kwargs,
  )


def load_initial_weights(model: nnx.Module, model_cfg) -> None:
  """Fills a fresh model from ``model.init_from`` (a PyTorch weights file) where the family
  has that key and it is set: the start of training and of ``--mode=import``, never of
  evaluation (which restores the run's own checkpoint)."""
  path = model_cfg.get("init_from", "")
  if path:
    from lvef_jax.models import torch_import  # torch is imported only to read such a file

    torch_import.load_into(model, path)


def set_member_hparams(model: nnx.Module, hparams: dict) -> None:
  """Sets a member's grid values of the model's own hyperparameters on a model rebuilt inside
  the train step (``train.grid``'s ``dropout``: every dropout layer's rate; ``l2``: Two-Stream's
  penalty): arrays there, one value a member under ``jax.vmap``."""
  if "dropout" in hparams:
    for _, module in nnx.iter_modules(model):
      if hasattr(module, "rate"):  # every family keeps its dropout rate as ``rate``
        module.rate = hparams["dropout"]
  if "l2" in hparams:
    model.l2 = hparams["l2"]


def path_keys(path) -> tuple:
  """A pytree path (``jax.tree_util`` key entries) as plain keys, as in ``nnx.to_flat_state``."""
  keys = []
  for entry in path:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        keys.append(getattr(entry, attr))
        break
    else:
      keys.append(entry)
  return tuple(keys)


def trainable_mask(model: nnx.Module, params: nnx.State):
  """A pytree like ``params`` of booleans: which parameters the optimizer updates."""
  return jax.tree_util.tree_map_with_path(lambda p, _: model.trainable(path_keys(p)), params)


def count_params(model: nnx.Module, trainable_only: bool = False) -> int:
  """Number of parameters (``nnx.Param`` leaves); only those that train if ``trainable_only``."""
  total = 0
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if not trainable_only or model.trainable(tuple(path)):
      total += variable.size
  return total
