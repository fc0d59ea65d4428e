"""The paper's Fusion family (Tables 6 and 7): I3D-mini bodies combined with Two-Stream inputs.

Every kind builds on the I3D-mini body (:class:`lvef_jax.models.i3d.Body`: stem, conv2,
Inception 3a and 3b; 480 channels) and the stream inputs of :mod:`lvef_jax.models.streams`
(frames; per-frame standardised frame differences). The paper's architecture figures are
missing from its text, so the layer-level choices below are this project's reading of its
descriptions; ``docs/models.md`` gives the reasoning.

- ``combination``: the Two-Stream with an I3D-mini per stream, half-width stream inputs (left
  frames, right-half differences), a regression head per stream and the Two-Stream fusion
  (concat of the two scalars -> Dense(1024, ReLU) -> Dropout -> Dense(1)).
- ``new_combination``: the same two bodies, feature maps concatenated on channels before one
  shared head.
- ``dual_input``: full-resolution frames and differences through one shared (weight-tied)
  I3D-mini, then task-specific convolutions per stream, maps concatenated, one head. The
  shared body sees frames 1..T-1 beside the T-1 differences, stacked in one batch.
- ``dual_input_truncated``: the same shared body, maps concatenated right after it, one head.
- ``single_input``: frames only through I3D-mini; the 480-channel map is split into two
  240-channel streams, each with its own task-specific convolutions, concatenated, one head.

Task-specific convolutions: two ``ConvNormAct(task_features, 3x3x3)`` per stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lvef_jax.errors import ConfigError
from lvef_jax.models import heads, i3d, layers, streams

KINDS = ("combination", "new_combination", "dual_input", "dual_input_truncated", "single_input")
# Which kinds see half-width stream inputs (the rest see whole frames).
HALF_WIDTH_KINDS = ("combination", "new_combination")


class TaskConvs(nnx.Module):
  """Stream-specific convolutions between the shared body and the head."""

  def __init__(self, in_features: int, features: int, **conv_kwargs):
    self.blocks = nnx.List(
      [
        layers.ConvNormAct(in_features, features, 3, **conv_kwargs),
        layers.ConvNormAct(features, features, 3, **conv_kwargs),
      ]
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for block in self.blocks:
      x = block(x, train=train)
    return x


class Model(layers.EFModel):
  """Fusion regressor: clip batch ``[B, T, H, W, 1]`` -> EF ``[B]`` in %.

  Args:
    kind: one of ``KINDS``.
    conv2, norm, bn_momentum, dtype, ops: of the I3D-mini bodies (:class:`i3d.Body`).
    head: the regression head (``heads.HEADS``; each stream's head for ``combination``).
    dropout: head dropout (paper: 0.5).
    head_hidden: width of head C's hidden layer.
    task_features: width of the task-specific convolutions (dual_input, single_input).
    fusion_hidden: width of the Dense layer fusing the per-stream predictions (combination).
    ef_offset, ef_scale: the output is ``ef_offset + ef_scale * y`` (``layers.EFModel.to_ef``).
    clip_frames, image_size: input clip shape.
  """

  def __init__(
    self,
    *,
    kind: str,
    conv2: str,
    norm: str,
    head: str,
    dropout: float,
    head_hidden: int,
    task_features: int,
    fusion_hidden: int,
    bn_momentum: float,
    ef_offset: float,
    ef_scale: float,
    dtype: str,
    clip_frames: int,
    image_size: int,
    rngs: nnx.Rngs,
    ops: layers.Ops = layers.XLA_OPS,
  ):
    if kind not in KINDS:
      raise ConfigError(f"Fusion kind must be one of {KINDS}, got {kind!r}")
    self.kind, self.rate = kind, dropout
    self.dtype = jnp.dtype(dtype)
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    self.split = "halves" if kind in HALF_WIDTH_KINDS else "full"

    def body():
      return i3d.Body(
        variant="mini",
        conv2=conv2,
        norm=norm,
        bn_momentum=bn_momentum,
        dtype=self.dtype,
        rngs=rngs,
        ops=ops,
      )

    conv_kwargs = dict(norm=norm, bn_momentum=bn_momentum, dtype=self.dtype, rngs=rngs, ops=ops)
    head_kwargs = dict(dropout=dropout, hidden=head_hidden, dtype=self.dtype, rngs=rngs, ops=ops)
    width = streams.stream_width(image_size, self.split)

    if kind in HALF_WIDTH_KINDS:
      self.spatial_body, self.temporal_body = body(), body()
      features = self.spatial_body.out_features
      # The difference stream is one frame shorter; align_time crops to the shorter map.
      map_shape = self.temporal_body.map_shape(clip_frames - 1, image_size, width)
    else:
      self.body = body()
      features = self.body.out_features
      # The dual-input body sees T - 1 frames: frames 1..T-1 beside the T - 1 differences.
      frames = clip_frames if kind == "single_input" else clip_frames - 1
      map_shape = self.body.map_shape(frames, image_size, width)

    if kind == "combination":
      self.spatial_head = heads.Head(head, features, map_shape, **head_kwargs)
      self.temporal_head = heads.Head(head, features, map_shape, **head_kwargs)
      self.fusion = layers.dense(2, fusion_hidden, dtype=self.dtype, rngs=rngs)
      self.out = layers.dense(fusion_hidden, 1, dtype=self.dtype, rngs=rngs)
      return
    if kind == "dual_input":
      self.spatial_convs = TaskConvs(features, task_features, **conv_kwargs)
      self.temporal_convs = TaskConvs(features, task_features, **conv_kwargs)
      head_features = 2 * task_features
    elif kind == "single_input":
      self.first_convs = TaskConvs(features // 2, task_features, **conv_kwargs)
      self.second_convs = TaskConvs(features - features // 2, task_features, **conv_kwargs)
      head_features = 2 * task_features
    else:  # new_combination, dual_input_truncated: concatenated body maps
      head_features = 2 * features
    self.head = heads.Head(head, head_features, map_shape, **head_kwargs)

  def __call__(
    self, video: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    """Predicts EF (%) for each clip; ``dropout_key`` is required when ``train`` is True."""
    keys = layers.dropout_keys(dropout_key, 3)
    frames, diffs = streams.stream_inputs(video, self.split, self.dtype)
    if self.kind == "combination":
      spatial, temporal = streams.align_time(
        self.spatial_body(frames, train=train), self.temporal_body(diffs, train=train)
      )
      scores = jnp.stack(
        [
          self.spatial_head(spatial, train=train, dropout_key=keys[0]),
          self.temporal_head(temporal, train=train, dropout_key=keys[1]),
        ],
        axis=-1,
      )
      x = jax.nn.relu(self.fusion(scores.astype(self.dtype)))
      y = self.out(layers.dropout(x, self.rate, train=train, key=keys[2]))[:, 0]
      return self.to_ef(y)
    if self.kind == "new_combination":
      maps = [self.spatial_body(frames, train=train), self.temporal_body(diffs, train=train)]
    elif self.kind == "single_input":
      x = self.body(frames, train=train)
      half = x.shape[-1] // 2
      maps = [
        self.first_convs(x[..., :half], train=train),
        self.second_convs(x[..., half:], train=train),
      ]
    else:
      # One pass of the shared body over both inputs stacked on the batch axis, so that its
      # BatchNorms see (and keep running averages of) one joint distribution, the same in
      # training and inference. Frame t is paired with the difference ending at it.
      both = self.body(jnp.concatenate([frames[:, 1:], diffs], axis=0), train=train)
      maps = jnp.split(both, 2, axis=0)
      if self.kind == "dual_input":
        maps = [self.spatial_convs(maps[0], train=train), self.temporal_convs(maps[1], train=train)]
    x = jnp.concatenate(streams.align_time(*maps), axis=-1)
    return self.to_ef(self.head(x, train=train, dropout_key=keys[0]))
