"""Building blocks shared by the model families: norms, conv-norm-act, input scaling, pooling.

Every block takes ``train`` explicitly instead of relying on mutable train/eval flags, so the
pure train step in ``lvef_jax.training.steps`` decides the mode in one place.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError

NORMS = ("batch", "layer")


def glorot_uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Keras' default kernel initialiser (the paper's code used it), drawn on the host.

  Same distribution as ``jax.nn.initializers.glorot_uniform()``, but XLA's CPU backend spends
  ~0.5 s compiling a random-number program for every parameter shape (~20 s for I3D-mini);
  numpy, seeded from ``key``, takes milliseconds. Deterministic given ``key``. Under a
  transformation (``jit``, ``eval_shape``) it draws with ``jax.random`` instead.
  """
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  if isinstance(key, jax.core.Tracer):
    return jax.random.uniform(key, tuple(shape), dtype, -limit, limit)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return jnp.asarray(rng.uniform(-limit, limit, size=tuple(shape)), dtype=dtype)


KERNEL_INIT = glorot_uniform


def to_unit_range(video: jax.Array, dtype) -> jax.Array:
  """Scales a clip to [0, 1] in ``dtype``.

  The data pipeline ships uint8 clips (4x less host-to-device traffic than float32), so the
  conversion happens on the device. Float inputs are taken to be in [0, 1] already.
  """
  if jnp.issubdtype(video.dtype, jnp.integer):
    return video.astype(dtype) / 255.0
  return video.astype(dtype)


class Norm(nnx.Module):
  """BatchNorm or LayerNorm over the channel axis (paper Tables 4, 6, 9, 10).

  BatchNorm statistics are updated when ``train`` is True and frozen otherwise. The LayerNorm
  normalises each position over channels, as Keras' ``LayerNormalization()`` (axis=-1) does in
  the code the paper adapted.
  """

  def __init__(self, features: int, kind: str, *, momentum: float, dtype, rngs: nnx.Rngs):
    if kind not in NORMS:
      raise ConfigError(f"norm must be one of {NORMS}, got {kind!r}")
    self.kind = kind
    if kind == "batch":
      # epsilon 1e-3 as in Keras' BatchNormalization, which the paper's models used.
      self.norm = nnx.BatchNorm(features, momentum=momentum, epsilon=1e-3, dtype=dtype, rngs=rngs)
    else:
      self.norm = nnx.LayerNorm(features, epsilon=1e-3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.kind == "batch":
      return self.norm(x, use_running_average=not train)
    return self.norm(x)


class ConvNormAct(nnx.Module):
  """``ConvBN(f, k)`` of SPEC.md: Conv3D (stride 1, SAME, no bias) -> norm -> ReLU."""

  def __init__(self, in_features: int, features: int, kernel: int | Sequence[int], *, norm: str,
               bn_momentum: float, dtype, rngs: nnx.Rngs):
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    self.conv = nnx.Conv(in_features, features, kernel, padding="SAME", use_bias=False,
                         kernel_init=KERNEL_INIT, dtype=dtype, rngs=rngs)
    self.norm = Norm(features, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x), train=train))


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
  """TF-style SAME max pooling over (time, height, width) of a ``[B, T, H, W, C]`` tensor."""
  return nnx.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding="SAME")


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean over every axis between batch and channels."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def conv_im2col(x: jax.Array, conv: nnx.Conv, strides: Sequence[int]) -> jax.Array:
  """Applies ``conv`` (a 3-D, SAME-padded ``nnx.Conv``) as patch extraction plus one matmul.

  Exactly the convolution ``conv(x)`` computes, with the same parameters. XLA's CPU backend runs
  convolutions with one input channel (the I3D stem) at a small fraction of its matmul speed,
  and gathering the patches is cheap because the input has a single channel; on GPUs the
  cuDNN convolution is the better choice (see ``stem_impl`` in ``i3d.Model``).
  """
  kernel = conv.kernel[...].astype(x.dtype)
  window = kernel.shape[:3]
  pads, outs = [(0, 0)], []
  for size, k, stride in zip(x.shape[1:4], window, strides):
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    pads.append((total // 2, total - total // 2))  # SAME puts the odd pixel at the end, as XLA
    outs.append(out)
  x = jnp.pad(x, pads + [(0, 0)])
  # Gather one axis at a time, innermost (W) first, so that the features end up ordered
  # (dt, dh, dw, c_in) like the kernel's (T, H, W, I, O) layout: 21 slices instead of 343.
  for axis in (3, 2, 1):
    k, stride, out = window[axis - 1], strides[axis - 1], outs[axis - 1]
    x = jnp.concatenate([jax.lax.slice_in_dim(x, d, d + stride * (out - 1) + 1, stride, axis)
                         for d in range(k)], axis=-1)
  y = x @ kernel.reshape(-1, kernel.shape[-1])
  if conv.bias is not None:
    y = y + conv.bias[...].astype(y.dtype)
  return y
