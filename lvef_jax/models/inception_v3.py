"""Keras' ``InceptionV3(include_top=False, pooling="avg")`` in Flax NNX, layer for layer.

The per-frame backbone of the paper's CNN-RNN models. It mirrors
``keras.applications.InceptionV3`` (Keras 3.15) closely enough that ImageNet weights saved by
Keras load with :func:`load_keras_weights` and give the same pooled features. Inputs are frames
``[N, H, W, 3]`` already scaled to [-1, 1] as ``inception_v3.preprocess_input`` does (grey echo
frames are triplicated to RGB by the caller).

This module must not import TensorFlow or Keras: the model runs on GPU machines that have JAX
only. The weight loader imports ``h5py`` when called.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

BLOCKS = (
  "stem",
  "mixed0",
  "mixed1",
  "mixed2",
  "mixed3",
  "mixed4",
  "mixed5",
  "mixed6",
  "mixed7",
  "mixed8",
  "mixed9",
  "mixed10",
)
FEATURES = 2048
BN_EPSILON = 1e-3  # Keras' BatchNormalization default, which InceptionV3 uses


class ConvBN(nnx.Module):
  """Keras' ``conv2d_bn``: Conv2D (no bias) -> BatchNormalization(scale=False) -> ReLU.

  ``keras_index`` is the position of the unit in Keras' creation order (``conv2d_<i>``,
  ``batch_normalization_<i>``), which is how :func:`load_keras_weights` pairs layers.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel: Sequence[int],
    *,
    strides: int,
    padding: str,
    keras_index: int,
    bn_momentum: float,
    dtype,
    rngs: nnx.Rngs,
    ops: layers.Ops,
  ):
    self.conv = layers.conv(
      in_features,
      features,
      kernel,
      strides=strides,
      padding=padding,
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
      ops=ops,
    )
    self.bn = nnx.BatchNorm(
      features, use_scale=False, momentum=bn_momentum, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
    )
    self.keras_index = keras_index

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class _ConvBNFactory:
  """Builds :class:`ConvBN` units numbered in the order they are built.

  Every block builds its units in the order of Keras' source, so the numbering reproduces
  Keras' layer names; the factory is not stored in the model.
  """

  def __init__(self, *, bn_momentum: float, dtype, rngs: nnx.Rngs, ops: layers.Ops):
    self._kwargs = dict(bn_momentum=bn_momentum, dtype=dtype, rngs=rngs, ops=ops)
    self._count = itertools.count()

  def __call__(
    self,
    in_features: int,
    features: int,
    kernel: Sequence[int],
    *,
    strides: int = 1,
    padding: str = "SAME",
  ) -> ConvBN:
    return ConvBN(
      in_features,
      features,
      kernel,
      strides=strides,
      padding=padding,
      keras_index=next(self._count),
      **self._kwargs,
    )


def _max_pool(x: jax.Array) -> jax.Array:
  return layers.max_pool(x, (3, 3), (2, 2), padding="VALID")


def _avg_pool(x: jax.Array) -> jax.Array:
  # TF's SAME average pooling divides by the number of real pixels in the window.
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)


class Stem(nnx.Module):
  """Every layer before ``mixed0``: 299x299x3 -> 35x35x192 (for 299x299 inputs)."""

  def __init__(self, make: _ConvBNFactory):
    self.conv1 = make(3, 32, (3, 3), strides=2, padding="VALID")
    self.conv2 = make(32, 32, (3, 3), padding="VALID")
    self.conv3 = make(32, 64, (3, 3))
    self.conv4 = make(64, 80, (1, 1), padding="VALID")
    self.conv5 = make(80, 192, (3, 3), padding="VALID")
    self.out_features = 192

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv3(self.conv2(self.conv1(x, train=train), train=train), train=train)
    x = self.conv5(self.conv4(_max_pool(x), train=train), train=train)
    return _max_pool(x)


class InceptionA(nnx.Module):
  """``mixed0``-``mixed2``: 1x1, 5x5, double 3x3 and average-pool branches."""

  def __init__(self, make: _ConvBNFactory, in_features: int, pool_features: int):
    self.branch1x1 = make(in_features, 64, (1, 1))
    self.branch5x5_1 = make(in_features, 48, (1, 1))
    self.branch5x5_2 = make(48, 64, (5, 5))
    self.branch3x3dbl_1 = make(in_features, 64, (1, 1))
    self.branch3x3dbl_2 = make(64, 96, (3, 3))
    self.branch3x3dbl_3 = make(96, 96, (3, 3))
    self.branch_pool = make(in_features, pool_features, (1, 1))
    self.out_features = 64 + 64 + 96 + pool_features

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b1 = self.branch1x1(x, train=train)
    b5 = self.branch5x5_2(self.branch5x5_1(x, train=train), train=train)
    b3 = self.branch3x3dbl_1(x, train=train)
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(b3, train=train), train=train)
    bp = self.branch_pool(_avg_pool(x), train=train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """``mixed3``: grid reduction 35x35 -> 17x17."""

  def __init__(self, make: _ConvBNFactory, in_features: int):
    self.branch3x3 = make(in_features, 384, (3, 3), strides=2, padding="VALID")
    self.branch3x3dbl_1 = make(in_features, 64, (1, 1))
    self.branch3x3dbl_2 = make(64, 96, (3, 3))
    self.branch3x3dbl_3 = make(96, 96, (3, 3), strides=2, padding="VALID")
    self.out_features = 384 + 96 + in_features

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b3 = self.branch3x3(x, train=train)
    bd = self.branch3x3dbl_1(x, train=train)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(bd, train=train), train=train)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
  """``mixed4``-``mixed7``: factorised 7x7 branches with ``channels_7x7`` inner channels."""

  def __init__(self, make: _ConvBNFactory, in_features: int, channels_7x7: int):
    c7 = channels_7x7
    self.branch1x1 = make(in_features, 192, (1, 1))
    self.branch7x7_1 = make(in_features, c7, (1, 1))
    self.branch7x7_2 = make(c7, c7, (1, 7))
    self.branch7x7_3 = make(c7, 192, (7, 1))
    self.branch7x7dbl_1 = make(in_features, c7, (1, 1))
    self.branch7x7dbl_2 = make(c7, c7, (7, 1))
    self.branch7x7dbl_3 = make(c7, c7, (1, 7))
    self.branch7x7dbl_4 = make(c7, c7, (7, 1))
    self.branch7x7dbl_5 = make(c7, 192, (1, 7))
    self.branch_pool = make(in_features, 192, (1, 1))
    self.out_features = 4 * 192

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b1 = self.branch1x1(x, train=train)
    b7 = x
    for unit in (self.branch7x7_1, self.branch7x7_2, self.branch7x7_3):
      b7 = unit(b7, train=train)
    bd = x
    for unit in (
      self.branch7x7dbl_1,
      self.branch7x7dbl_2,
      self.branch7x7dbl_3,
      self.branch7x7dbl_4,
      self.branch7x7dbl_5,
    ):
      bd = unit(bd, train=train)
    bp = self.branch_pool(_avg_pool(x), train=train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """``mixed8``: grid reduction 17x17 -> 8x8."""

  def __init__(self, make: _ConvBNFactory, in_features: int):
    self.branch3x3_1 = make(in_features, 192, (1, 1))
    self.branch3x3_2 = make(192, 320, (3, 3), strides=2, padding="VALID")
    self.branch7x7x3_1 = make(in_features, 192, (1, 1))
    self.branch7x7x3_2 = make(192, 192, (1, 7))
    self.branch7x7x3_3 = make(192, 192, (7, 1))
    self.branch7x7x3_4 = make(192, 192, (3, 3), strides=2, padding="VALID")
    self.out_features = 320 + 192 + in_features

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x, train=train), train=train)
    b7 = x
    for unit in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = unit(b7, train=train)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
  """``mixed9``, ``mixed10``: expanded 3x3 branches split into parallel 1x3 and 3x1 convs."""

  def __init__(self, make: _ConvBNFactory, in_features: int):
    self.branch1x1 = make(in_features, 320, (1, 1))
    self.branch3x3_1 = make(in_features, 384, (1, 1))
    self.branch3x3_2a = make(384, 384, (1, 3))
    self.branch3x3_2b = make(384, 384, (3, 1))
    self.branch3x3dbl_1 = make(in_features, 448, (1, 1))
    self.branch3x3dbl_2 = make(448, 384, (3, 3))
    self.branch3x3dbl_3a = make(384, 384, (1, 3))
    self.branch3x3dbl_3b = make(384, 384, (3, 1))
    self.branch_pool = make(in_features, 192, (1, 1))
    self.out_features = 320 + 2 * 384 + 2 * 384 + 192

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b1 = self.branch1x1(x, train=train)
    b3 = self.branch3x3_1(x, train=train)
    b3 = jnp.concatenate(
      [self.branch3x3_2a(b3, train=train), self.branch3x3_2b(b3, train=train)], axis=-1
    )
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x, train=train), train=train)
    bd = jnp.concatenate(
      [self.branch3x3dbl_3a(bd, train=train), self.branch3x3dbl_3b(bd, train=train)], axis=-1
    )
    bp = self.branch_pool(_avg_pool(x), train=train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nnx.Module):
  """InceptionV3 feature extractor: frames ``[N, H, W, 3]`` in [-1, 1] -> ``[N, 2048]``.

  ``self.blocks`` holds one module per entry of ``BLOCKS``, so every parameter path contains
  ``("blocks", i, ...)`` (see :func:`block_index`). Frames must be at least 75x75 (as in Keras).

  Args:
    bn_momentum: BatchNorm running-average momentum (Keras' default 0.99).
    dtype: computation dtype (float32 or bfloat16); parameters stay float32.
    rngs: needs a ``params`` stream.
    ops: the convolutions (``layers.Ops``; its pools are VALID or average ones, XLA's).
  """

  def __init__(
    self,
    *,
    bn_momentum: float = 0.99,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    self.dtype = jnp.dtype(dtype)
    make = _ConvBNFactory(bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs, ops=ops)
    # Built in Keras' order: the units' creation order is the weight-import order.
    blocks = [Stem(make)]
    for pool_features in (32, 64, 64):
      blocks.append(InceptionA(make, blocks[-1].out_features, pool_features))
    blocks.append(InceptionB(make, blocks[-1].out_features))
    for channels_7x7 in (128, 160, 160, 192):
      blocks.append(InceptionC(make, blocks[-1].out_features, channels_7x7))
    blocks.append(InceptionD(make, blocks[-1].out_features))
    for _ in range(2):
      blocks.append(InceptionE(make, blocks[-1].out_features))
    assert len(blocks) == len(BLOCKS) and blocks[-1].out_features == FEATURES
    self.blocks = nnx.List(blocks)

  def __call__(
    self, x: jax.Array, *, train: bool, trainable_blocks: int = len(BLOCKS)
  ) -> jax.Array:
    """Global-average-pooled features ``[N, 2048]`` (float32) of frames ``x``.

    Args:
      x: ``[N, H, W, 3]`` floats scaled like ``inception_v3.preprocess_input`` ([-1, 1]).
      train: whether trainable blocks normalise with batch statistics (and update the
        running averages) instead of the running averages.
      trainable_blocks: how many of the last blocks train. The others are frozen as a Keras
        layer with ``trainable=False``: their BatchNorms always use the running averages, and
        no gradient flows back through them.
    """
    if not 0 <= trainable_blocks <= len(BLOCKS):
      raise ConfigError(f"trainable_blocks must be in [0, {len(BLOCKS)}], got {trainable_blocks}")
    frozen = len(BLOCKS) - trainable_blocks
    x = x.astype(self.dtype)
    for i, block in enumerate(self.blocks):
      x = block(x, train=train and i >= frozen)
      if i == frozen - 1:
        # Cutting the graph here means no backward pass runs through the frozen blocks.
        x = jax.lax.stop_gradient(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def block_index(path: tuple) -> int | None:
  """The block index of a parameter path (keys as in ``nnx.to_flat_state(nnx.state(...))``).

  The element after the key ``"blocks"``; None if the path has no ``"blocks"`` key.
  """
  for key, next_key in zip(path, path[1:]):
    if key == "blocks":
      return int(next_key)
  return None


def conv_bn_units(model: InceptionV3) -> list[ConvBN]:
  """The model's 94 :class:`ConvBN` units in Keras' creation order."""
  units = [node for _, node in nnx.iter_graph(model) if isinstance(node, ConvBN)]
  return sorted(units, key=lambda unit: unit.keras_index)


# --------------------------------------------------------------------------------------------
# Keras weight import

_CONV_NAME = re.compile(r"^conv2d(?:_(\d+))?$")
_BN_NAME = re.compile(r"^batch_normalization(?:_(\d+))?$")
_BN_VARS = ("beta", "moving_mean", "moving_variance")
# (Keras layer name, {variable name: value}) per layer.
_Layers = list[tuple[str, dict[str, np.ndarray]]]


def _creation_rank(name: str, pattern: re.Pattern) -> int | None:
  """Keras' uid suffix of an auto-generated layer name (``conv2d`` is 0, ``conv2d_7`` is 7)."""
  match = pattern.match(name)
  if match is None:
    return None
  return int(match.group(1) or 0)


def _decode(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_keras3(f, path: str) -> tuple[_Layers, _Layers]:
  """Conv and BN layers of a Keras 3 ``.weights.h5``, each as ``(name, {var: array})``.

  Keras 3 keys the groups ``layers/<class>_<k>`` by the position of the layer in
  ``model.layers`` (a topological order that interleaves branches), and keeps the layer's name
  in the ``name`` attribute of ``layers/<key>/vars``. Layer names carry Keras' creation-order
  uid, so they, not the keys, pair the file's layers with this module's units.
  """
  convs, bns = [], []
  for key, group in f["layers"].items():
    if "vars" not in group:
      continue
    is_conv, is_bn = _CONV_NAME.match(key), _BN_NAME.match(key)
    if not (is_conv or is_bn):
      continue
    variables = group["vars"]
    if "name" not in variables.attrs:
      raise ConfigError(
        f"{path!r}: layers/{key}/vars has no 'name' attribute, needed to order the layers"
      )
    name = _decode(variables.attrs["name"])
    arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    if is_conv:
      if len(arrays) != 1:
        raise ConfigError(
          f"{path!r}: layer {name} has {len(arrays)} variables, expected a kernel "
          "only (use_bias=False)"
        )
      convs.append((name, {"kernel": arrays[0]}))
    else:
      if len(arrays) != len(_BN_VARS):
        raise ConfigError(
          f"{path!r}: layer {name} has {len(arrays)} variables, expected {_BN_VARS} (scale=False)"
        )
      # Keras 3 stores a layer's trainable variables (beta), then the non-trainable ones
      # (moving_mean, moving_variance), each in creation order.
      bns.append((name, dict(zip(_BN_VARS, arrays))))
  return convs, bns


def _legacy_attribute(group, name: str) -> list[str]:
  """An attribute of the Keras 2 HDF5 format, which splits big ones into ``<name>0``, ..."""
  if name in group.attrs:
    return [_decode(v) for v in group.attrs[name]]
  values, chunk = [], 0
  while f"{name}{chunk}" in group.attrs:
    values.extend(_decode(v) for v in group.attrs[f"{name}{chunk}"])
    chunk += 1
  return values


def _read_legacy(f, path: str) -> tuple[_Layers, _Layers]:
  """Conv and BN layers of a Keras 2 HDF5 weights file (or a full-model ``.h5``).

  One group per layer, listed in the root attribute ``layer_names``; each has a
  ``weight_names`` attribute (e.g. ``conv2d_1/kernel:0``) whose entries are dataset paths
  inside the group.
  """
  root = f["model_weights"] if "model_weights" in f else f
  names = _legacy_attribute(root, "layer_names")
  if not names:
    raise ConfigError(
      f"{path!r}: not a Keras weights file (no 'layers' group and no 'layer_names' attribute)"
    )
  convs, bns = [], []
  for name in names:
    group = root[name]
    weight_names = _legacy_attribute(group, "weight_names")
    if _CONV_NAME.match(name):
      if len(weight_names) != 1:
        raise ConfigError(
          f"{path!r}: layer {name} has weights {weight_names}, expected a kernel "
          "only (use_bias=False)"
        )
      convs.append((name, {"kernel": np.asarray(group[weight_names[0]])}))
    elif _BN_NAME.match(name):
      arrays = {}
      for weight_name in weight_names:
        short = weight_name.rsplit("/", 1)[-1].split(":")[0]
        arrays[short] = np.asarray(group[weight_name])
      if set(arrays) != set(_BN_VARS):
        raise ConfigError(
          f"{path!r}: layer {name} has weights {sorted(arrays)}, expected "
          f"{sorted(_BN_VARS)} (scale=False)"
        )
      bns.append((name, arrays))
  return convs, bns


def _in_creation_order(
  found: _Layers, pattern: re.Pattern, kind: str, expected: int, path: str
) -> _Layers:
  """``found`` sorted by the creation-order number of the Keras layer names."""
  if len(found) != expected:
    raise ConfigError(
      f"{path!r}: {len(found)} {kind} layers with weights, expected {expected} "
      "(an InceptionV3 saved with include_top=False)"
    )
  ranks = [_creation_rank(name, pattern) for name, _ in found]
  if None in ranks or len(set(ranks)) != len(ranks):
    names = [name for name, _ in found]
    raise ConfigError(f"{path!r}: cannot order the {kind} layers by their Keras names {names}")
  return [layer for _, layer in sorted(zip(ranks, found), key=lambda pair: pair[0])]


def _set(variable: nnx.Variable, value: np.ndarray) -> None:
  old = variable[...]
  # Keep the variable's dtype and placement (it may be sharded or replicated).
  variable[...] = jax.device_put(np.asarray(value, dtype=old.dtype), old.sharding)


def load_keras_weights(model: InceptionV3, path: str | os.PathLike) -> None:
  """Sets every conv kernel and BatchNorm beta/moving mean/moving variance from a Keras file.

  Reads the ``.weights.h5`` that Keras 3's ``keras.applications.InceptionV3(include_top=False,
  ...).save_weights(...)`` writes, and the Keras 2 HDF5 layout (``layer_names`` /
  ``weight_names`` attributes) of the widely distributed
  ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``. Layers are paired by the
  creation-order number in their auto-generated Keras names (``conv2d_<i>``,
  ``batch_normalization_<i>``), which is the construction order of this module's units; the
  Keras 2 reader is tested on files written by Keras 3's legacy HDF5 writer.

  Raises:
    ValueError (naming the file): the file is missing, is not HDF5, or its conv/BN layer count,
      names or shapes do not match the model.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"Keras weights file {path!r} does not exist")
  import h5py  # Only the loader needs it.

  try:
    f = h5py.File(path, "r")
  except OSError as error:
    raise ConfigError(f"Keras weights file {path!r} is not an HDF5 file: {error}") from error
  with f:
    try:
      convs, bns = _read_keras3(f, path) if "layers" in f else _read_legacy(f, path)
    except (KeyError, OSError) as error:  # h5py's errors for missing or unreadable entries
      raise ConfigError(f"{path!r}: unreadable Keras weights: {error}") from error

  units = conv_bn_units(model)
  convs = _in_creation_order(convs, _CONV_NAME, "conv2d", len(units), path)
  bns = _in_creation_order(bns, _BN_NAME, "batch_normalization", len(units), path)
  assignments = []
  for i, (unit, (conv_name, conv), (bn_name, bn)) in enumerate(zip(units, convs, bns)):
    for name, variable, value in (
      (conv_name, unit.conv.kernel, conv["kernel"]),
      (bn_name, unit.bn.bias, bn["beta"]),
      (bn_name, unit.bn.mean, bn["moving_mean"]),
      (bn_name, unit.bn.var, bn["moving_variance"]),
    ):
      if tuple(value.shape) != tuple(variable.shape):
        raise ConfigError(
          f"{path!r}: layer {name} has shape {tuple(value.shape)}, expected "
          f"{tuple(variable.shape)} (unit {i} of InceptionV3)"
        )
      assignments.append((variable, value))
  # Checked everything first so that a bad file leaves the model untouched.
  for variable, value in assignments:
    _set(variable, value)
