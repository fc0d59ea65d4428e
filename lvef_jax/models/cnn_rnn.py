"""The paper's CNN-RNN family (Tables 8 and 9): a per-frame 2-D CNN, a recurrent head, Dense(1).

Each frame of the clip goes through the same 2-D CNN (Keras' ``TimeDistributed``), giving one
feature vector per frame; two recurrent layers read the sequence; then
Dropout -> Dense(head_hidden, ReLU) -> Dense(1), as the Keras CNN-RNN example the paper adapted.

Backbones:
- ``inception_v3``: Keras' InceptionV3 (:mod:`lvef_jax.models.inception_v3`), grey frames
  scaled to [-1, 1] (``inception_v3.preprocess_input``) and triplicated to RGB; ImageNet
  weights imported from a Keras weights file (``backbone_weights``). ``train_backbone``
  chooses what fine-tunes: ``frozen``, ``all``, or the last 5 or 7 Inception blocks
  (``last5`` = mixed6..mixed10, ``last7`` = mixed4..mixed10).
- ``i3d_mini_2d``: the I3D-mini stem and Inception Module 3 with 2-D kernels, trained from
  scratch: Conv2D(64, 7x7, stride 2) -> norm -> ReLU -> MaxPool(3x3, stride 2) ->
  Conv2D(192, 1x1) -> MaxPool(3x3, stride 2) -> Inception 3a -> 3b -> global average pool.

Norms: ``batch`` and ``layer`` (the paper's per-sample LayerNorm) in the CNN, ``mixed`` (the
paper's "Mixed1": BatchNorm in the CNN and layer-normalised recurrent cells) and
``layer_channels`` (LayerNorm over channels only, for comparison).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import i3d, inception_v3, layers, recurrent

BACKBONES = ("inception_v3", "i3d_mini_2d")
NORMS = ("batch", "layer", "layer_channels", "mixed")
# Trainable trailing blocks of InceptionV3 (of inception_v3.BLOCKS: the stem and mixed0..10).
TRAIN_BACKBONE = {"frozen": 0, "last5": 5, "last7": 7, "all": len(inception_v3.BLOCKS)}
INCEPTION_MIN_SIZE = 75  # Keras' smallest input for InceptionV3


class MiniInception2D(nnx.Module):
  """I3D-mini's stem and Module 3 in 2-D: ``[N, H, W, 1]`` frames -> ``[N, 480]`` features."""

  def __init__(
    self, *, norm: str, bn_momentum: float, dtype, rngs: nnx.Rngs, ops: layers.Ops = layers.XLA_OPS
  ):
    self.ops = ops
    self.stem_conv = layers.conv(
      1, i3d.STEM_FEATURES, (7, 7), strides=2, dtype=dtype, rngs=rngs, ops=ops
    )
    self.stem_norm = layers.Norm(
      i3d.STEM_FEATURES, norm, momentum=bn_momentum, dtype=dtype, rngs=rngs
    )
    # conv2 stays 1x1: the paper kept the original kernel for its 2-D CNN-RNN models.
    self.conv2 = layers.conv(
      i3d.STEM_FEATURES, i3d.CONV2_FEATURES, (1, 1), dtype=dtype, rngs=rngs, ops=ops
    )
    conv_kwargs = dict(norm=norm, bn_momentum=bn_momentum, dtype=dtype, rngs=rngs, ops=ops)
    features, modules = i3d.CONV2_FEATURES, []
    for name in i3d.STAGES["im3"][1]:
      modules.append(i3d.Inception(features, i3d.INCEPTION_WIDTHS[name], ndim=2, **conv_kwargs))
      features = modules[-1].out_features
    self.modules = nnx.List(modules)
    self.out_features = features

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.ops.max_pool(
      jax.nn.relu(self.stem_norm(self.stem_conv(x), train=train)), (3, 3), (2, 2)
    )
    x = self.ops.max_pool(self.conv2(x), (3, 3), (2, 2))
    for module in self.modules:
      x = module(x, train=train)
    return layers.global_average_pool(x)


class Model(layers.EFModel):
  """CNN-RNN regressor: clip batch ``[B, T, H, W, 1]`` -> EF ``[B]`` in %.

  Args:
    backbone: one of ``BACKBONES``.
    rnn: ``"gru"`` or ``"lstm"``.
    norm: one of ``NORMS`` (``inception_v3`` comes with BatchNorm: ``batch`` or ``mixed``).
    train_backbone: one of ``TRAIN_BACKBONE`` (``inception_v3``; the scratch backbone always
      trains, ``all``).
    backbone_weights: Keras InceptionV3 weights file; "" starts from random weights.
    rnn_features: units of the stacked recurrent layers (the adapted example: 16, 8).
    head_hidden: width of the Dense layer after the recurrent layers.
    dropout: dropout after the recurrent layers (paper: 0.4).
    bn_momentum, ef_offset, dtype, ops: as for the other families.
    clip_frames, image_size: input clip shape.
  """

  def __init__(
    self,
    *,
    backbone: str,
    rnn: str,
    norm: str,
    train_backbone: str,
    backbone_weights: str,
    rnn_features,
    head_hidden: int,
    dropout: float,
    bn_momentum: float,
    ef_offset: float,
    ef_scale: float,
    dtype: str,
    clip_frames: int,
    image_size: int,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    del clip_frames  # the recurrent layers take any number of frames
    for name, value, allowed in (
      ("backbone", backbone, BACKBONES),
      ("norm", norm, NORMS),
      ("train_backbone", train_backbone, TRAIN_BACKBONE),
    ):
      if value not in allowed:
        raise ConfigError(f"CNN-RNN {name} must be one of {sorted(allowed)}, got {value!r}")
    self.dtype = jnp.dtype(dtype)
    self.backbone_kind, self.rate = backbone, dropout
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    cnn_norm = "batch" if norm == "mixed" else norm
    if backbone == "inception_v3":
      if cnn_norm != "batch":
        raise ConfigError(
          f"CNN-RNN norm={norm!r} needs backbone=i3d_mini_2d: InceptionV3's "
          "ImageNet weights come with BatchNorm (use norm=batch or mixed)"
        )
      if image_size < INCEPTION_MIN_SIZE:
        raise ConfigError(
          f"InceptionV3 needs frames of at least {INCEPTION_MIN_SIZE}x"
          f"{INCEPTION_MIN_SIZE} pixels, got image_size={image_size}"
        )
      self.trainable_blocks = TRAIN_BACKBONE[train_backbone]
      self.backbone = inception_v3.InceptionV3(
        bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs, ops=ops
      )
      if backbone_weights:
        inception_v3.load_keras_weights(self.backbone, backbone_weights)
        logging.info("InceptionV3 weights imported from %s", backbone_weights)
      else:
        logging.warning(
          "InceptionV3 starts from random weights: set "
          "config.model.backbone_weights to a Keras ImageNet weights file"
        )
      features = inception_v3.FEATURES
    else:
      if train_backbone != "all":
        raise ConfigError(
          "the i3d_mini_2d backbone is trained from scratch: "
          f"train_backbone must be 'all', got {train_backbone!r}"
        )
      if backbone_weights:
        raise ConfigError("backbone_weights is for backbone=inception_v3")
      self.trainable_blocks = None
      self.backbone = MiniInception2D(
        norm=cnn_norm, bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs, ops=ops
      )
      features = self.backbone.out_features
    rnns = []
    for units in rnn_features:
      rnns.append(
        recurrent.Recurrent(
          features, units, rnn, layer_norm=norm == "mixed", dtype=self.dtype, rngs=rngs
        )
      )
      features = units
    self.rnns = nnx.List(rnns)
    self.hidden = layers.dense(features, head_hidden, dtype=self.dtype, rngs=rngs)
    self.out = layers.dense(head_hidden, 1, dtype=self.dtype, rngs=rngs)

  def frame_features(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """Per-frame CNN features ``[B, T, F]`` of a clip batch."""
    batch, frames = video.shape[:2]
    x = layers.to_unit_range(video, self.dtype).reshape(batch * frames, *video.shape[2:])
    if self.backbone_kind == "inception_v3":
      x = jnp.repeat(x * 2.0 - 1.0, 3, axis=-1)  # preprocess_input's [-1, 1], grey to RGB
      x = self.backbone(x, train=train, trainable_blocks=self.trainable_blocks)
    else:
      x = self.backbone(x, train=train)
    return x.reshape(batch, frames, -1)

  def __call__(
    self, video: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    """Predicts EF (%) for each clip; ``dropout_key`` is required when ``train`` is True."""
    x = self.frame_features(video, train=train)
    for layer in self.rnns:
      x = layer(x)
    x = layers.dropout(x[:, -1].astype(self.dtype), self.rate, train=train, key=dropout_key)
    y = self.out(jax.nn.relu(self.hidden(x)))
    return self.to_ef(y[:, 0])

  def trainable(self, path: tuple) -> bool:
    """Frozen InceptionV3 blocks do not train (the optimizer masks them)."""
    if self.trainable_blocks is None or not path or path[0] != "backbone":
      return True
    index = inception_v3.block_index(path)
    return index is None or index >= len(inception_v3.BLOCKS) - self.trainable_blocks
