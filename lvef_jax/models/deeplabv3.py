"""torchvision's DeepLabV3-ResNet50, the per-frame LV segmentation model of EchoNet-Dynamic.

Layer for layer as ``torchvision.models.segmentation.deeplabv3_resnet50(aux_loss=False)``
builds it (Chen et al., 2017), with EchoNet-Dynamic's one-channel output (its last convolution
replaced by ``Conv2d(256, 1, kernel_size=1)``: one logit a pixel, trained with BCE):

- the backbone, ResNet-50 up to ``layer4``: a 7x7 stride-2 stem, BatchNorm, ReLU and a 3x3
  stride-2 max pool (padding 1), then four stages of 3, 4, 6 and 3 bottleneck blocks (1x1,
  3x3, 1x1 convolutions, 4x expansion, the stride on the 3x3: ResNet v1.5). The last two stages
  trade their stride for dilation (``replace_stride_with_dilation=[False, True, True]``: output
  stride 8); as torchvision's ``_make_layer``, a dilated stage's first block keeps the dilation
  before it (``layer3``: 1 then 2; ``layer4``: 2 then 4);
- ``DeepLabHead``: ASPP (a 1x1 branch, 3x3 branches dilated 12, 24 and 36, and image pooling:
  global average, 1x1 convolution, BN, ReLU, spread back over the map; each 256 wide), the
  1280 channels projected to 256 (1x1, BN, ReLU, dropout 0.5), a 3x3 convolution, BN, ReLU and
  the 1x1 output convolution (with bias);
- the logits upsampled to the input size as ``F.interpolate(mode="bilinear",
  align_corners=False)``: ``jax.image.resize`` with ``antialias=False`` computes the same
  (half-pixel centres, the edge sample repeated; tests/test_deeplabv3.py compares them).

Inputs are as the video ResNets' (``lvef_jax.models.r2plus1d``): grey frames repeated to 3
channels, each normalised by ``input_mean`` and ``input_std`` in pixel units. BatchNorm keeps
PyTorch's epsilon (1e-5). Initialisation is torchvision's: the backbone's convolutions He
normal (fan-out), its BatchNorm scale 1 and bias 0; the head's convolutions as torchvision
leaves them, PyTorch's ``Conv2d`` default (``kaiming_uniform_(a=sqrt(5))``, i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the output bias from the same range), the head's
BatchNorm scale 1 and bias 0.

:meth:`Model.torch_parameters` names every array as torchvision's ``state_dict`` does
(``backbone.layer1.0.conv1.weight``, ``classifier.0.convs.4.1.weight``, ...), so
``lvef_jax.models.torch_import`` loads EchoNet-Dynamic's ``deeplabv3_resnet50_random.pt`` and
torchvision's COCO weights (all but their 21-class output layer and auxiliary classifier).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers, r2plus1d

ARCHS = ("resnet50",)
STEM_FEATURES = 64
# ResNet-50's stages: blocks, bottleneck width (the output is EXPANSION times it), stride, and
# whether the stride becomes dilation (replace_stride_with_dilation=[False, True, True]).
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
STAGE_DILATE = (False, False, True, True)
EXPANSION = 4
ASPP_RATES = (12, 24, 36)
HEAD_FEATURES = 256
HEAD_DROPOUT = 0.5  # torchvision's ASPP projection
OUTPUT_FEATURES = 1  # EchoNet-Dynamic's Conv2d(256, 1, 1): one LV logit a pixel


def torch_conv_uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """A fresh ``torch.nn.Conv2d``'s weight: ``kaiming_uniform_(a=sqrt(5))``, which is
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = kernel area x input channels (kernels
  ``[H, W, in, out]``), drawn on the host as ``layers.glorot_uniform`` is."""
  bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
  return layers._host_draw(
    key, lambda rng: rng.uniform(-bound, bound, size=tuple(shape)), shape, dtype
  )


def torch_bias_uniform(fan_in: int) -> Callable:
  """A fresh ``torch.nn.Conv2d``'s bias initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    return layers._host_draw(
      key, lambda rng: rng.uniform(-bound, bound, size=tuple(shape)), shape, dtype
    )

  return init


def _conv(
  in_features: int,
  features: int,
  kernel: int,
  *,
  kernel_init: Callable,
  dtype,
  rngs: nnx.Rngs,
  ops: layers.Ops,
  strides: int = 1,
  dilation: int = 1,
  bias_init: Callable | None = None,
) -> nnx.Conv:
  """A square 2-D convolution padded as torchvision pads it (``dilation * (kernel // 2)`` on
  each side): ``SAME`` at stride 1 (the same, and the CPU forms apply), explicit otherwise. No
  bias unless ``bias_init`` is given. (``layers.conv`` takes no dilation, hence ``ops.conv``.)"""
  reach = dilation * (kernel // 2)
  return ops.conv(
    in_features,
    features,
    (kernel, kernel),
    strides=(strides, strides),
    padding="SAME" if strides == 1 else ((reach, reach), (reach, reach)),
    kernel_dilation=(dilation, dilation),
    use_bias=bias_init is not None,
    kernel_init=kernel_init,
    bias_init=bias_init or jax.nn.initializers.zeros,
    dtype=dtype,
    rngs=rngs,
  )


def stage_plan() -> list[tuple[int, int, int, int]]:
  """``(width, stride, first dilation, dilation)`` of each ResNet-50 stage, by torchvision's
  rule: a stage that dilates instead of striding multiplies the running dilation by its stride
  and runs at stride 1; its first block keeps the dilation from before, the others take the
  new one. Here ``(64, 1, 1, 1), (128, 2, 1, 1), (256, 1, 1, 2), (512, 1, 2, 4)``."""
  plan, dilation = [], 1
  for width, stride, dilate in zip(STAGE_WIDTHS, STAGE_STRIDES, STAGE_DILATE):
    previous = dilation
    if dilate:
      dilation, stride = dilation * stride, 1
    plan.append((width, stride, previous, dilation))
  return plan


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """``[B, h, w, C]`` to ``[B, *size, C]`` as torch's ``F.interpolate(mode="bilinear",
  align_corners=False)`` (no antialiasing), in float32."""
  shape = (x.shape[0], *size, x.shape[-1])
  return jax.image.resize(x.astype(jnp.float32), shape, method="bilinear", antialias=False)


class Bottleneck(nnx.Module):
  """torchvision's ``Bottleneck``: 1x1, BN, ReLU, 3x3 (the block's stride and dilation), BN,
  ReLU, 1x1 to ``EXPANSION * width``, BN, plus the shortcut (a strided 1x1 convolution and BN
  where the shape changes), ReLU."""

  def __init__(
    self,
    in_features: int,
    width: int,
    stride: int,
    dilation: int,
    *,
    bn_momentum,
    dtype,
    rngs,
    ops,
  ):
    features = width * EXPANSION
    conv = dict(kernel_init=r2plus1d.kaiming_normal_fan_out, dtype=dtype, rngs=rngs, ops=ops)
    norm = dict(momentum=bn_momentum, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(in_features, width, 1, **conv)
    self.bn1 = r2plus1d._batch_norm(width, **norm)
    self.conv2 = _conv(width, width, 3, strides=stride, dilation=dilation, **conv)
    self.bn2 = r2plus1d._batch_norm(width, **norm)
    self.conv3 = _conv(width, features, 1, **conv)
    self.bn3 = r2plus1d._batch_norm(features, **norm)
    downsample = None  # the shortcut is the identity where the shape stays
    if stride != 1 or in_features != features:
      downsample = nnx.List(
        [
          _conv(in_features, features, 1, strides=stride, **conv),
          r2plus1d._batch_norm(features, **norm),
        ]
      )
    self.downsample = downsample

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    bn = r2plus1d._bn
    y = jax.nn.relu(bn(self.bn1, self.conv1(x), train))
    y = jax.nn.relu(bn(self.bn2, self.conv2(y), train))
    y = bn(self.bn3, self.conv3(y), train)
    if self.downsample is not None:
      conv, norm = self.downsample
      x = bn(norm, conv(x), train)
    return jax.nn.relu(y + x)

  def torch_names(self, prefix: str) -> dict:
    names = {}
    for index in (1, 2, 3):
      names[f"{prefix}conv{index}.weight"] = (getattr(self, f"conv{index}"), "kernel")
      names.update(r2plus1d._bn_names(getattr(self, f"bn{index}"), f"{prefix}bn{index}."))
    if self.downsample is not None:
      names[f"{prefix}downsample.0.weight"] = (self.downsample[0], "kernel")
      names.update(r2plus1d._bn_names(self.downsample[1], f"{prefix}downsample.1."))
    return names


class ASPP(nnx.Module):
  """torchvision's ``ASPP``: five branches of ``features`` channels each (1x1; 3x3 at each of
  ``rates``; image pooling), each convolution-BN-ReLU, concatenated and projected to
  ``features`` (1x1, BN, ReLU, dropout ``rate``)."""

  def __init__(
    self,
    in_features: int,
    rates: Sequence[int],
    features: int,
    *,
    bn_momentum,
    dtype,
    rngs,
    ops,
  ):
    conv = dict(kernel_init=torch_conv_uniform, dtype=dtype, rngs=rngs, ops=ops)
    norm = dict(momentum=bn_momentum, dtype=dtype, rngs=rngs)
    self.convs = nnx.List(
      [
        _conv(in_features, features, 1, **conv),
        *(_conv(in_features, features, 3, dilation=rate, **conv) for rate in rates),
        _conv(in_features, features, 1, **conv),  # the pooling branch's
      ]
    )
    self.norms = nnx.List([r2plus1d._batch_norm(features, **norm) for _ in self.convs])
    self.project = _conv(features * len(self.convs), features, 1, **conv)
    self.project_norm = r2plus1d._batch_norm(features, **norm)
    self.rate = HEAD_DROPOUT  # grid search sets it (models.set_member_hparams)

  def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None) -> jax.Array:
    bn = r2plus1d._bn
    branches = [
      jax.nn.relu(bn(norm, conv(x), train)) for conv, norm in zip(self.convs[:-1], self.norms[:-1])
    ]
    pooled = layers.global_average_pool(x)[:, None, None, :]
    pooled = jax.nn.relu(bn(self.norms[-1], self.convs[-1](pooled), train))
    # torchvision upsamples the 1x1 map bilinearly: every position takes its one value.
    branches.append(jnp.broadcast_to(pooled, (*x.shape[:-1], pooled.shape[-1])))
    y = jnp.concatenate(branches, axis=-1)
    y = jax.nn.relu(bn(self.project_norm, self.project(y), train))
    return layers.dropout(y, self.rate, train=train, key=dropout_key)

  def torch_names(self, prefix: str) -> dict:
    """Under ``prefix`` (``classifier.0.``): ``convs.<i>.0`` (``convs.4.1`` for the pooling
    branch, whose ``convs.4.0`` is the pool) and the BN after it, ``project.0`` and
    ``project.1``."""
    names = {}
    for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      at = 1 if index == len(self.convs) - 1 else 0
      names[f"{prefix}convs.{index}.{at}.weight"] = (conv, "kernel")
      names.update(r2plus1d._bn_names(norm, f"{prefix}convs.{index}.{at + 1}."))
    names[f"{prefix}project.0.weight"] = (self.project, "kernel")
    names.update(r2plus1d._bn_names(self.project_norm, f"{prefix}project.1."))
    return names


class Model(layers.EFModel):
  """torchvision's DeepLabV3-ResNet50 with one output channel: grey frames ``[B, H, W, 1]``
  (uint8, or floats in 0-1) to LV logits ``[B, H, W]`` (float32).

  Args:
    arch: ``resnet50`` (the backbone; the only one EchoNet-Dynamic's segmentation used).
    input_mean, input_std: per-channel normalisation in pixel units (one number or three);
      ``None``: not known yet, then pixels scaled to 0-1 (as ``lvef_jax.models.r2plus1d``).
    clip_frames, image_size: ignored (any frame size; the model sees one frame at a time).
    init_from: a PyTorch weights file that training and ``--mode=import`` start from
      (``lvef_jax.models.torch_import``); the model itself ignores it.
  """

  torch_head = "classifier.4."  # the output layer: another width (COCO's 21) starts fresh

  def __init__(
    self,
    *,
    clip_frames: int,
    image_size: int,
    arch: str = "resnet50",
    input_mean,
    input_std,
    init_from: str,
    dtype: str,
    bn_momentum: float,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    del clip_frames, image_size, init_from  # any frame size; the weights file is the trainer's
    if arch not in ARCHS:
      raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    self.arch, self.dtype, self.ops = arch, jnp.dtype(dtype), ops
    self.input_mean, self.input_std = r2plus1d.input_normalization(input_mean, input_std)
    common = dict(dtype=self.dtype, rngs=rngs, ops=ops)
    norm = dict(momentum=bn_momentum, dtype=self.dtype, rngs=rngs)
    self.conv1 = _conv(
      3, STEM_FEATURES, 7, strides=2, kernel_init=r2plus1d.kaiming_normal_fan_out, **common
    )
    self.bn1 = r2plus1d._batch_norm(STEM_FEATURES, **norm)
    stages, features = [], STEM_FEATURES
    for blocks, (width, stride, first_dilation, dilation) in zip(STAGE_BLOCKS, stage_plan()):
      stage = []
      for index in range(blocks):
        stage.append(
          Bottleneck(
            features,
            width,
            stride if index == 0 else 1,
            first_dilation if index == 0 else dilation,
            bn_momentum=bn_momentum,
            **common,
          )
        )
        features = width * EXPANSION
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    self.aspp = ASPP(features, ASPP_RATES, HEAD_FEATURES, bn_momentum=bn_momentum, **common)
    self.head_conv = _conv(
      HEAD_FEATURES, HEAD_FEATURES, 3, kernel_init=torch_conv_uniform, **common
    )
    self.head_norm = r2plus1d._batch_norm(HEAD_FEATURES, **norm)
    self.output = _conv(
      HEAD_FEATURES,
      OUTPUT_FEATURES,
      1,
      kernel_init=torch_conv_uniform,
      bias_init=torch_bias_uniform(HEAD_FEATURES),
      **common,
    )

  def normalize(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, 1]`` pixels (uint8, or floats in 0-1) to the 3 normalised channels."""
    return r2plus1d.normalize_pixels(images, self.input_mean, self.input_std, self.dtype)

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Normalised ``[B, H, W, 3]`` to ``layer4``'s ``[B, ~H/8, ~W/8, 2048]``."""
    x = jax.nn.relu(r2plus1d._bn(self.bn1, self.conv1(x), train))
    # torch's MaxPool2d(3, stride=2, padding=1): -inf padding on both sides, then no more.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = self.ops.max_pool(x, (3, 3), (2, 2), "VALID")
    for stage in self.stages:
      for block in stage:
        x = block(x, train=train)
    return x

  def __call__(
    self, images: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    x = self.backbone(self.normalize(images), train=train)
    x = self.aspp(x, train=train, dropout_key=dropout_key)
    x = jax.nn.relu(r2plus1d._bn(self.head_norm, self.head_conv(x), train))
    return resize_bilinear(self.output(x), images.shape[1:3])[..., 0]

  def torch_parameters(self) -> dict[str, tuple[nnx.Module, str]]:
    """Every array under its torchvision ``state_dict`` name: ``name -> (module, attribute)``
    (convolution kernels ``[H, W, in, out]`` here, ``[out, in, H, W]`` there)."""
    names = {"backbone.conv1.weight": (self.conv1, "kernel")}
    names.update(r2plus1d._bn_names(self.bn1, "backbone.bn1."))
    for s, stage in enumerate(self.stages):
      for b, block in enumerate(stage):
        names.update(block.torch_names(f"backbone.layer{s + 1}.{b}."))
    names.update(self.aspp.torch_names("classifier.0."))
    names["classifier.1.weight"] = (self.head_conv, "kernel")
    names.update(r2plus1d._bn_names(self.head_norm, "classifier.2."))
    names[f"{self.torch_head}weight"] = (self.output, "kernel")
    names[f"{self.torch_head}bias"] = (self.output, "bias")
    return names
