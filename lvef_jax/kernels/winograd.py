"""Winograd F(2x2, 3x3) convolutions, the CPU's form of the 3x3(x3) convolutions.

A SAME, stride-1 convolution whose kernel is 3x3 in height and width (2-D, or 3-D with an odd
number of temporal taps) is computed on 2x2 output tiles: each tile's 4x4 input patch and the
kernel go through fixed linear transforms, the 16 transformed positions are 16 independent
matmuls (the temporal taps folded into their inner dimension), and a third transform gives the
outputs. That takes 2.25 times fewer multiplications than the direct convolution; the
transforms only add and halve, and the result matches XLA's convolution to about 1e-6
relative in float32.

On XLA's CPU backend, whose convolutions ran at about three quarters of oneDNN's speed on
I3D-mini's shapes, it made the Inception modules' 3x3x3 convolutions (forward and both
gradients) faster, the two largest by 35-48 %, and I3D-mini's train step 13-24 % faster
(docs/benchmarks.md). The gradients are written by hand: XLA's own gradient of the transforms
padded 16 full-size copies and transposed the large operand of each kernel-gradient matmul,
which made the step slower than without Winograd. ``lvef_jax.kernels.conv`` uses it for 3-D
convolutions only: for the 2-D CNNs' 3x3 convolutions it gained 2-7 % of the CNN-RNN's step for
5.5 s more compilation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

# The F(2x2, 3x3) transforms: input B^T (4x4), kernel G (4x3), output A^T (2x4).
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def applies(kernel_shape: Sequence[int], dtype) -> bool:
  """Whether :func:`conv` computes a convolution with this kernel (``[3, 3, C, O]`` or
  ``[k_t, 3, 3, C, O]`` with odd ``k_t``) in this dtype (float32 only: the transforms' rounding
  is larger in bfloat16)."""
  spatial = tuple(kernel_shape[:-2])
  if jnp.dtype(dtype) != jnp.float32 or len(spatial) not in (2, 3) or spatial[-2:] != (3, 3):
    return False
  return len(spatial) == 2 or spatial[0] % 2 == 1


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The SAME, stride-1 convolution of ``x`` (``[N, H, W, C]`` or ``[B, T, H, W, C]``) with
  ``kernel`` (``[3, 3, C, O]`` or ``[k_t, 3, 3, C, O]``, see :func:`applies`), no bias."""
  if x.ndim == 4:
    return _winograd(x[:, None], kernel[None], 1)[:, 0]
  return _winograd(x, kernel, kernel.shape[0])


def _combine(terms: Sequence[jax.Array], coefficients: Sequence[float]) -> jax.Array:
  """``sum(c * t)``, skipping zero coefficients and multiplying only where ``|c| != 1``."""
  total = None
  for c, term in zip(coefficients, terms):
    if c == 0:
      continue
    term = term if c == 1 else (-term if c == -1 else c * term)
    total = term if total is None else total + term
  return total


def _strided(x: jax.Array, start: int, count: int, axis: int) -> jax.Array:
  return jax.lax.slice_in_dim(x, start, start + 2 * (count - 1) + 1, 2, axis)


def _input_transform(xp: jax.Array, tiles_h: int, tiles_w: int) -> list:
  """``B^T d B`` of every 4x4 patch (stride 2) of ``xp`` ``[B, T, 2th + 2, 2tw + 2, C]``: 16
  arrays ``[B, T, th, tw, C]``, position ``4 * i + j``."""
  rows = [_strided(xp, a, tiles_h, 2) for a in range(4)]
  out = []
  for i in range(4):
    u = _combine(rows, _BT[i])
    cols = [_strided(u, b, tiles_w, 3) for b in range(4)]
    out.extend(_combine(cols, _BT[j]) for j in range(4))
  return out


def _interleave_pairs(low: Sequence[jax.Array], high: Sequence[jax.Array], axis: int):
  """The transpose of taking 4 stride-2 slices starting at 0..3 along ``axis``: padded position
  ``2q + r`` gets ``low[r][q] + high[r][q - 1]`` (the slices starting at r and r + 2)."""
  parities = []
  for r in range(2):
    before = [(0, 0)] * low[r].ndim
    after = list(before)
    before[axis], after[axis] = (1, 0), (0, 1)
    parities.append(jnp.pad(low[r], after) + jnp.pad(high[r], before))
  y = jnp.stack(parities, axis=axis + 1)
  shape = list(parities[0].shape)
  shape[axis] *= 2
  return y.reshape(shape)


def _input_transform_t(dv: Sequence[jax.Array]) -> jax.Array:
  """The transpose of :func:`_input_transform`: 16 arrays -> ``[B, T, 2th + 2, 2tw + 2, C]``."""
  column = lambda b: [row[b] for row in _BT]  # noqa: E731  (B's column b)
  du = []
  for i in range(4):
    dcols = [_combine(dv[4 * i : 4 * i + 4], column(b)) for b in range(4)]
    du.append(_interleave_pairs(dcols[:2], dcols[2:], 3))
  drows = [_combine(du, column(a)) for a in range(4)]
  return _interleave_pairs(drows[:2], drows[2:], 2)


def _kernel_transform(kernel: jax.Array) -> jax.Array:
  """``G g G^T`` of each 3x3 kernel slice of ``[k_t, 3, 3, C, O]``: ``[16, k_t * C, O]``."""
  k_t, _, _, c, o = kernel.shape
  rows = [kernel[:, a] for a in range(3)]
  out = []
  for i in range(4):
    u = _combine(rows, _G[i])
    cols = [u[:, b] for b in range(3)]
    out.extend(_combine(cols, _G[j]) for j in range(4))
  return jnp.stack(out).reshape(16, k_t * c, o)


def _output_transform(m: Sequence[jax.Array]) -> jax.Array:
  """``A^T m A`` of the 16 products ``[B, T, th, tw, O]``: ``[B, T, 2th, 2tw, O]``."""
  rows = []
  for r in range(2):
    u = [_combine([m[4 * i + j] for i in range(4)], _AT[r]) for j in range(4)]
    rows.append(jnp.stack([_combine(u, _AT[s]) for s in range(2)], axis=-2))
  y = jnp.stack(rows, axis=-4)  # [B, T, th, 2, tw, 2, O]
  b, t, th, _, tw, _, o = y.shape
  return y.reshape(b, t, 2 * th, 2 * tw, o)


def _output_transform_t(g: jax.Array) -> list:
  """The transpose of :func:`_output_transform`: ``[B, T, 2th, 2tw, O]`` -> 16 arrays."""
  b, t, h2, w2, o = g.shape
  g = g.reshape(b, t, h2 // 2, 2, w2 // 2, 2, o)
  parts = [g[:, :, :, r, :, s] for r in range(2) for s in range(2)]
  out = []
  for i in range(4):
    for j in range(4):
      coefficients = [_AT[r][i] * _AT[s][j] for r in range(2) for s in range(2)]
      out.append(_combine(parts, coefficients))
  return out


def _folded(x: jax.Array, k_t: int) -> tuple[jax.Array, int, int]:
  """``x`` padded (SAME in time, plus the tiles' border in height and width) with its ``k_t``
  temporal taps side by side on the channels: ``[B, T, 2th + 2, 2tw + 2, k_t * C]``."""
  _, t, h, w, _ = x.shape
  tiles_h, tiles_w = -(-h // 2), -(-w // 2)
  low = (k_t - 1) // 2
  pads = [(0, 0), (low, k_t - 1 - low), (1, 1 + 2 * tiles_h - h), (1, 1 + 2 * tiles_w - w)]
  xp = jnp.pad(x, [*pads, (0, 0)])
  if k_t > 1:
    xp = jnp.concatenate([xp[:, d : d + t] for d in range(k_t)], axis=-1)
  return xp, tiles_h, tiles_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd(x: jax.Array, kernel: jax.Array, k_t: int) -> jax.Array:
  return _winograd_fwd(x, kernel, k_t)[0]


def _winograd_fwd(x, kernel, k_t):
  _, _, h, w, _ = x.shape
  folded, tiles_h, tiles_w = _folded(x, k_t)
  v = _input_transform(folded, tiles_h, tiles_w)
  u = _kernel_transform(kernel.astype(x.dtype))
  y = _output_transform([jnp.dot(v[p], u[p]) for p in range(16)])
  return y[:, :, :h, :w], (v, u, kernel)


def _winograd_bwd(k_t, residuals, grad):
  v, u, kernel = residuals
  _, t, h, w, _ = grad.shape
  tiles_h, tiles_w = v[0].shape[2:4]
  grad = jnp.pad(grad, [(0, 0), (0, 0), (0, 2 * tiles_h - h), (0, 2 * tiles_w - w), (0, 0)])
  dm = _output_transform_t(grad)
  dv = [jnp.dot(dm[p], u[p].T) for p in range(16)]
  # The kernel gradient as (dm^T v)^T: XLA then transposes the smaller operand, dm, not v.
  rows = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
  du = jnp.stack([jnp.dot(rows(dm[p]).T, rows(v[p])).T for p in range(16)])
  dfolded = _input_transform_t(dv)  # [B, T, 2th + 2, 2tw + 2, k_t * C]
  c = dfolded.shape[-1] // k_t
  dx = None
  for d in range(k_t):  # folded frame s, tap d is padded frame s + d
    part = jnp.pad(dfolded[..., d * c : (d + 1) * c], [(0, 0), (d, k_t - 1 - d), *[(0, 0)] * 3])
    dx = part if dx is None else dx + part
  low = (k_t - 1) // 2
  dx = dx[:, low : low + t, 1 : 1 + h, 1 : 1 + w]
  (dkernel,) = jax.linear_transpose(_kernel_transform, kernel.astype(du.dtype))(du)
  return dx, dkernel.astype(kernel.dtype)


_winograd.defvjp(_winograd_fwd, _winograd_bwd)
