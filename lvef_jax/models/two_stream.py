"""The paper's Two-Stream model (Table 5): a spatial stream on frames, a temporal stream on
frame differences, and a dense layer fusing the two streams' intermediate predictions.

Layer for layer as the adapted Keras code (``docs/models.md``), with the norm a choice:
each stream is Conv3D(32, 3x3x3, SAME, ReLU) -> norm -> MaxPool(2x2x2, valid) -> Flatten ->
Dense(64, ReLU) -> Dropout -> Dense(1); the two scalars are concatenated -> Dense(1024, ReLU)
-> Dropout -> Dense(1). L1/L2 penalties on the kernels of the Conv3D and the two hidden Dense
layers enter the training loss through ``regularization_loss``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers, streams


class Stream(nnx.Module):
  """One stream: ``[B, T, H, W, 1]`` float input -> one intermediate prediction ``[B, 1]``."""

  def __init__(
    self,
    frames: int,
    height: int,
    width: int,
    *,
    features: int,
    hidden: int,
    norm: str,
    bn_momentum: float,
    dropout: float,
    dtype,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    self.ops = ops
    self.conv = layers.conv(1, features, (3, 3, 3), dtype=dtype, rngs=rngs, ops=ops)
    self.norm = layers.Norm(features, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs)
    flat = flat_features(frames, height, width, features)
    if flat == 0:
      raise ConfigError(
        f"Two-Stream input {frames}x{height}x{width} is too small for the 2x2x2 pooling"
      )
    self.hidden = layers.dense(flat, hidden, dtype=dtype, rngs=rngs)
    self.out = layers.dense(hidden, 1, dtype=dtype, rngs=rngs)
    self.rate = dropout

  def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None) -> jax.Array:
    # The norm follows the ReLU: in the adapted code the ReLU is the Conv3D's own activation.
    x = self.norm(jax.nn.relu(self.conv(x)), train=train)
    x = self.ops.max_pool(x, (2, 2, 2), (2, 2, 2), padding="VALID")
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(layers.dropout(x, self.rate, train=train, key=dropout_key))

  def kernels(self) -> list[jax.Array]:
    """The kernels that carry the L1/L2 penalty."""
    return [self.conv.kernel[...], self.hidden.kernel[...]]


class Model(layers.EFModel):
  """Two-Stream regressor: clip batch ``[B, T, H, W, 1]`` -> EF ``[B]`` in %.

  Args:
    norm: one of ``layers.NORMS`` (the paper compares batch and layer).
    split: one of ``streams.SPLITS``: ``halves`` (adapted code: left half of the frames to the
      spatial stream, right-half differences to the temporal stream) or ``full``.
    stream_features, stream_hidden: widths of each stream's Conv3D and hidden Dense.
    fusion_hidden: width of the fusion Dense layer.
    dropout: dropout rate of every dropout layer (paper: 0.05).
    l1, l2: penalty coefficients on the regularised kernels (Keras' ``l1``/``l2`` convention:
      ``l2 * sum(w ** 2)``); the adapted code uses l2 = 0.05.
    bn_momentum, ef_offset, dtype, ops: as for every family (``docs/models.md``).
    clip_frames, image_size: input clip shape (the Flatten layers depend on it).
  """

  def __init__(
    self,
    *,
    norm: str,
    split: str,
    stream_features: int,
    stream_hidden: int,
    fusion_hidden: int,
    dropout: float,
    l1: float,
    l2: float,
    bn_momentum: float,
    ef_offset: float,
    ef_scale: float,
    dtype: str,
    clip_frames: int,
    image_size: int,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    if split not in streams.SPLITS:
      raise ConfigError(f"Two-Stream split must be one of {streams.SPLITS}, got {split!r}")
    self.dtype = jnp.dtype(dtype)
    self.split, self.rate, self.l1, self.l2 = split, dropout, l1, l2
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    width = streams.stream_width(image_size, split)
    kwargs = dict(
      features=stream_features,
      hidden=stream_hidden,
      norm=norm,
      bn_momentum=bn_momentum,
      dropout=dropout,
      dtype=self.dtype,
      rngs=rngs,
      ops=ops,
    )
    self.spatial = Stream(clip_frames, image_size, width, **kwargs)
    self.temporal = Stream(clip_frames - 1, image_size, width, **kwargs)
    self.fusion = layers.dense(2, fusion_hidden, dtype=self.dtype, rngs=rngs)
    self.out = layers.dense(fusion_hidden, 1, dtype=self.dtype, rngs=rngs)

  def __call__(
    self, video: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    """Predicts EF (%) for each clip; ``dropout_key`` is required when ``train`` is True."""
    keys = layers.dropout_keys(dropout_key, 3)
    spatial, temporal = streams.stream_inputs(video, self.split, self.dtype)
    scores = jnp.concatenate(
      [
        self.spatial(spatial, train=train, dropout_key=keys[0]),
        self.temporal(temporal, train=train, dropout_key=keys[1]),
      ],
      axis=-1,
    )
    x = jax.nn.relu(self.fusion(scores))
    y = self.out(layers.dropout(x, self.rate, train=train, key=keys[2]))
    return self.to_ef(y[:, 0])

  def regularization_loss(self) -> jax.Array:
    kernels = self.spatial.kernels() + self.temporal.kernels() + [self.fusion.kernel[...]]
    total = jnp.zeros((), jnp.float32)
    for kernel in kernels:
      if layers.nonzero(self.l2):
        total += self.l2 * jnp.sum(jnp.square(kernel))
      if layers.nonzero(self.l1):
        total += self.l1 * jnp.sum(jnp.abs(kernel))
    return total


def flat_features(frames: int, height: int, width: int, features: int) -> int:
  """Inputs of a stream's Flatten -> Dense layer: the map after valid 2x2x2 pooling."""
  return math.prod((frames // 2, height // 2, width // 2, features))
