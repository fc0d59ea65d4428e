"""torchvision's video ResNets (R(2+1)D-18, R3D-18, MC3-18), the models EchoNet-Dynamic trained.

Layer for layer as ``torchvision.models.video.resnet`` builds them (Tran et al., 2018): a stem,
four stages of two residual basic blocks (64, 128, 256 and 512 channels; the last three halve
time, height and width), a global average pool and one Dense output. The architectures differ
in their convolutions:

- ``r2plus1d_18``: every 3x3x3 convolution split into a 1x3x3 spatial one, BatchNorm and ReLU,
  then a 3x1x1 temporal one, with the middle width chosen so the pair has the 3x3x3's
  parameters (torchvision's ``Conv2Plus1D``); the stem is 1x7x7 (45 channels) then 3x1x1;
- ``r3d_18``: full 3x3x3 convolutions, a 3x7x7 stem;
- ``mc3_18``: 3x3x3 in the first stage, 1x3x3 (no temporal extent) after it, a 3x7x7 stem.

Inputs are 3-channel as torchvision's: the grey frame repeated, each channel normalised by
``input_mean`` and ``input_std`` (pixel units, 0-255; EchoNet-Dynamic computes them on the
train split, as training here does when they are not given). The output layer is Dense(1) with
its bias at the mean EF, EchoNet-Dynamic's; BatchNorm keeps PyTorch's epsilon (1e-5).

:meth:`Model.torch_parameters` names every array as torchvision's ``state_dict`` does, so
``lvef_jax.models.torch_import`` loads torchvision's and EchoNet-Dynamic's released weights.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers

# Per architecture: the stem's kind and each stage's convolution (torchvision's conv_makers).
ARCHS = {
  "r2plus1d_18": ("r2plus1d", ("2plus1d",) * 4),
  "r3d_18": ("basic", ("3d",) * 4),
  "mc3_18": ("basic", ("3d", "no_temporal", "no_temporal", "no_temporal")),
}
STAGE_FEATURES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2
STEM_FEATURES, STEM_MID_FEATURES = 64, 45
BN_EPSILON = 1e-5  # PyTorch's BatchNorm3d default (the paper's Keras models use 1e-3)
# input_mean / input_std not known (a model built for --mode=summary or the benchmark): 0-1.
UNSET_MEAN, UNSET_STD = 0.0, 255.0


def kaiming_normal_fan_out(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """torchvision's convolution initialiser (He normal, fan-out, ReLU gain), drawn on the host
  as ``layers.glorot_uniform`` is."""
  fan_out = int(np.prod(shape[:-2])) * shape[-1]
  std = np.sqrt(2.0 / fan_out)
  return layers._host_draw(key, lambda rng: rng.normal(0.0, std, size=tuple(shape)), shape, dtype)


def torch_linear_uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """A fresh ``torch.nn.Linear``'s weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the output
  layer EchoNet-Dynamic puts in place of the classifier."""
  bound = 1.0 / np.sqrt(shape[0])
  return layers._host_draw(
    key, lambda rng: rng.uniform(-bound, bound, size=tuple(shape)), shape, dtype
  )


def _conv(
  in_features: int,
  features: int,
  kernel: Sequence[int],
  strides: Sequence[int],
  *,
  dtype,
  rngs: nnx.Rngs,
  ops: layers.Ops,
) -> nnx.Conv:
  """A bias-free convolution padded as torchvision pads it (``kernel // 2`` on each side):
  ``SAME`` where that is the same (stride 1, so the CPU forms apply), explicit otherwise."""
  strides = tuple(strides)
  if all(s == 1 for s in strides):
    padding = "SAME"
  else:
    padding = tuple((k // 2, k // 2) for k in kernel)
  return layers.conv(
    in_features,
    features,
    kernel,
    strides=strides,
    padding=padding,
    use_bias=False,
    kernel_init=kaiming_normal_fan_out,
    dtype=dtype,
    rngs=rngs,
    ops=ops,
  )


def _batch_norm(features: int, *, momentum: float, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=momentum, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


def _bn(norm: nnx.BatchNorm, x: jax.Array, train: bool) -> jax.Array:
  return norm(x, use_running_average=not train)


def mid_features(in_features: int, features: int) -> int:
  """The middle width of a ``Conv2Plus1D`` block: the pair has about the parameters of the
  3x3x3 convolution from ``in_features`` to ``features`` (torchvision's ``midplanes``)."""
  return (in_features * features * 27) // (in_features * 9 + 3 * features)


class VideoConv(nnx.Module):
  """One 3x3x3-sized convolution of a block: ``3d`` (3x3x3), ``no_temporal`` (1x3x3) or
  ``2plus1d`` (1x3x3 to ``mid`` channels, BatchNorm, ReLU, 3x1x1; torchvision's
  ``Conv2Plus1D``)."""

  def __init__(
    self,
    kind: str,
    in_features: int,
    features: int,
    stride: int,
    *,
    mid: int,
    bn_momentum,
    dtype,
    rngs,
    ops,
  ):
    self.kind = kind
    conv = dict(dtype=dtype, rngs=rngs, ops=ops)
    if kind == "3d":
      self.conv = _conv(in_features, features, (3, 3, 3), (stride,) * 3, **conv)
    elif kind == "no_temporal":
      self.conv = _conv(in_features, features, (1, 3, 3), (1, stride, stride), **conv)
    else:
      self.spatial = _conv(in_features, mid, (1, 3, 3), (1, stride, stride), **conv)
      self.mid_norm = _batch_norm(mid, momentum=bn_momentum, dtype=dtype, rngs=rngs)
      self.temporal = _conv(mid, features, (3, 1, 1), (stride, 1, 1), **conv)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.kind != "2plus1d":
      return self.conv(x)
    return self.temporal(jax.nn.relu(_bn(self.mid_norm, self.spatial(x), train)))

  def downsample_strides(self, stride: int) -> tuple[int, int, int]:
    """The shortcut's strides: ``no_temporal`` keeps time (torchvision's get_downsample_stride)."""
    return (1, stride, stride) if self.kind == "no_temporal" else (stride,) * 3

  def torch_names(self, prefix: str) -> dict:
    """This convolution's arrays under torchvision's names (``prefix`` + ...)."""
    if self.kind != "2plus1d":
      return {f"{prefix}weight": (self.conv, "kernel")}
    return {
      f"{prefix}0.weight": (self.spatial, "kernel"),
      **_bn_names(self.mid_norm, f"{prefix}1."),
      f"{prefix}3.weight": (self.temporal, "kernel"),
    }


def _bn_names(norm: nnx.BatchNorm, prefix: str) -> dict:
  return {
    f"{prefix}weight": (norm, "scale"),
    f"{prefix}bias": (norm, "bias"),
    f"{prefix}running_mean": (norm, "mean"),
    f"{prefix}running_var": (norm, "var"),
  }


class BasicBlock(nnx.Module):
  """torchvision's video ``BasicBlock``: conv, BN, ReLU, conv, BN, plus the shortcut (a strided
  1x1x1 convolution and BN where the shape changes), ReLU. Both ``2plus1d`` convolutions take
  the middle width of the first (``in_features`` to ``features``), as torchvision's do: the
  second of a stage's first block is 230, 460 and 921 wide, not 288, 576 and 1152."""

  def __init__(
    self, kind: str, in_features: int, features: int, stride: int, *, bn_momentum, dtype, rngs, ops
  ):
    mid = mid_features(in_features, features)
    common = dict(mid=mid, bn_momentum=bn_momentum, dtype=dtype, rngs=rngs, ops=ops)
    norm = dict(momentum=bn_momentum, dtype=dtype, rngs=rngs)
    self.conv1 = VideoConv(kind, in_features, features, stride, **common)
    self.norm1 = _batch_norm(features, **norm)
    self.conv2 = VideoConv(kind, features, features, 1, **common)
    self.norm2 = _batch_norm(features, **norm)
    downsample = None  # the shortcut is the identity where the shape stays
    if stride != 1 or in_features != features:
      strides = self.conv1.downsample_strides(stride)
      downsample = nnx.List(
        [
          _conv(in_features, features, (1, 1, 1), strides, dtype=dtype, rngs=rngs, ops=ops),
          _batch_norm(features, **norm),
        ]
      )
    self.downsample = downsample

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = jax.nn.relu(_bn(self.norm1, self.conv1(x, train=train), train))
    y = _bn(self.norm2, self.conv2(y, train=train), train)
    if self.downsample is not None:
      conv, norm = self.downsample
      x = _bn(norm, conv(x), train)
    return jax.nn.relu(y + x)

  def torch_names(self, prefix: str) -> dict:
    names = {
      **self.conv1.torch_names(f"{prefix}conv1.0."),
      **_bn_names(self.norm1, f"{prefix}conv1.1."),
      **self.conv2.torch_names(f"{prefix}conv2.0."),
      **_bn_names(self.norm2, f"{prefix}conv2.1."),
    }
    if self.downsample is not None:
      names[f"{prefix}downsample.0.weight"] = (self.downsample[0], "kernel")
      names.update(_bn_names(self.downsample[1], f"{prefix}downsample.1."))
    return names


def _channel_values(name: str, value, default: float, channels: int) -> tuple[float, ...]:
  """``model.input_mean`` / ``input_std`` as ``channels`` numbers (one number: all of them)."""
  if value is None:
    value = default
  if isinstance(value, (int, float)):
    values = (float(value),) * channels
  else:
    values = tuple(map(float, value))
  expected = "one number" if channels == 1 else f"one number or {channels}"
  if len(values) != channels or not all(np.isfinite(values)):
    raise ConfigError(f"model.{name} must be {expected}, got {value!r}")
  if name == "input_std" and min(values) <= 0:
    raise ConfigError(f"model.input_std must be positive, got {value!r}")
  return values


def input_normalization(input_mean, input_std, channels: int = 3):
  """The per-channel ``(mean, std)`` of ``model.input_mean`` / ``input_std`` (pixel units; one
  number, or one per channel), checked. ``None`` (not known yet: a model built for
  ``--mode=summary`` or the benchmark) scales pixels to 0-1."""
  return (
    _channel_values("input_mean", input_mean, UNSET_MEAN, channels),
    _channel_values("input_std", input_std, UNSET_STD, channels),
  )


def normalize_pixels(pixels: jax.Array, mean, std, dtype) -> jax.Array:
  """Grey pixels ``[..., 1]`` (uint8, or floats in 0-1) as torchvision's 3 input channels,
  each ``(pixel - mean) / std`` with ``mean`` and ``std`` the 3 values of
  :func:`input_normalization` in pixel units (the grey channel broadcast to them)."""
  values = pixels.astype(jnp.float32)
  if not jnp.issubdtype(pixels.dtype, jnp.integer):
    values = values * 255.0
  return ((values - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


class Model(layers.EFModel):
  """A torchvision video ResNet (``arch``, one of ``ARCHS``) ending in EF ``[B]``.

  Args:
    arch: ``r2plus1d_18``, ``r3d_18`` or ``mc3_18``.
    input_mean, input_std: per-channel normalisation in pixel units (one number or three).
      ``None``: not known yet. Training and ``--mode=import`` fill them in before they build
      the model (`lvef_jax.data.normalization`); a model built without them (``--mode=summary``,
      the benchmark) scales pixels to 0-1 as the other families do.
    init_from: a PyTorch weights file that training and ``--mode=import`` start from
      (``lvef_jax.models.torch_import``); the model itself ignores it.
    ef_offset: the output bias at initialisation (the mean EF).
    ef_scale: must be 1 (the output is torchvision's Dense, not scaled).
  """

  def __init__(
    self,
    *,
    clip_frames: int,
    image_size: int,
    arch: str,
    input_mean,
    input_std,
    init_from: str,
    ef_offset: float,
    ef_scale: float,
    dtype: str,
    bn_momentum: float,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    del clip_frames, image_size, init_from  # any clip shape; the weights file is the trainer's
    if arch not in ARCHS:
      raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if ef_scale != 1.0:
      raise ConfigError(
        f"model.ef_scale={ef_scale}: the video ResNets' output is torchvision's Dense(1), "
        "its bias at model.ef_offset; ef_scale must be 1"
      )
    self.arch, self.dtype = arch, jnp.dtype(dtype)
    self.input_mean, self.input_std = input_normalization(input_mean, input_std)
    stem_kind, stage_kinds = ARCHS[arch]
    common = dict(dtype=self.dtype, rngs=rngs, ops=ops)
    norm = dict(momentum=bn_momentum, dtype=self.dtype, rngs=rngs)
    self.stem_kind = stem_kind
    if stem_kind == "r2plus1d":
      self.stem_convs = nnx.List(
        [
          _conv(3, STEM_MID_FEATURES, (1, 7, 7), (1, 2, 2), **common),
          _conv(STEM_MID_FEATURES, STEM_FEATURES, (3, 1, 1), (1, 1, 1), **common),
        ]
      )
      self.stem_norms = nnx.List(
        [_batch_norm(STEM_MID_FEATURES, **norm), _batch_norm(STEM_FEATURES, **norm)]
      )
    else:
      self.stem_convs = nnx.List([_conv(3, STEM_FEATURES, (3, 7, 7), (1, 2, 2), **common)])
      self.stem_norms = nnx.List([_batch_norm(STEM_FEATURES, **norm)])
    stages, features = [], STEM_FEATURES
    for kind, out, stride in zip(stage_kinds, STAGE_FEATURES, STAGE_STRIDES):
      blocks = []
      for index in range(BLOCKS_PER_STAGE):
        blocks.append(
          BasicBlock(
            kind, features, out, stride if index == 0 else 1, bn_momentum=bn_momentum, **common
          )
        )
        features = out
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.fc = nnx.Linear(
      features,
      1,
      kernel_init=torch_linear_uniform,
      bias_init=jax.nn.initializers.constant(ef_offset),
      dtype=self.dtype,
      rngs=rngs,
    )

  def normalize(self, video: jax.Array) -> jax.Array:
    """``[B, T, H, W, 1]`` pixels (uint8, or floats in 0-1) to the 3 normalised channels."""
    return normalize_pixels(video, self.input_mean, self.input_std, self.dtype)

  def __call__(
    self, video: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    del dropout_key  # torchvision's video ResNets have no dropout
    x = self.normalize(video)
    for conv, norm in zip(self.stem_convs, self.stem_norms):
      x = jax.nn.relu(_bn(norm, conv(x), train))
    for stage in self.stages:
      for block in stage:
        x = block(x, train=train)
    return self.fc(layers.global_average_pool(x))[:, 0].astype(jnp.float32)

  def torch_parameters(self) -> dict[str, tuple[nnx.Module, str]]:
    """Every array under its torchvision ``state_dict`` name: ``name -> (module, attribute)``
    (convolution kernels ``[T, H, W, in, out]`` here, ``[out, in, T, H, W]`` there)."""
    stem_index = (0, 3) if self.stem_kind == "r2plus1d" else (0,)
    names = {}
    for index, conv, norm in zip(stem_index, self.stem_convs, self.stem_norms):
      names[f"stem.{index}.weight"] = (conv, "kernel")
      names.update(_bn_names(norm, f"stem.{index + 1}."))
    for s, stage in enumerate(self.stages):
      for b, block in enumerate(stage):
        names.update(block.torch_names(f"layer{s + 1}.{b}."))
    names["fc.weight"] = (self.fc, "kernel")
    names["fc.bias"] = (self.fc, "bias")
    return names
