"""The CPU's forms of the models' convolutions: the same parameters and, up to float rounding,
the same results as ``nnx.Conv``, in the shapes XLA's CPU backend runs fastest.

:class:`Conv` is constructed as ``nnx.Conv`` is and picks, from the kernel and input shapes,
one form for each call (:func:`form`):

- ``matmul``: a pointwise convolution (all-ones kernel, stride 1) as one matmul: about twice
  as fast on the CPU as XLA's convolution, and its gradient too;
- ``winograd``: a float32 3-D convolution with stride 1 and SAME padding on frames of at least
  6x6 whose kernel is 3x3 in height and width (the I3D family's 3x3x3) as Winograd F(2x2, 3x3)
  (``lvef_jax.kernels.winograd``): I3D-mini's train step 13-24 % faster;
- ``taps``: another stride-1 SAME 3-D convolution on frames of at least 8x8 as one 2-D
  convolution per temporal tap, summed: XLA's CPU backend runs 2-D convolutions (and their
  gradients) 1.5 to 3 times as fast as 3-D ones;
- ``folded``: a strided SAME 3-D convolution (the I3D stem's 7x7x7, stride 2) as one 2-D
  convolution whose input channels are the kernel's temporal taps side by side: 86 ms for the
  stem's forward and kernel gradient against about 0.9 s as XLA's 3-D convolution;
- ``xla``: everything else, ``nnx.Conv`` itself.

docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.kernels import winograd
from lvef_jax.models import pooling

# Below this frame area (H*W) the 2-D taps gain little and their extra operations cost more
# than they save: the demo's 4x4 Inception maps ran slower as taps (8 fake devices, 2 cores).
TAPS_MIN_FRAME_AREA = 64
# Winograd pays from 6x6 frames: I3D-original's 7x7 Inception maps (the 2x2 tiles cover 8x8)
# made its step 27-30 % faster than XLA's 3-D convolution there (docs/benchmarks.md).
WINOGRAD_MIN_FRAME_AREA = 36
FORMS = ("matmul", "winograd", "taps", "folded", "xla")


def _per_axis(value, ndim: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * ndim
  return tuple(int(v) for v in np.broadcast_to(value, (ndim,)))


def form(layer: nnx.Conv, input_shape: Sequence[int], dtype) -> str:
  """Which of ``FORMS`` :class:`Conv` computes ``layer`` (an ``nnx.Conv``) in for an input of
  ``input_shape`` in ``dtype``."""
  kernel_shape = layer.kernel.shape
  spatial = len(kernel_shape) - 2
  if (
    spatial not in (2, 3)
    or layer.feature_group_count != 1
    or any(d != 1 for d in _per_axis(layer.kernel_dilation, spatial))
    or any(d != 1 for d in _per_axis(layer.input_dilation, spatial))
    or layer.padding not in ("SAME", "VALID")
  ):
    return "xla"
  strides = _per_axis(layer.strides, spatial)
  if all(s == 1 for s in strides) and all(k == 1 for k in kernel_shape[:-2]):
    return "matmul"  # SAME and VALID are the same for a 1x1 kernel
  if layer.padding != "SAME" or spatial != 3:
    return "xla"
  if any(s != 1 for s in strides):
    return "folded"
  frame_area = input_shape[-3] * input_shape[-2]
  if frame_area >= WINOGRAD_MIN_FRAME_AREA and winograd.applies(kernel_shape, dtype):
    return "winograd"
  if frame_area >= TAPS_MIN_FRAME_AREA:
    return "taps"
  return "xla"


class Conv(nnx.Conv):
  """``nnx.Conv`` computed in the CPU's fastest form for each call (see the module docstring)."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    dtype = self.dtype or inputs.dtype
    chosen = form(self, inputs.shape, dtype)
    if chosen == "xla":
      return super().__call__(inputs)
    x, kernel = inputs.astype(dtype), self.kernel[...].astype(dtype)
    if chosen == "matmul":
      y = jnp.dot(x, kernel.reshape(kernel.shape[-2:]))
    elif chosen == "winograd":
      y = winograd.conv(x, kernel)
    elif chosen == "taps":
      y = temporal_taps(x, kernel)
    else:
      y = taps_in_channels(x, kernel, _per_axis(self.strides, kernel.ndim - 2))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


def each_conv(convs: Sequence[nnx.Conv], x: jax.Array) -> list[jax.Array]:
  """``[conv(x) for conv in convs]``, with the pointwise convolutions without bias among them
  (an Inception module's three branch heads) as one matmul of their kernels side by side: one
  pass over ``x`` instead of one per convolution, forward and backward (docs/benchmarks.md).
  Any other convolution runs on its own."""
  outputs: list = [None] * len(convs)
  fused = [
    i
    for i, conv in enumerate(convs)
    if conv.bias is None and form(conv, x.shape, conv.dtype or x.dtype) == "matmul"
  ]
  if len({convs[i].dtype or x.dtype for i in fused}) > 1:
    fused = []  # the kernels of one matmul share its dtype
  if len(fused) > 1:
    dtype = convs[fused[0]].dtype or x.dtype
    kernels = [convs[i].kernel[...] for i in fused]
    kernels = [k.reshape(k.shape[-2:]).astype(dtype) for k in kernels]
    y = jnp.dot(x.astype(dtype), jnp.concatenate(kernels, axis=-1))
    parts = jnp.split(y, np.cumsum([k.shape[-1] for k in kernels])[:-1], axis=-1)
    for i, part in zip(fused, parts):
      outputs[i] = part
  for i, conv in enumerate(convs):
    if outputs[i] is None:
      outputs[i] = conv(x)
  return outputs


def temporal_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A SAME, stride-1 3-D convolution of ``[B, T, H, W, C]`` as a sum over the kernel's
  temporal taps of 2-D convolutions of the (padded, shifted) frames."""
  b, t, h, w, _ = x.shape
  taps = kernel.shape[0]
  low = (taps - 1) // 2  # SAME: the odd one at the end
  padded = jnp.pad(x, [(0, 0), (low, taps - 1 - low), (0, 0), (0, 0), (0, 0)])
  y = None
  for d in range(taps):
    frames = padded[:, d : d + t].reshape(b * t, h, w, x.shape[-1])
    out = jax.lax.conv_general_dilated(
      frames, kernel[d], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = out if y is None else y + out
  return y.reshape(b, t, h, w, kernel.shape[-1])


def same_geometry(size: int, k: int, stride: int) -> tuple[int, tuple[int, int]]:
  """Output size and SAME padding of one axis, for a window ``k`` and a stride (TF's rule)."""
  return pooling.geometry(size, k, stride, "SAME")


def taps_in_channels(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """A strided SAME 3-D convolution of ``[B, T, H, W, C]`` as one 2-D XLA convolution: each
  output frame reads its ``k_t`` input frames side by side on the channels. Its gradients are
  XLA's own."""
  geometry = [same_geometry(*axis) for axis in zip(x.shape[1:-1], kernel.shape[:-2], strides)]
  (frames_out, time_pad), space_pads = geometry[0], [pad for _, pad in geometry[1:]]
  taps, stride = kernel.shape[0], strides[0]
  xp = jnp.pad(x, [(0, 0), time_pad, (0, 0), (0, 0), (0, 0)])
  views = [
    jax.lax.slice_in_dim(xp, d, d + stride * (frames_out - 1) + 1, stride, 1) for d in range(taps)
  ]
  folded = jnp.concatenate(views, axis=-1)  # [B, T_out, H, W, taps * C], features (d, c)
  folded = folded.reshape(-1, *folded.shape[2:])
  kernel = jnp.moveaxis(kernel, 0, 2).reshape(*kernel.shape[1:3], -1, kernel.shape[-1])
  y = jax.lax.conv_general_dilated(
    folded, kernel, strides[1:], space_pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return y.reshape(-1, frames_out, *y.shape[1:])
