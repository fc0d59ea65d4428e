"""Building blocks shared by the model families: norms, conv-norm-act, pooling, dropout, input.

Every block takes ``train`` explicitly instead of relying on mutable train/eval flags, so the
pure train step in ``lvef_jax.training.steps`` decides the mode in one place. Blocks work on
channels-last tensors with any number of spatial axes: ``[B, T, H, W, C]`` for the 3-D models,
``[N, H, W, C]`` for the per-frame 2-D CNNs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import winograd

# "layer" is the paper's LayerNorm (per sample over every axis but the batch), "layer_channels"
# the per-position reading over channels only (Keras' LayerNormalization() default axis=-1).
NORMS = ("batch", "layer", "layer_channels")
# Keras' epsilon for both BatchNormalization and LayerNormalization, which the paper's models used.
NORM_EPSILON = 1e-3


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
  return jnp.asarray(_host_rng(key).uniform(-limit, limit, size=tuple(shape)), dtype=dtype)


def orthogonal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Keras' recurrent-kernel initialiser (orthogonal), drawn on the host like ``glorot_uniform``."""
  rows, cols = int(np.prod(shape[:-1])), shape[-1]
  if isinstance(key, jax.core.Tracer):
    return jax.nn.initializers.orthogonal()(key, tuple(shape), dtype)
  a = _host_rng(key).normal(size=(max(rows, cols), min(rows, cols)))
  q, r = np.linalg.qr(a)
  q *= np.sign(np.diag(r))  # a uniform draw over orthogonal matrices
  q = q if rows >= cols else q.T
  return jnp.asarray(q.reshape(shape), dtype=dtype)


def _host_rng(key: jax.Array) -> np.random.Generator:
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


KERNEL_INIT = glorot_uniform


def to_unit_range(video: jax.Array, dtype) -> jax.Array:
  """Scales a clip to [0, 1] in ``dtype``.

  The data pipeline ships uint8 clips (4x less host-to-device traffic than float32), so the
  conversion happens on the device. Float inputs are taken to be in [0, 1] already.
  """
  if jnp.issubdtype(video.dtype, jnp.integer):
    return video.astype(dtype) / 255.0
  return video.astype(dtype)


def standardize(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """``(x - mean) / sqrt(var + NORM_EPSILON)`` over ``axes``, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + NORM_EPSILON)


class SampleLayerNorm(nnx.Module):
  """The paper's LayerNorm: "across channels and spatial dimensions on a per-sample basis".

  Mean and variance are taken per example over every axis but the batch (time, height, width
  and channels of a 3-D feature map), computed in float32; the learnt scale and bias are per
  channel, as in every normalisation layer of the paper's framework.
  """

  def __init__(self, features: int, *, dtype, rngs: nnx.Rngs):
    del rngs  # deterministic initialisation: scale 1, bias 0
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = standardize(x, axes=tuple(range(1, x.ndim)))
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class Norm(nnx.Module):
  """BatchNorm or LayerNorm over a channels-last tensor (paper Tables 4, 6, 9, 10).

  ``kind`` is one of ``NORMS``: ``"batch"`` (statistics per channel over the batch and every
  spatial axis; updated when ``train`` is True, frozen otherwise), ``"layer"`` (the paper's
  per-sample LayerNorm, :class:`SampleLayerNorm`) or ``"layer_channels"`` (each position
  normalised over its channels only, kept for comparison: with it I3D-mini does not learn the
  demo data).
  """

  def __init__(
    self,
    features: int,
    kind: str,
    *,
    momentum: float,
    dtype,
    rngs: nnx.Rngs,
  ):
    if kind not in NORMS:
      raise ConfigError(f"norm must be one of {NORMS}, got {kind!r}")
    self.kind = kind
    if kind == "batch":
      self.norm = nnx.BatchNorm(
        features,
        momentum=momentum,
        epsilon=NORM_EPSILON,
        dtype=dtype,
        rngs=rngs,
      )
    elif kind == "layer":
      self.norm = SampleLayerNorm(features, dtype=dtype, rngs=rngs)
    else:
      self.norm = nnx.LayerNorm(features, epsilon=NORM_EPSILON, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.kind == "batch":
      return self.norm(x, use_running_average=not train)
    return self.norm(x)


_PLAIN_CONVOLUTIONS = contextvars.ContextVar("plain_convolutions", default=False)


def cpu_forms() -> bool:
  """Whether models trace the CPU's forms of their convolutions (``Conv``'s 2-D taps and
  Winograd, the I3D stem's folded taps): on the CPU backend, outside
  :func:`plain_convolutions`."""
  return jax.default_backend() == "cpu" and not _PLAIN_CONVOLUTIONS.get()


@contextlib.contextmanager
def plain_convolutions():
  """Within it, models built and traced use XLA's plain convolutions on every backend, as on
  GPUs: the model's own FLOPs, which the bench counts (the CPU's Winograd convolutions do fewer
  multiplications, its taps multiply padded frames too). It acts when a function is traced: a
  jitted function traced before keeps the form it was traced with."""
  token = _PLAIN_CONVOLUTIONS.set(True)
  try:
    yield
  finally:
    _PLAIN_CONVOLUTIONS.reset(token)


class Conv(nnx.Conv):
  """``nnx.Conv`` with faster ways to compute the same convolution on XLA's CPU backend.

  The same parameters and, up to float rounding, the same result (docs/benchmarks.md):
  - a pointwise convolution (all-ones kernel, stride 1) runs as one matmul, everywhere: about
    twice as fast on the CPU, and its gradient too;
  - on the CPU, a float32 3-D convolution with stride 1 and SAME padding on frames of at least
    6x6 whose kernel is 3x3 in height and width (the I3D family's 3x3x3) runs as Winograd
    F(2x2, 3x3) (``lvef_jax.models.winograd``): I3D-mini's train step 13-24 % faster;
  - on the CPU, other such 3-D convolutions run as one 2-D convolution per temporal tap,
    summed: XLA's CPU backend runs 2-D convolutions (and their gradients) 1.5 to 3 times as
    fast as 3-D ones. On GPUs cuDNN's 3-D convolution is kept;
  - on the CPU, the kernel gradient of such 2-D convolutions (the taps, and the 2-D CNNs' own)
    is summed over groups of frames, which YNNPACK's convolutions computed faster (XLA's own,
    which the entry points choose, are as fast either way).
  """

  def _plain(self) -> bool:
    return (
      all(s == 1 for s in np.atleast_1d(self.strides if self.strides is not None else 1))
      and self.feature_group_count == 1
      and self.kernel_dilation in (None, 1)
      and self.input_dilation in (None, 1)
    )

  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    if not self._plain():
      return super().__call__(inputs)
    dtype = self.dtype or inputs.dtype
    x, kernel = inputs.astype(dtype), kernel.astype(dtype)
    if all(k == 1 for k in kernel.shape[:-2]):
      y = jnp.dot(x, kernel.reshape(kernel.shape[-2:]))
    elif self.padding != "SAME" or not cpu_forms():
      return super().__call__(inputs)
    elif (
      kernel.ndim == 5
      and x.shape[-3] * x.shape[-2] >= _WINOGRAD_MIN_FRAME_AREA
      and winograd.applies(kernel.shape, dtype)
    ):
      y = winograd.conv(x, kernel)
    elif kernel.ndim in (4, 5) and x.shape[-3] * x.shape[-2] >= _TAPS_MIN_FRAME_AREA:
      y = _temporal_taps(x, kernel) if kernel.ndim == 5 else _conv2d_same(x, kernel)
    else:
      return super().__call__(inputs)
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


# Below this frame area (H*W) the 2-D taps gain little and their extra operations cost more
# than they save: the demo's 4x4 Inception maps ran slower as taps (8 fake devices, 2 cores).
_TAPS_MIN_FRAME_AREA = 64
# Winograd pays from 6x6 frames: I3D-original's 7x7 Inception maps (the 2x2 tiles cover 8x8)
# made its step 27-30 % faster than XLA's 3-D convolution there (docs/benchmarks.md).
_WINOGRAD_MIN_FRAME_AREA = 36


def _temporal_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A SAME, stride-1 3-D convolution of ``[B, T, H, W, C]`` as a sum over the kernel's
  temporal taps of 2-D convolutions of the (padded, shifted) frames."""
  b, t, h, w, _ = x.shape
  taps = kernel.shape[0]
  low = (taps - 1) // 2  # SAME: the odd one at the end
  padded = jnp.pad(x, [(0, 0), (low, taps - 1 - low), (0, 0), (0, 0), (0, 0)])
  y = None
  for d in range(taps):
    frames = padded[:, d : d + t].reshape(b * t, h, w, x.shape[-1])
    out = _conv2d_same(frames, kernel[d])
    y = out if y is None else y + out
  return y.reshape(b, t, h, w, kernel.shape[-1])


def _conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@jax.custom_vjp
def _conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A SAME, stride-1 2-D convolution ``[N, H, W, C]``; its kernel gradient is computed over
  groups of frames (``_WGRAD_CHUNK``) and summed."""
  return _conv2d(x, kernel)


def _conv2d_same_fwd(x, kernel):
  return _conv2d(x, kernel), (x, kernel)


# The kernel gradient of a 2-D convolution is summed over groups of at most this many frames.
# XLA:CPU computes it as a convolution with the whole frame as its window, and for the I3D-mini
# maps (56 frames of 14x14 or 28x28) that ran 25-45 % faster in groups of 4-14 frames than over
# all frames at once (docs/benchmarks.md). That was with YNNPACK's convolutions; with XLA's own,
# which the entry points choose (lvef_jax/cpu_backend.py), the groups neither help nor hurt.
_WGRAD_CHUNK = 8


def _conv2d_same_bwd(residuals, grad):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _conv2d(x, kernel), x)[1](grad)[0]
  n = x.shape[0]
  parts = next(d for d in range(1, n + 1) if n % d == 0 and n // d <= _WGRAD_CHUNK)
  dk = None
  for xc, gc in zip(jnp.split(x, parts), jnp.split(grad, parts)):
    part = jax.vjp(lambda k: _conv2d(xc, k), kernel)[1](gc)[0]
    dk = part if dk is None else dk + part
  return dx, dk


_conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


def conv(
  in_features: int,
  features: int,
  kernel: Sequence[int],
  *,
  dtype,
  rngs: nnx.Rngs,
  strides: int | Sequence[int] = 1,
  use_bias: bool = True,
  padding="SAME",
) -> nnx.Conv:
  """A Keras-initialised (Glorot-uniform kernel, zero bias) convolution of any dimension."""
  return Conv(
    in_features,
    features,
    tuple(kernel),
    strides=strides,
    padding=padding,
    use_bias=use_bias,
    kernel_init=KERNEL_INIT,
    dtype=dtype,
    rngs=rngs,
  )


def dense(in_features: int, features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """A Keras-initialised dense layer."""
  return nnx.Linear(in_features, features, kernel_init=KERNEL_INIT, dtype=dtype, rngs=rngs)


class ConvNormAct(nnx.Module):
  """Convolution (stride 1, SAME, no bias) -> norm -> ReLU; ``ndim`` spatial axes (default 3)."""

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel: int | Sequence[int],
    *,
    norm: str,
    bn_momentum: float,
    dtype,
    rngs: nnx.Rngs,
    ndim: int = 3,
  ):
    kernel = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    self.conv = conv(in_features, features, kernel, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = Norm(features, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.norm_act(self.conv(x), train=train)

  def norm_act(self, y: jax.Array, *, train: bool) -> jax.Array:
    """The norm and ReLU that follow the convolution."""
    return jax.nn.relu(self.norm(y, train=train))


def pointwise_norm_act(blocks: Sequence[ConvNormAct], x: jax.Array, *, train: bool) -> list:
  """``[block(x, train=train) for block in blocks]`` for :class:`ConvNormAct` blocks whose
  convolutions are pointwise (1x1 or 1x1x1, no bias), their kernels side by side in one matmul:
  one pass over ``x`` instead of one per block, forward and backward (docs/benchmarks.md)."""
  dtype = blocks[0].conv.dtype or x.dtype
  kernels = []
  for block in blocks:
    kernel = block.conv.kernel[...]
    if any(k != 1 for k in kernel.shape[:-2]) or block.conv.bias is not None:
      raise ValueError(f"not a pointwise convolution without bias: kernel {kernel.shape}")
    kernels.append(kernel.reshape(kernel.shape[-2:]).astype(dtype))
  y = jnp.dot(x.astype(dtype), jnp.concatenate(kernels, axis=-1))
  parts = jnp.split(y, np.cumsum([k.shape[-1] for k in kernels])[:-1], axis=-1)
  return [block.norm_act(part, train=train) for block, part in zip(blocks, parts)]


def max_pool(
  x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str = "SAME"
) -> jax.Array:
  """TF-style max pooling over the spatial axes of a channels-last tensor.

  SAME pooling runs one spatial axis at a time, each as the elementwise maximum of ``k``
  (strided) slices of the input padded with -inf: the same values as XLA's ``reduce_window``,
  whose gradient (``select_and_scatter``) XLA's CPU backend runs several times slower than the
  whole forward pass (measured in docs/benchmarks.md). The gradient is computed by hand
  (``_max_pool_same``): each axis's pass finds, for each output, the first of its ``k`` inputs
  that holds the maximum, and the gradient goes there. That is ``reduce_window``'s gradient
  except where several inputs tie for a window's maximum across axes: both then give it to one
  of them, not necessarily the same one; after a ReLU such ties are zeros, whose gradient the
  ReLU stops either way.
  """
  if padding != "SAME":
    return nnx.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding=padding)
  return _max_pool_same(x, tuple(window), tuple(strides))


def _pool_axes(window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int, int]]:
  """(axis, k, stride) of each spatial axis that the pooling changes."""
  pairs = zip(window, strides)
  return [(a, k, s) for a, (k, s) in enumerate(pairs, start=1) if not k == s == 1]


def _same_geometry(size: int, k: int, stride: int) -> tuple[int, tuple[int, int]]:
  """Output size and SAME padding of one axis, for a window ``k`` and a stride."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return out, (total // 2, total - total // 2)  # SAME: the odd one at the end


def _pool_pass(x: jax.Array, axis: int, k: int, stride: int) -> tuple[jax.Array, jax.Array]:
  """The maximum along one axis and, for each output, which of its ``k`` inputs held it first."""
  out, pad = _same_geometry(x.shape[axis], k, stride)
  pads = [(0, 0)] * x.ndim
  pads[axis] = pad
  padded = jnp.pad(x, pads, constant_values=-jnp.inf)
  best = first = None
  for d in range(k):
    tap = jax.lax.slice_in_dim(padded, d, d + stride * (out - 1) + 1, stride, axis)
    if best is None:
      best, first = tap, jnp.zeros(tap.shape, jnp.int8)
    else:
      larger = tap > best
      best, first = jnp.where(larger, tap, best), jnp.where(larger, jnp.int8(d), first)
  return best, first


def _pool_pass_grad(grad, first, axis: int, k: int, stride: int, size: int) -> jax.Array:
  """Sends each output's gradient back to the input that held its maximum first."""
  out, (low, high) = _same_geometry(size, k, stride)
  # Padded input position stride * q + r gathers from outputs q - m, for the taps
  # d = r + stride * m. Each residue r is one slot of length ``slots``; interleaving the slots
  # is a reshape (a no-op for stride 1). The outputs q - m are slices of one padded copy of the
  # gradient and of the arg-max bytes: 35-45 % faster for the stride-1 Inception pools than
  # padding each tap's term on its own (docs/benchmarks.md). (Scattering with interior padding
  # instead ran 20-30 % slower for strided pools.)
  slots = -(-(size + low + high) // stride)
  before = (k - 1) // stride  # the largest m
  pads = [(0, 0)] * grad.ndim
  pads[axis] = (before, slots - out)
  grad_padded = jnp.pad(grad, pads)
  first_padded = jnp.pad(first, pads, constant_values=-1)
  residues = []
  for r in range(stride):
    # A residue no tap reaches (a window smaller than its stride) gets no gradient.
    total = jnp.zeros((*grad.shape[:axis], slots, *grad.shape[axis + 1 :]), grad.dtype)
    for d in range(r, k, stride):
      start = before - (d - r) // stride
      g = jax.lax.slice_in_dim(grad_padded, start, start + slots, 1, axis)
      f = jax.lax.slice_in_dim(first_padded, start, start + slots, 1, axis)
      total = total + jnp.where(f == d, g, 0)
    residues.append(total)
  interleaved = jnp.stack(residues, axis=axis + 1)
  interleaved = interleaved.reshape(*grad.shape[:axis], slots * stride, *grad.shape[axis + 1 :])
  return jax.lax.slice_in_dim(interleaved, low, low + size, 1, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_same(x: jax.Array, window: tuple, strides: tuple) -> jax.Array:
  for axis, k, stride in _pool_axes(window, strides):
    x, _ = _pool_pass(x, axis, k, stride)
  return x


def _max_pool_same_fwd(x, window, strides):
  return _max_pool_same(x, window, strides), x


def _max_pool_same_bwd(window, strides, x, grad):
  passes = []  # recomputed: cheaper than keeping each pass's output and arg-max
  for axis, k, stride in _pool_axes(window, strides):
    size = x.shape[axis]
    x, first = _pool_pass(x, axis, k, stride)
    passes.append((axis, k, stride, size, first))
  for axis, k, stride, size, first in reversed(passes):
    grad = _pool_pass_grad(grad, first, axis, k, stride, size)
  return (grad,)


_max_pool_same.defvjp(_max_pool_same_fwd, _max_pool_same_bwd)


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean over every axis between batch and channels."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def dropout(x: jax.Array, rate: float, *, train: bool, key: jax.Array | None) -> jax.Array:
  """Inverted dropout (as Keras): active when ``key`` is given.

  Training always passes a key (``train`` without one is an error). Inference passes none,
  except Monte-Carlo dropout, which samples the dropout layers with BatchNorm in inference mode
  (``train=False`` with a key).
  """
  if train and key is None:
    raise ValueError("dropout in training mode needs a dropout_key")
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def dropout_keys(key: jax.Array | None, count: int) -> list:
  """``count`` independent dropout keys from ``key``; ``None`` for each in inference."""
  return list(jax.random.split(key, count)) if key is not None else [None] * count


def conv_im2col(x: jax.Array, conv_layer: nnx.Conv, strides: Sequence[int]) -> jax.Array:
  """Applies ``conv_layer`` (a SAME-padded ``nnx.Conv``, 2-D or 3-D) with ``strides`` as one
  2-D XLA convolution, a 3-D kernel's temporal taps folded into the input channels
  (``_conv_taps_in_channels``).

  Exactly the convolution ``conv_layer(x)`` computes, with the same parameters, up to float
  rounding. It is the CPU's way to run the I3D stem (``stem_impl=im2col`` in the I3D body; on
  GPUs cuDNN's 3-D convolution is the better choice). XLA:CPU's 3-D convolution of the stem's
  single input channel is slow; folded, the 7x7 stride-2 convolution has 7 channels, and with
  XLA's own convolutions (``lvef_jax/cpu_backend.py``) its forward and kernel gradient took
  86 ms: 132 ms with the kernel gradient as patches and matmuls (im2col, which gave the option
  its name), and about 0.9 s as a 3-D convolution (docs/benchmarks.md).
  """
  kernel = conv_layer.kernel[...].astype(x.dtype)
  y = _conv_taps_in_channels(x, kernel, tuple(int(s) for s in strides))
  if conv_layer.bias is not None:
    y = y + conv_layer.bias[...].astype(y.dtype)
  return y


def _same_pads(x_shape: Sequence[int], window: Sequence[int], strides: Sequence[int]):
  """SAME padding and output size of each spatial axis of a ``[B, *spatial, C]`` input."""
  geometry = [_same_geometry(*axis) for axis in zip(x_shape[1:-1], window, strides)]
  return [pad for _, pad in geometry], [out for out, _ in geometry]


def _conv_taps_in_channels(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """A strided SAME convolution (2-D or 3-D) as one 2-D XLA convolution, a 3-D kernel's
  temporal taps folded into the input channels: each output frame reads its ``k_t`` input
  frames side by side. Its gradients are XLA's own."""
  pads, outs = _same_pads(x.shape, kernel.shape[:-2], strides)
  folded = kernel.ndim == 5
  if folded:
    taps, stride = kernel.shape[0], strides[0]
    xp = jnp.pad(x, [(0, 0), pads[0], (0, 0), (0, 0), (0, 0)])
    views = [
      jax.lax.slice_in_dim(xp, d, d + stride * (outs[0] - 1) + 1, stride, 1) for d in range(taps)
    ]
    x = jnp.concatenate(views, axis=-1)  # [B, T_out, H, W, taps * C], features (d, c)
    x = x.reshape(-1, *x.shape[2:])
    kernel = jnp.moveaxis(kernel, 0, 2).reshape(*kernel.shape[1:3], -1, kernel.shape[-1])
    pads, strides = pads[1:], strides[1:]
  y = jax.lax.conv_general_dilated(
    x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return y.reshape(-1, outs[0], *y.shape[1:]) if folded else y


class EFModel(nnx.Module):
  """What the train step may ask of any model family, with the defaults most families use.

  Subclasses implement ``__call__(video, *, train=False, dropout_key=None) -> EF [B]`` and
  set ``ef_offset`` and ``ef_scale`` (shared config keys) for :meth:`to_ef`.
  """

  def to_ef(self, y: jax.Array) -> jax.Array:
    """EF (%) from the linear output ``y``: ``ef_offset + ef_scale * y``, in float32.

    The offset (the mean EF by default) makes a fresh model predict the mean instead of 0. The
    scale (1 by default, as in the paper) multiplies the output layer's effective step size;
    12.4, the EF standard deviation, made the demo's validation error jump between epochs.
    """
    return self.ef_offset + self.ef_scale * y.astype(jnp.float32)

  def regularization_loss(self) -> jax.Array:
    """A loss term added to the MSE in training (L1/L2 kernel penalties); none by default."""
    return jnp.zeros((), jnp.float32)

  def trainable(self, path: tuple) -> bool:
    """Whether the parameter at ``path`` (keys as in ``nnx.to_flat_state``) trains."""
    del path
    return True
