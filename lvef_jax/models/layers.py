"""Building blocks shared by the model families: norms, conv-norm-act, pooling, dropout, input.

Every block takes ``train`` explicitly instead of relying on mutable train/eval flags, so the
pure train step in ``lvef_jax.training.steps`` decides the mode in one place. Blocks work on
channels-last tensors with any number of spatial axes: ``[B, T, H, W, C]`` for the 3-D models,
``[N, H, W, C]`` for the per-frame 2-D CNNs.

A family takes its convolution and pooling from an :class:`Ops` value (as Flax's ResNet takes
``conv: ModuleDef = nn.Conv``): :data:`XLA_OPS`, XLA's plain convolutions and the slice-wise
max pool (``lvef_jax.models.pooling``), unless the caller hands it other forms of the same
mathematics (``lvef_jax.models.ops_for``; the CPU's live in ``lvef_jax.kernels``). Whatever
the ops, the parameters are the same.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import pooling

# "layer" is the paper's LayerNorm (per sample over every axis but the batch), "layer_channels"
# the per-position reading over channels only (Keras' LayerNormalization() default axis=-1).
NORMS = ("batch", "layer", "layer_channels")
# Keras' epsilon for both BatchNormalization and LayerNormalization, which the paper's models used.
NORM_EPSILON = 1e-3


def glorot_uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Keras' default kernel initialiser (the paper's code used it), drawn on the host.

  Same distribution as ``jax.nn.initializers.glorot_uniform()``, but drawn by numpy from a
  generator seeded with ``key``: XLA's CPU backend spends ~0.5 s compiling a random-number
  program for every parameter shape (~20 s for I3D-mini), numpy takes milliseconds. The same
  weights for the same key, whether called directly or under a transformation (``jit``,
  ``vmap``: then a host callback draws them).
  """
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return _host_draw(key, lambda rng: rng.uniform(-limit, limit, size=tuple(shape)), shape, dtype)


def orthogonal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Keras' recurrent-kernel initialiser (orthogonal), drawn on the host like ``glorot_uniform``."""
  rows, cols = int(np.prod(shape[:-1])), shape[-1]

  def draw(rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # a uniform draw over orthogonal matrices
    q = q if rows >= cols else q.T
    return q.reshape(shape)

  return _host_draw(key, draw, shape, dtype)


def _host_draw(key: jax.Array, draw: Callable, shape: Sequence[int], dtype) -> jax.Array:
  """``draw(numpy generator seeded by key)`` as an array of ``shape`` and ``dtype``; under a
  transformation the key is a tracer, and a host callback draws from its value."""
  key_data = jax.random.key_data(key)

  def host(data) -> np.ndarray:
    rng = np.random.default_rng(np.asarray(data).ravel().tolist())
    return np.asarray(draw(rng), dtype=dtype)

  if isinstance(key_data, jax.core.Tracer):
    result = jax.ShapeDtypeStruct(tuple(shape), dtype)
    return jax.pure_callback(host, result, key_data, vmap_method="sequential")
  return jnp.asarray(host(key_data))


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


def max_pool(
  x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str = "SAME"
) -> jax.Array:
  """TF-style max pooling over the spatial axes of a channels-last tensor (SAME pads with
  -inf): the maximum of strided slices, whose gradient moves a third of the bytes of
  ``reduce_window``'s on a GPU and runs faster on CPUs (``lvef_jax.models.pooling``)."""
  return pooling.max_pool(x, window, strides, padding)


def each_conv(convs: Sequence[nnx.Module], x: jax.Array) -> list[jax.Array]:
  """``[conv(x) for conv in convs]``: several convolutions that read the same input."""
  return [conv(x) for conv in convs]


@dataclasses.dataclass(frozen=True)
class Ops:
  """The convolution and pooling a model is built with: one form of the same mathematics.

  Attributes:
    conv: the convolution module class, constructed as ``nnx.Conv`` is and holding the same
      parameters (``kernel``, ``bias``).
    max_pool: ``max_pool(x, window, strides, padding) -> y``, as :func:`max_pool`.
    each_conv: ``each_conv(convs, x) -> [conv(x) for conv in convs]`` for convolutions that read
      the same input (an Inception module's branches), as :func:`each_conv`.
    name: what ``config.compute.kernels`` calls these ops.
  """

  conv: type[nnx.Conv] = nnx.Conv
  max_pool: Callable[..., jax.Array] = max_pool
  each_conv: Callable[..., list] = each_conv
  name: str = "xla"


XLA_OPS = Ops()  # XLA's plain convolutions, the slice-wise max pool: what GPUs run


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
  ops: Ops = XLA_OPS,
  kernel_init: Callable = None,
) -> nnx.Conv:
  """A convolution of any dimension, Keras-initialised (Glorot-uniform kernel, zero bias)
  unless ``kernel_init`` says otherwise."""
  return ops.conv(
    in_features,
    features,
    tuple(kernel),
    strides=strides,
    padding=padding,
    use_bias=use_bias,
    kernel_init=kernel_init or KERNEL_INIT,
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
    ops: Ops = XLA_OPS,
  ):
    kernel = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    self.conv = conv(in_features, features, kernel, use_bias=False, dtype=dtype, rngs=rngs, ops=ops)
    self.norm = Norm(features, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.norm_act(self.conv(x), train=train)

  def norm_act(self, y: jax.Array, *, train: bool) -> jax.Array:
    """The norm and ReLU that follow the convolution."""
    return jax.nn.relu(self.norm(y, train=train))


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
  if key is None or not nonzero(rate):
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def nonzero(coefficient) -> bool:
  """Whether a rate or penalty coefficient acts: a number other than 0, or an array (a
  member's grid value inside the step, `models.set_member_hparams`; it may be 0 there)."""
  return not isinstance(coefficient, (int, float)) or coefficient != 0


def dropout_keys(key: jax.Array | None, count: int) -> list:
  """``count`` independent dropout keys from ``key``; ``None`` for each in inference."""
  return list(jax.random.split(key, count)) if key is not None else [None] * count


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
