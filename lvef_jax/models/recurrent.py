"""Keras-style GRU and LSTM layers, optionally layer-normalised, for the CNN-RNN family.

The cells follow Keras' defaults, which the paper's Keras models used: Glorot-uniform input
kernels, orthogonal recurrent kernels, zero biases (LSTM: forget-gate bias 1,
``unit_forget_bias``), sigmoid gates and tanh activations; the GRU is Keras' ``reset_after``
variant (separate input and recurrent biases), gate order z, r, h; the LSTM gate order is
i, f, c, o. So parameter counts equal Keras' ``GRU(units)`` and ``LSTM(units)``.

``layer_norm=True`` is the layer-normalised cell of Ba et al. (2016), the paper's "LayerNorm in
the RNN" (its "Mixed" models): the input projection and the recurrent projection of all gates
are each normalised (with their own scale and bias) before they are summed, and the LSTM's
cell state is normalised before its output tanh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

CELLS = ("gru", "lstm")


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  return layers.standardize(x, axes=(-1,)) * scale + bias


class LayerNormParams(nnx.Module):
  """Scale and bias of one layer-normalised projection."""

  def __init__(self, features: int):
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

  def arrays(self) -> tuple[jax.Array, jax.Array]:
    return self.scale[...], self.bias[...]


class Recurrent(nnx.Module):
  """A GRU or LSTM layer over ``[B, T, in_features]``; returns every step's state ``[B, T, U]``."""

  def __init__(
    self, in_features: int, units: int, cell: str, *, layer_norm: bool, dtype, rngs: nnx.Rngs
  ):
    if cell not in CELLS:
      raise ConfigError(f"rnn must be one of {CELLS}, got {cell!r}")
    self.cell, self.units, self.dtype = cell, units, dtype
    gates = 3 if cell == "gru" else 4
    self.kernel = nnx.Param(layers.glorot_uniform(rngs.params(), (in_features, gates * units)))
    self.recurrent_kernel = nnx.Param(layers.orthogonal(rngs.params(), (units, gates * units)))
    if cell == "gru":  # reset_after: one input bias and one recurrent bias per gate
      self.bias = nnx.Param(jnp.zeros((2, gates * units), jnp.float32))
    else:
      self.bias = nnx.Param(jnp.zeros((gates * units,), jnp.float32).at[units : 2 * units].set(1.0))
    self.layer_norm = layer_norm
    if layer_norm:
      self.input_norm = LayerNormParams(gates * units)
      self.recurrent_norm = LayerNormParams(gates * units)
      if cell == "lstm":
        self.cell_norm = LayerNormParams(units)

  def __call__(self, x: jax.Array) -> jax.Array:
    units, gru = self.units, self.cell == "gru"
    bias = self.bias[...]
    recurrent_kernel = self.recurrent_kernel[...].astype(self.dtype)
    projected = (x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)).astype(jnp.float32)
    if self.layer_norm:
      projected = _layer_norm(projected, *self.input_norm.arrays())
      recurrent_ln = self.recurrent_norm.arrays()
      cell_ln = self.cell_norm.arrays() if not gru else None
    projected = projected + (bias[0] if gru else bias)

    def recur(h):
      r = (h.astype(self.dtype) @ recurrent_kernel).astype(jnp.float32)
      if self.layer_norm:
        r = _layer_norm(r, *recurrent_ln)
      return r + bias[1] if gru else r

    def gru_step(h, x_t):
      r_all = recur(h)
      z = jax.nn.sigmoid(x_t[:, :units] + r_all[:, :units])
      reset = jax.nn.sigmoid(x_t[:, units : 2 * units] + r_all[:, units : 2 * units])
      candidate = jnp.tanh(x_t[:, 2 * units :] + reset * r_all[:, 2 * units :])
      h = z * h + (1.0 - z) * candidate
      return h, h

    def lstm_step(carry, x_t):
      h, c = carry
      g = x_t + recur(h)
      i, f = jax.nn.sigmoid(g[:, :units]), jax.nn.sigmoid(g[:, units : 2 * units])
      c = f * c + i * jnp.tanh(g[:, 2 * units : 3 * units])
      o = jax.nn.sigmoid(g[:, 3 * units :])
      h = o * jnp.tanh(_layer_norm(c, *cell_ln) if self.layer_norm else c)
      return (h, c), h

    zeros = jnp.zeros((x.shape[0], units), jnp.float32)
    steps = jnp.swapaxes(projected, 0, 1)  # scan over time
    if gru:
      _, states = jax.lax.scan(gru_step, zeros, steps)
    else:
      _, states = jax.lax.scan(lstm_step, (zeros, zeros), steps)
    return jnp.swapaxes(states, 0, 1)
