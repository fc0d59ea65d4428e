"""The paper's I3D family (I3D-original, I3D-mini and the module ablations), layer for layer.

``docs/models.md`` describes the layers. The variants are the paper's Table 1 ablation,
``conv2`` its Table 3 kernel study, ``head`` its Table 2 heads and ``norm`` the
BatchNorm/LayerNorm comparison of Tables 4, 6, 9 and 10. :class:`Body` (stem, conv2 and
Inception stages) is reused by the Fusion family and, in 2-D, by the scratch CNN-RNN backbone.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import heads, layers

# The layer tables (Inception widths, stages, variants, conv2 kernels) are plain data in
# i3d_layout, which the PyTorch peer (benchmarks/torch_peer.py) reads too.
from lvef_jax.models.i3d_layout import (
  CONV2_FEATURES,
  CONV2_KERNELS,
  INCEPTION_WIDTHS,
  STAGES,
  STEM_FEATURES,
  VARIANTS,
)


class Inception(nnx.Module):
  """Inception-v1 module (3-D, or 2-D with ``ndim=2``), the 5x5 branch as two 3x3 convs."""

  def __init__(
    self,
    in_features: int,
    widths: Sequence[int],
    *,
    ndim: int = 3,
    ops: layers.Ops = layers.XLA_OPS,
    **conv_kwargs,
  ):
    b1, b2_reduce, b2, b3_reduce, b3, pool_proj = widths
    block = lambda i, o, k: layers.ConvNormAct(i, o, k, ndim=ndim, ops=ops, **conv_kwargs)  # noqa: E731
    self.ndim, self.ops = ndim, ops
    self.branch1 = block(in_features, b1, 1)
    self.branch2 = nnx.List([block(in_features, b2_reduce, 1), block(b2_reduce, b2, 3)])
    self.branch3 = nnx.List(
      [block(in_features, b3_reduce, 1), block(b3_reduce, b3, 3), block(b3, b3, 3)]
    )
    self.branch4 = block(in_features, pool_proj, 1)
    self.out_features = b1 + b2 + b3 + pool_proj

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    heads = [self.branch1, self.branch2[0], self.branch3[0]]  # the pointwise convs that read x
    y1, y2, y3 = [
      block.norm_act(y, train=train)
      for block, y in zip(heads, self.ops.each_conv([block.conv for block in heads], x))
    ]
    for block in self.branch2[1:]:
      y2 = block(y2, train=train)
    for block in self.branch3[1:]:
      y3 = block(y3, train=train)
    y4 = self.branch4(self.ops.max_pool(x, (3,) * self.ndim, (1,) * self.ndim), train=train)
    return jnp.concatenate([y1, y2, y3, y4], axis=-1)


class Body(nnx.Module):
  """Stem, conv2 and Inception stages: ``[B, T, H, W, 1]`` clip -> ``[B, T', H', W', C]`` map.

  Args:
    variant: one of ``VARIANTS`` (which Inception stages follow the stem).
    conv2: one of ``CONV2_KERNELS``, the kernel of the stem's second convolution.
    norm: one of ``layers.NORMS``.
    bn_momentum: BatchNorm running-average momentum.
    dtype: computation dtype; parameters stay float32.
    ops: the convolution and pooling (``layers.Ops``).
    in_features: channels of the input (1 for grey clips).
  """

  def __init__(
    self,
    *,
    variant: str,
    conv2: str,
    norm: str,
    bn_momentum: float,
    dtype,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
    in_features: int = 1,
  ):
    for name, value, allowed in (("variant", variant, VARIANTS), ("conv2", conv2, CONV2_KERNELS)):
      if value not in allowed:
        raise ConfigError(f"I3D {name} must be one of {sorted(allowed)}, got {value!r}")
    self.ops = ops
    conv_kwargs = dict(norm=norm, bn_momentum=bn_momentum, dtype=dtype, rngs=rngs, ops=ops)
    self.stem_conv = layers.conv(
      in_features, STEM_FEATURES, (7, 7, 7), strides=2, dtype=dtype, rngs=rngs, ops=ops
    )
    self.stem_norm = layers.Norm(STEM_FEATURES, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs)
    conv2_layers, features = [], STEM_FEATURES
    for kernel in CONV2_KERNELS[conv2]:
      # No norm and no activation after conv2: as in the adapted Keras code.
      conv2_layers.append(
        layers.conv(features, CONV2_FEATURES, kernel, dtype=dtype, rngs=rngs, ops=ops)
      )
      features = CONV2_FEATURES
    self.conv2 = nnx.List(conv2_layers)

    self.time_strides, self.space_strides = [2, 1, 1], [2, 2, 2]
    stages = []
    for stage in VARIANTS[variant]:
      pool, names = STAGES[stage]
      modules = []
      for name in names:
        modules.append(Inception(features, INCEPTION_WIDTHS[name], **conv_kwargs))
        features = modules[-1].out_features
      stages.append(nnx.List(modules))
      if pool is not None:
        self.time_strides.append(pool[1][0])
        self.space_strides.append(pool[1][1])
    self.stages = nnx.List(stages)
    self.stage_names = tuple(VARIANTS[variant])
    self.out_features = features

  def map_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Spatial shape ``(T', H', W')`` of the feature map of a ``frames x height x width`` clip."""

    def pooled(size, strides):
      for stride in strides:
        size = math.ceil(size / stride)  # SAME padding
      return size

    return (
      pooled(frames, self.time_strides),
      pooled(height, self.space_strides),
      pooled(width, self.space_strides),
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """``x``: a float clip batch (see ``layers.to_unit_range``)."""
    x = jax.nn.relu(self.stem_norm(self.stem_conv(x), train=train))
    x = self.ops.max_pool(x, (1, 3, 3), (1, 2, 2))
    for conv in self.conv2:
      x = conv(x)
    x = self.ops.max_pool(x, (1, 3, 3), (1, 2, 2))
    for stage_name, modules in zip(self.stage_names, self.stages):
      pool = STAGES[stage_name][0]
      if pool is not None:
        x = self.ops.max_pool(x, *pool)
      for module in modules:
        x = module(x, train=train)
    return x


class Model(layers.EFModel):
  """I3D regressor: clip batch ``[B, T, H, W, 1]`` (uint8 or [0, 1] floats) -> EF ``[B]`` in %.

  Args:
    variant, conv2, norm, bn_momentum, dtype, ops: see :class:`Body`.
    head: one of ``heads.HEADS``.
    clip_frames, image_size: input clip shape; only the Flatten head ("og") depends on it.
    dropout: head dropout rate (paper: 0.5).
    head_hidden: width of head C's hidden Dense layer.
    ef_offset, ef_scale: the output is ``ef_offset + ef_scale * y`` for the linear output
      ``y`` (``layers.EFModel.to_ef``): a fresh model predicts the mean EF instead of 0.
    dtype: computation dtype (``"float32"`` or ``"bfloat16"``); parameters stay float32.
  """

  def __init__(
    self,
    *,
    variant: str,
    conv2: str,
    norm: str,
    head: str,
    dropout: float,
    head_hidden: int,
    bn_momentum: float,
    ef_offset: float,
    ef_scale: float,
    dtype: str,
    clip_frames: int,
    image_size: int,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    self.dtype = jnp.dtype(dtype)
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    self.body = Body(
      variant=variant,
      conv2=conv2,
      norm=norm,
      bn_momentum=bn_momentum,
      dtype=self.dtype,
      rngs=rngs,
      ops=ops,
    )
    self.head = heads.Head(
      head,
      self.body.out_features,
      self.body.map_shape(clip_frames, image_size, image_size),
      dropout=dropout,
      hidden=head_hidden,
      dtype=self.dtype,
      rngs=rngs,
      ops=ops,
    )

  def features_map(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """The body's ``[B, T', H', W', C]`` features of a clip batch."""
    return self.body(layers.to_unit_range(video, self.dtype), train=train)

  def __call__(
    self, video: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    """Predicts EF (%) for each clip; ``dropout_key`` is required when ``train`` is True."""
    x = self.features_map(video, train=train)
    return self.to_ef(self.head(x, train=train, dropout_key=dropout_key))
