"""The paper's regression heads (Table 2), shared by every family that ends in a feature map.

A head maps a channels-last feature map ``[B, *spatial, C]`` to one linear output per example:
- ``og``: AveragePooling(2x4x4, stride 1, valid) -> Dropout -> Flatten -> Dense(1), as the
  Keras I3D the paper adapted ends (there with a sigmoid for classification);
- ``a``: GAP -> Dropout -> Dense(1), the paper's default;
- ``b``: Dropout -> Conv(1, 1x1x1) -> GAP;
- ``c``: GAP -> Dense(hidden, ReLU) -> Dropout -> Dense(1).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers
from lvef_jax.models.i3d_layout import HEADS, OG_POOL


def _og_window(map_shape: Sequence[int]) -> tuple[int, ...]:
  """The OG average-pooling window, cut to the map where the map is smaller (tiny test clips)."""
  window = OG_POOL[-len(map_shape) :]
  return tuple(min(w, s) for w, s in zip(window, map_shape))


class Head(nnx.Module):
  """One of ``HEADS`` on a ``[B, *map_shape, features]`` map; returns ``[B]`` float32.

  Args:
    kind: one of ``HEADS``.
    features: channels of the feature map.
    map_shape: spatial shape of the feature map (only ``og``, which flattens, depends on it).
    dropout: dropout rate.
    hidden: width of head C's hidden layer.
  """

  def __init__(
    self,
    kind: str,
    features: int,
    map_shape: Sequence[int],
    *,
    dropout: float,
    hidden: int,
    dtype,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    if kind not in HEADS:
      raise ConfigError(f"head must be one of {HEADS}, got {kind!r}")
    self.kind, self.rate = kind, dropout
    if kind == "og":
      self.window = _og_window(map_shape)
      pooled = [s - w + 1 for s, w in zip(map_shape, self.window)]
      self.out = layers.dense(int(np.prod(pooled)) * features, 1, dtype=dtype, rngs=rngs)
    elif kind == "a":
      self.out = layers.dense(features, 1, dtype=dtype, rngs=rngs)
    elif kind == "b":
      self.out = layers.conv(features, 1, (1,) * len(map_shape), dtype=dtype, rngs=rngs, ops=ops)
    else:
      self.hidden = layers.dense(features, hidden, dtype=dtype, rngs=rngs)
      self.out = layers.dense(hidden, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None) -> jax.Array:
    drop = lambda h: layers.dropout(h, self.rate, train=train, key=dropout_key)  # noqa: E731
    if self.kind == "og":
      pooled = nnx.avg_pool(
        x, window_shape=self.window, strides=(1,) * len(self.window), padding="VALID"
      )
      y = self.out(drop(pooled).reshape(x.shape[0], -1))
    elif self.kind == "a":
      y = self.out(drop(layers.global_average_pool(x)))
    elif self.kind == "b":
      y = layers.global_average_pool(self.out(drop(x)))
    else:
      y = self.out(drop(jax.nn.relu(self.hidden(layers.global_average_pool(x)))))
    return y[:, 0].astype(jnp.float32)
