"""A small U-Net (Ronneberger et al., 2015) that segments the left ventricle in one frame.

The segmentation model the CPU demo trains (``configs/quickstart.py:model=segmentation``);
EchoNet-Dynamic's own, DeepLabV3-ResNet50, is ``lvef_jax.models.deeplabv3``. An encoder of
``depth`` levels (two 3x3 convolution-BatchNorm-ReLU layers, then a 2x2 max pool; the width
doubles each level from ``features``), a bottleneck of two more, and a decoder that upsamples
by 2 (nearest neighbour, then a 3x3 convolution halving the width, which avoids the
chequerboard of strided transposed convolutions), concatenates the encoder's map of that size
and applies two 3x3 layers; a 1x1 convolution gives one logit a pixel.

Input: grey frames ``[B, H, W, 1]`` (uint8 pixels, or floats in 0-1), ``H`` and ``W``
divisible by ``2**depth``, normalised as ``(pixel - input_mean) / input_std`` in pixel units
(computed on the train split when not given, as for the video ResNets). Output: logits
``[B, H, W]`` in float32 (the LV where the logit is positive).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import layers, r2plus1d


class Model(layers.EFModel):
  """U-Net from grey frames to per-pixel LV logits.

  Args:
    features: the first level's width (doubled at each level below).
    depth: pooling levels (the bottleneck sees ``H / 2**depth``).
    input_mean, input_std: pixel normalisation (one number each; ``None``: not known yet,
      then 0-1 scaling, as for ``--mode=summary``).
    init_from: ignored (the U-Net has no published weights).
  """

  def __init__(
    self,
    *,
    clip_frames: int,
    image_size: int,
    features: int,
    depth: int,
    input_mean,
    input_std,
    init_from: str,
    dtype: str,
    bn_momentum: float,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    del clip_frames, init_from  # one frame at a time; no published weights
    if depth < 1 or features < 1:
      raise ConfigError(f"model.depth and model.features must be positive, got {depth}, {features}")
    if image_size % 2**depth:
      raise ConfigError(
        f"data.image_size={image_size} must be divisible by 2**model.depth={2**depth} "
        "(each level halves the frame)"
      )
    self.dtype = jnp.dtype(dtype)
    self.input_mean, self.input_std = r2plus1d.input_normalization(
      input_mean, input_std, channels=1
    )
    block = dict(
      norm="batch", bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs, ndim=2, ops=ops
    )
    widths = [features * 2**level for level in range(depth + 1)]

    def pair(in_features, out_features):
      return nnx.List(
        [
          layers.ConvNormAct(in_features, out_features, 3, **block),
          layers.ConvNormAct(out_features, out_features, 3, **block),
        ]
      )

    self.down = nnx.List(
      [pair(1 if level == 0 else widths[level - 1], widths[level]) for level in range(depth)]
    )
    self.bottom = pair(widths[depth - 1], widths[depth])
    self.up = nnx.List(
      [layers.ConvNormAct(widths[level + 1], widths[level], 3, **block) for level in range(depth)]
    )
    self.merge = nnx.List([pair(2 * widths[level], widths[level]) for level in range(depth)])
    self.out = layers.conv(widths[0], 1, (1, 1), dtype=self.dtype, rngs=rngs, ops=ops)

  def __call__(
    self, images: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    del dropout_key  # no dropout
    x = r2plus1d.normalize_pixels(images, self.input_mean, self.input_std, self.dtype)
    skips = []
    for convs in self.down:
      for conv in convs:
        x = conv(x, train=train)
      skips.append(x)
      x = layers.max_pool(x, (2, 2), (2, 2), "VALID")
    for conv in self.bottom:
      x = conv(x, train=train)
    for level in reversed(range(len(self.down))):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = self.up[level](x, train=train)
      x = jnp.concatenate([skips[level], x], axis=-1)
      for conv in self.merge[level]:
        x = conv(x, train=train)
    return self.out(x)[..., 0].astype(jnp.float32)
