"""Model registry: every model family is a module ``lvef_jax.models.<name>`` exporting ``Model``.

A ``Model`` maps a clip batch ``[B, T, H, W, 1]`` to EF ``[B]`` and is built from the
``config.model`` keys (all but ``name``) plus the clip shape from ``config.data``.
"""

from __future__ import annotations

import importlib

import jax
from flax import nnx

from lvef_jax.errors import ConfigError

MODEL_FAMILIES = ("i3d",)


def model_class(name: str) -> type[nnx.Module]:
  """Returns the ``Model`` class of family ``name``."""
  if name not in MODEL_FAMILIES:
    raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODEL_FAMILIES)}")
  return importlib.import_module(f"lvef_jax.models.{name}").Model


def create_model(config, seed: int = 0) -> nnx.Module:
  """Builds ``config.model`` for clips of ``config.data.clip_frames`` x ``image_size``^2."""
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  return model_class(config.model.name)(
      clip_frames=config.data.clip_frames, image_size=config.data.image_size,
      rngs=nnx.Rngs(params=jax.random.key(seed)), **kwargs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (``nnx.Param`` leaves)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
