"""Max pooling as the maximum of strided slices, with its gradient by hand: every model's pools.

XLA's ``reduce_window`` computes max pooling, and JAX differentiates it with
``select_and_scatter``. That gradient is slow on both backends the project measures: XLA:CPU
ran it several times slower than the whole forward pass, and XLA's GPU compiler rewrites it into
a ``reduce_window`` that carries a 32-bit index for every axis beside each (float32) value,
followed by a scatter: with them an I3D-mini train step moved 1.83 GB on an H100 in bf16, 1.32 GB
with this form (docs/benchmarks.md, "The GPU program on paper").

Here each spatial axis is one pass: the elementwise maximum of ``k`` (strided) slices of the
input (padded with -inf for SAME padding), which gives ``reduce_window``'s values. Each pass
also finds, for each output, the first of its ``k`` inputs that holds the maximum (one byte),
and the gradient goes there. That is ``reduce_window``'s gradient except where several inputs
tie for a window's maximum across axes: both then give it to one of them, not necessarily the
same one; after a ReLU such ties are zeros, whose gradient the ReLU stops either way.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from lvef_jax.errors import ConfigError

PADDINGS = ("SAME", "VALID")


def max_pool(
  x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str = "SAME"
) -> jax.Array:
  """Max pooling over the spatial axes of a channels-last tensor ``[B, *spatial, C]``, with
  TensorFlow's SAME (pads with -inf) or VALID padding: ``nnx.max_pool``'s values."""
  if padding not in PADDINGS:
    raise ConfigError(f"max pooling padding must be SAME or VALID, got {padding!r}")
  if len(window) != x.ndim - 2 or len(strides) != x.ndim - 2:
    raise ValueError(f"a {x.ndim - 2}-D pool needs {x.ndim - 2} window sizes and strides")
  return _max_pool(x, tuple(window), tuple(strides), padding)


def geometry(size: int, k: int, stride: int, padding: str) -> tuple[int, tuple[int, int]]:
  """Output size and (low, high) padding of one axis for a window ``k`` and a stride
  (TensorFlow's rules: SAME puts the odd padding at the end; VALID drops what no window
  covers)."""
  if padding == "VALID":
    return (size - k) // stride + 1, (0, 0)
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return out, (total // 2, total - total // 2)


def _pool_axes(window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int, int]]:
  """(axis, k, stride) of each spatial axis that the pooling changes."""
  pairs = zip(window, strides)
  return [(a, k, s) for a, (k, s) in enumerate(pairs, start=1) if not k == s == 1]


def _pool_pass(
  x: jax.Array, axis: int, k: int, stride: int, padding: str
) -> tuple[jax.Array, jax.Array]:
  """The maximum along one axis and, for each output, which of its ``k`` inputs held it first."""
  out, pad = geometry(x.shape[axis], k, stride, padding)
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


def _pool_pass_grad(
  grad, first, axis: int, k: int, stride: int, size: int, padding: str
) -> jax.Array:
  """Sends each output's gradient back to the input that held its maximum first."""
  out, (low, high) = geometry(size, k, stride, padding)
  # Padded input position stride * q + r gathers from outputs q - m, for the taps
  # d = r + stride * m. Each residue r is one slot of length ``slots``; interleaving the slots
  # is a reshape (a no-op for stride 1). The outputs q - m are slices of one padded copy of the
  # gradient and of the arg-max bytes: 35-45 % faster for the stride-1 Inception pools than
  # padding each tap's term on its own on the CPU (docs/benchmarks.md). (Scattering with
  # interior padding instead ran 20-30 % slower there for strided pools.) Inputs that no window
  # covers (VALID) get no gradient.
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple, strides: tuple, padding: str) -> jax.Array:
  for axis, k, stride in _pool_axes(window, strides):
    x, _ = _pool_pass(x, axis, k, stride, padding)
  return x


def _max_pool_fwd(x, window, strides, padding):
  return _max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, grad):
  passes = []  # recomputed: cheaper than keeping each pass's output and arg-max
  for axis, k, stride in _pool_axes(window, strides):
    size = x.shape[axis]
    x, first = _pool_pass(x, axis, k, stride, padding)
    passes.append((axis, k, stride, size, first))
  for axis, k, stride, size, first in reversed(passes):
    grad = _pool_pass_grad(grad, first, axis, k, stride, size, padding)
  return (grad,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
