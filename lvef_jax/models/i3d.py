"""The paper's I3D family (I3D-original, I3D-mini and the module ablations), layer for layer.

See ``../shared/SPEC.md`` ("I3D ... layer for layer"). The variants are the paper's Table 1
ablation, ``conv2`` its Table 3 kernel study, ``head`` its Table 2 heads and ``norm`` the
BatchNorm/LayerNorm comparison of Tables 4, 6, 9 and 10.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

# (b1, b2_reduce, b2, b3_reduce, b3, pool_proj) per Inception module.
INCEPTION_WIDTHS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# Each Inception stage: (pooling window, pooling stride) applied before it, then its modules.
STAGES = {
    "im3": (None, ("3a", "3b")),
    "im4": (((3, 3, 3), (2, 2, 2)), ("4a", "4b", "4c", "4d", "4e")),
    "im5": (((2, 3, 3), (2, 2, 2)), ("5a", "5b")),
}
VARIANTS = {
    "original": ("im3", "im4", "im5"),
    "mini": ("im3",),
    "stem": (),
    "stem_im3_im4": ("im3", "im4"),
}
CONV2_KERNELS = {
    "1x1x1": ((1, 1, 1),),
    "3x3x3": ((3, 3, 3),),
    "3x1x1": ((3, 1, 1),),
    "2x3x3x3": ((3, 3, 3), (3, 3, 3)),
}
HEADS = ("og", "a", "b", "c")
STEM_IMPLS = ("auto", "conv", "im2col")
STEM_FEATURES, CONV2_FEATURES = 64, 192


class Inception(nnx.Module):
  """Inception-v1 module inflated to 3D, with the 5x5 branch as two 3x3x3 convs."""

  def __init__(self, in_features: int, widths: Sequence[int], **conv_kwargs):
    b1, b2_reduce, b2, b3_reduce, b3, pool_proj = widths
    self.branch1 = layers.ConvNormAct(in_features, b1, 1, **conv_kwargs)
    self.branch2 = nnx.List([layers.ConvNormAct(in_features, b2_reduce, 1, **conv_kwargs),
                             layers.ConvNormAct(b2_reduce, b2, 3, **conv_kwargs)])
    self.branch3 = nnx.List([layers.ConvNormAct(in_features, b3_reduce, 1, **conv_kwargs),
                             layers.ConvNormAct(b3_reduce, b3, 3, **conv_kwargs),
                             layers.ConvNormAct(b3, b3, 3, **conv_kwargs)])
    self.branch4 = layers.ConvNormAct(in_features, pool_proj, 1, **conv_kwargs)
    self.out_features = b1 + b2 + b3 + pool_proj

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y2, y3 = x, x
    for block in self.branch2:
      y2 = block(y2, train=train)
    for block in self.branch3:
      y3 = block(y3, train=train)
    y4 = self.branch4(layers.max_pool(x, (3, 3, 3), (1, 1, 1)), train=train)
    return jnp.concatenate([self.branch1(x, train=train), y2, y3, y4], axis=-1)


def _pooled_size(size: int, strides: Sequence[int]) -> int:
  for stride in strides:
    size = math.ceil(size / stride)  # SAME padding
  return size


class Model(nnx.Module):
  """I3D regressor: clip batch ``[B, T, H, W, 1]`` (uint8 or [0, 1] floats) -> EF ``[B]`` in %.

  Args:
    variant: one of ``VARIANTS`` (which Inception stages follow the stem).
    conv2: one of ``CONV2_KERNELS``, the kernel of the stem's second convolution.
    norm: ``"batch"`` or ``"layer"``.
    head: ``"og"`` (Dropout-Flatten-Dense), ``"a"`` (GAP-Dropout-Dense),
      ``"b"`` (Dropout-Conv1x1x1-GAP) or ``"c"`` (GAP-Dense-Dropout-Dense).
    clip_frames, image_size: input clip shape; only the Flatten head ("og") depends on it.
    dropout: head dropout rate (paper: 0.5).
    head_hidden: width of head C's hidden Dense layer.
    bn_momentum: BatchNorm running-average momentum.
    ef_offset, ef_scale: the output is ``ef_offset + ef_scale * y`` for the linear output ``y``.
      The offset (EchoNet-Dynamic's mean EF) makes a fresh model predict the mean instead of 0;
      the scale multiplies the last layer's effective learning rate, so it stays 1 as in the
      paper (12.4, the EF SD, made validation error jump between epochs on the demo).
    dtype: computation dtype (``"float32"`` or ``"bfloat16"``); parameters stay float32.
    stem_impl: how the 7x7x7 stem convolution runs: ``"conv"`` (XLA convolution),
      ``"im2col"`` (patches + matmul, same result, several times faster on CPUs) or ``"auto"``
      (im2col on the CPU backend, conv elsewhere).
  """

  def __init__(self, *, variant: str = "mini", conv2: str = "1x1x1", norm: str = "batch",
               head: str = "a", clip_frames: int = 28, image_size: int = 112,
               dropout: float = 0.5, head_hidden: int = 256, bn_momentum: float = 0.9,
               ef_offset: float = 55.7, ef_scale: float = 1.0, dtype: str = "float32",
               stem_impl: str = "auto", rngs: nnx.Rngs):
    for name, value, allowed in (("variant", variant, VARIANTS), ("conv2", conv2, CONV2_KERNELS),
                                 ("head", head, HEADS)):
      if value not in allowed:
        raise ConfigError(f"I3D {name} must be one of {sorted(allowed)}, got {value!r}")
    if stem_impl not in STEM_IMPLS:
      raise ConfigError(f"I3D stem_impl must be one of {STEM_IMPLS}, got {stem_impl!r}")
    if stem_impl == "auto":
      stem_impl = "im2col" if jax.default_backend() == "cpu" else "conv"
    self.stem_impl = stem_impl
    self.dtype = jnp.dtype(dtype)
    self.head = head
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    conv_kwargs = dict(norm=norm, bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs)

    self.stem_conv = nnx.Conv(1, STEM_FEATURES, (7, 7, 7), strides=2, padding="SAME",
                              use_bias=True, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)
    self.stem_norm = layers.Norm(STEM_FEATURES, norm, momentum=bn_momentum, dtype=self.dtype,
                                 rngs=rngs)
    conv2_layers, features = [], STEM_FEATURES
    for kernel in CONV2_KERNELS[conv2]:
      # No norm and no activation after conv2: as in the adapted Keras code.
      conv2_layers.append(nnx.Conv(features, CONV2_FEATURES, kernel, padding="SAME",
                                   use_bias=True, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs))
      features = CONV2_FEATURES
    self.conv2 = nnx.List(conv2_layers)

    time_strides, space_strides = [2, 1, 1], [2, 2, 2]
    stages = []
    for stage in VARIANTS[variant]:
      pool, names = STAGES[stage]
      modules = []
      for name in names:
        modules.append(Inception(features, INCEPTION_WIDTHS[name], **conv_kwargs))
        features = modules[-1].out_features
      stages.append(nnx.List(modules))
      if pool is not None:
        time_strides.append(pool[1][0])
        space_strides.append(pool[1][1])
    self.stages = nnx.List(stages)
    self.stage_names = tuple(VARIANTS[variant])
    self.features = features

    self.dropout = nnx.Dropout(dropout)
    if head == "og":
      flat = (_pooled_size(clip_frames, time_strides) * _pooled_size(image_size, space_strides) ** 2
              * features)
      self.out = nnx.Linear(flat, 1, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)
    elif head == "a":
      self.out = nnx.Linear(features, 1, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)
    elif head == "b":
      self.out = nnx.Conv(features, 1, (1, 1, 1), kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)
    else:
      self.hidden = nnx.Linear(features, head_hidden, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)
      self.out = nnx.Linear(head_hidden, 1, kernel_init=layers.KERNEL_INIT,
                              dtype=self.dtype, rngs=rngs)

  def features_map(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """The body: stem, conv2 and Inception stages; ``[B, T', H', W', C]`` features."""
    x = layers.to_unit_range(video, self.dtype)
    if self.stem_impl == "im2col":
      x = layers.conv_im2col(x, self.stem_conv, (2, 2, 2))
    else:
      x = self.stem_conv(x)
    x = jax.nn.relu(self.stem_norm(x, train=train))
    x = layers.max_pool(x, (1, 3, 3), (1, 2, 2))
    for conv in self.conv2:
      x = conv(x)
    x = layers.max_pool(x, (1, 3, 3), (1, 2, 2))
    for stage_name, modules in zip(self.stage_names, self.stages):
      pool = STAGES[stage_name][0]
      if pool is not None:
        x = layers.max_pool(x, *pool)
      for module in modules:
        x = module(x, train=train)
    return x

  def __call__(self, video: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Predicts EF (%) for each clip; ``dropout_key`` is required when ``train`` is True."""
    x = self.features_map(video, train=train)
    drop = lambda h: self.dropout(h, deterministic=not train, rngs=dropout_key)  # noqa: E731
    if self.head == "og":
      y = self.out(drop(x.reshape(x.shape[0], -1)))
    elif self.head == "a":
      y = self.out(drop(layers.global_average_pool(x)))
    elif self.head == "b":
      y = layers.global_average_pool(self.out(drop(x)))
    else:
      y = self.out(drop(jax.nn.relu(self.hidden(layers.global_average_pool(x)))))
    return self.ef_offset + self.ef_scale * y[:, 0].astype(jnp.float32)
