"""The CPU's form of SAME max pooling: the maximum of strided slices, with its gradient by hand.

XLA's ``reduce_window`` computes max pooling, and its gradient (``select_and_scatter``) ran on
XLA's CPU backend several times slower than the whole forward pass (docs/benchmarks.md). Here
each spatial axis is one pass: the elementwise maximum of ``k`` (strided) slices of the input
padded with -inf, which gives ``reduce_window``'s values. Each pass also finds, for each output,
the first of its ``k`` inputs that holds the maximum, and the gradient goes there. That is
``reduce_window``'s gradient except where several inputs tie for a window's maximum across
axes: both then give it to one of them, not necessarily the same one; after a ReLU such ties
are zeros, whose gradient the ReLU stops either way.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.kernels.conv import same_geometry


def max_pool(
  x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str = "SAME"
) -> jax.Array:
  """``lvef_jax.models.layers.max_pool`` in the CPU's form (SAME padding; other paddings are
  XLA's ``reduce_window``)."""
  if padding != "SAME":
    return nnx.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding=padding)
  return _max_pool_same(x, tuple(window), tuple(strides))


def _pool_axes(window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int, int]]:
  """(axis, k, stride) of each spatial axis that the pooling changes."""
  pairs = zip(window, strides)
  return [(a, k, s) for a, (k, s) in enumerate(pairs, start=1) if not k == s == 1]


def _pool_pass(x: jax.Array, axis: int, k: int, stride: int) -> tuple[jax.Array, jax.Array]:
  """The maximum along one axis and, for each output, which of its ``k`` inputs held it first."""
  out, pad = same_geometry(x.shape[axis], k, stride)
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
  out, (low, high) = same_geometry(size, k, stride)
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
