"""Every model family (the paper's and EchoNet-Dynamic's): variants, documented parameter counts,
a learning step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import models
from lvef_jax.models import cnn_rnn, recurrent, streams, two_stream
from lvef_jax.reporting import summary
from lvef_jax import sharding
from lvef_jax.training import state as state_lib, steps
from tests.conftest import load_config

# Trainable parameters at the paper's input (28x112x112x1 clips), as listed in docs/models.md.
PAPER_SHAPE_COUNTS = {
  "i3d:variant=mini": 1536001,
  "i3d:variant=mini,head=og": 1536001 - 481 + 13 * 11 * 11 * 480 + 1,
  "two_stream:norm=batch": 86710403,
  "two_stream:norm=layer": 86710403,
  "two_stream:split=full": 173414531,
  "fusion:kind=combination": 3076099,
  "fusion:kind=combination,norm=layer": 3076099,
  "fusion:kind=new_combination": 3072001,
  "fusion:kind=new_combination,conv2=3x3x3,norm=layer": 3710977,
  "fusion:kind=dual_input": 5739297,
  "fusion:kind=dual_input,conv2=3x3x3": 6058785,
  "fusion:kind=dual_input_truncated": 1536481,
  "fusion:kind=single_input": 4080417,
  "fusion:kind=single_input,conv2=3x3x3,norm=layer": 4399905,
  "cnn_rnn:backbone=i3d_mini_2d,rnn=gru": 628929,
  "cnn_rnn:backbone=i3d_mini_2d,rnn=lstm": 637009,
  "cnn_rnn:backbone=i3d_mini_2d,rnn=gru,norm=layer": 628929,
  "cnn_rnn:backbone=i3d_mini_2d,rnn=gru,norm=mixed": 629217,
  "cnn_rnn:backbone=i3d_mini_2d,rnn=lstm,norm=mixed": 637441,
  "cnn_rnn:backbone=inception_v3,rnn=gru": 99873,
  "cnn_rnn:backbone=inception_v3,rnn=lstm": 133041,
  "cnn_rnn:backbone=inception_v3,rnn=gru,train_backbone=last5": 16741089,
  "cnn_rnn:backbone=inception_v3,rnn=gru,train_backbone=last7": 19726241,
  "cnn_rnn:backbone=inception_v3,rnn=gru,train_backbone=all": 21868225,
  # torchvision's video ResNets with a 1-output fc: their 400-class counts - 400 * 512 - 400 + 513.
  "r2plus1d:arch=r2plus1d_18": 31505325 - 205200 + 513,
  "r2plus1d:arch=r3d_18": 33371472 - 205200 + 513,
  "r2plus1d:arch=mc3_18": 11695440 - 205200 + 513,
}
# Every variant the configs offer, built at a tiny clip shape (InceptionV3 needs >= 75 px).
TINY_VARIANTS = [
  "i3d:variant=mini,norm=layer",
  "two_stream:norm=batch",
  "two_stream:norm=layer,split=full",
  *(
    f"fusion:kind={kind},norm={norm}"
    for kind in (
      "combination",
      "new_combination",
      "dual_input",
      "dual_input_truncated",
      "single_input",
    )
    for norm in ("batch", "layer")
  ),
  *(
    f"cnn_rnn:backbone=i3d_mini_2d,rnn={rnn},norm={norm}"
    for rnn in ("gru", "lstm")
    for norm in ("batch", "layer", "mixed")
  ),
  *(f"r2plus1d:arch={arch}" for arch in ("r2plus1d_18", "r3d_18", "mc3_18")),
]


def _config(spec: str, clip_frames=8, image_size=16):
  name, _, arg = spec.partition(":")
  config = load_config(name, arg)
  config.data.update(clip_frames=clip_frames, image_size=image_size)
  return config


def _clips(batch, frames, size, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, frames, size, size, 1), dtype=np.uint8)


@pytest.mark.parametrize("spec", sorted(PAPER_SHAPE_COUNTS))
def test_documented_parameter_counts_at_the_paper_shape(spec):
  config = _config(spec, clip_frames=28, image_size=112)
  model = jax.eval_shape(lambda: models.create_model(config))  # shapes only: fast
  assert models.count_params(model, trainable_only=True) == PAPER_SHAPE_COUNTS[spec]


@pytest.mark.parametrize("spec", TINY_VARIANTS)
def test_every_variant_maps_clips_to_finite_ef(spec):
  model = models.create_model(_config(spec))
  clips = jnp.asarray(_clips(3, 8, 16))
  for train in (False, True):
    ef = model(clips, train=train, dropout_key=jax.random.key(0))
    assert ef.shape == (3,) and ef.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(ef))), spec


def _fixed_batch(batch_size, frames, size):
  """A batch whose EF is a function of the clip (mean brightness), so it can be learnt."""
  video = _clips(batch_size, frames, size, seed=5)
  ef = (20 + 60 * video.mean(axis=(1, 2, 3, 4)) / 255).astype(np.float32)
  return {"video": video, "ef": ef}


@pytest.mark.parametrize(
  "spec,num_steps",
  [
    ("two_stream:norm=layer", 30),
    ("fusion:kind=single_input", 30),
    ("fusion:kind=new_combination,norm=layer", 30),
    # The CNN-RNN learns this batch more slowly: after 30 steps its loss sat at half the first
    # (0.497-0.505 of it, as float rounding changed); after 50 at about a third (0.36).
    ("cnn_rnn:backbone=i3d_mini_2d,rnn=lstm,norm=mixed", 50),
  ],
)
@pytest.mark.slow
def test_train_steps_lower_the_loss_on_a_fixed_batch(spec, num_steps):
  config = _config(spec)
  config.train.update(learning_rate=3e-3, grad_clip_norm=0.0)
  mesh = sharding.make_mesh()
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=100)
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(graphdef, tx, mesh)
  batch = sharding.shard_batch(_fixed_batch(8, 8, 16), mesh)
  losses = []
  for _ in range(num_steps):
    state, out = train_step(state, batch)
    losses.append(float(out["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_two_stream_inputs_and_penalty():
  clips = jnp.asarray(_clips(2, 6, 8))
  spatial, temporal = streams.stream_inputs(clips, "halves", jnp.float32)
  assert spatial.shape == (2, 6, 8, 4, 1) and temporal.shape == (2, 5, 8, 4, 1)
  x = clips.astype(jnp.float32) / 255
  np.testing.assert_allclose(spatial, x[:, :, :, :4], rtol=1e-6)
  diff = np.asarray(x[:, 1:, :, 4:] - x[:, :-1, :, 4:])
  expected = (diff - diff.mean(axis=(2, 3, 4), keepdims=True)) / diff.std(
    axis=(2, 3, 4), keepdims=True
  )
  np.testing.assert_allclose(temporal, expected, rtol=1e-4, atol=1e-4)
  full_spatial, full_temporal = streams.stream_inputs(clips, "full", jnp.float32)
  assert full_spatial.shape == (2, 6, 8, 8, 1) and full_temporal.shape == (2, 5, 8, 8, 1)

  model = models.create_model(_config("two_stream:norm=layer"))
  kernels = model.spatial.kernels() + model.temporal.kernels() + [model.fusion.kernel[...]]
  expected_penalty = 0.05 * sum(float(jnp.sum(k**2)) for k in kernels)
  assert float(model.regularization_loss()) == pytest.approx(expected_penalty, rel=1e-5)
  with pytest.raises(ValueError, match="split"):
    models.create_model(_config("two_stream:split=thirds"))


def test_dual_input_shares_one_body_and_single_input_splits_its_map():
  dual = models.create_model(_config("fusion:kind=dual_input"))
  truncated = models.create_model(_config("fusion:kind=dual_input_truncated"))
  mini = models.create_model(_config("i3d:variant=mini"))
  body = models.count_params(mini.body)
  assert models.count_params(truncated) == body + 2 * 480 + 1  # one body, head on 960 channels
  assert models.count_params(dual.body) == body
  single = models.create_model(_config("fusion:kind=single_input"))
  assert single.first_convs.blocks[0].conv.kernel.shape == (3, 3, 3, 240, 128)


@pytest.mark.parametrize(
  "rnn,units,expected",
  [
    # Keras: GRU(reset_after) 3 * (in*u + u*u + 2u); LSTM 4 * (in*u + u*u + u).
    ("gru", 16, 3 * (480 * 16 + 16 * 16 + 2 * 16)),
    ("lstm", 16, 4 * (480 * 16 + 16 * 16 + 16)),
  ],
)
def test_recurrent_layers_match_keras_parameter_counts(rnn, units, expected):
  layer = recurrent.Recurrent(
    480, units, rnn, layer_norm=False, dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  assert models.count_params(layer) == expected
  out = layer(jnp.ones((2, 5, 480)))
  assert out.shape == (2, 5, units)


def test_gru_follows_the_keras_equations():
  layer = recurrent.Recurrent(3, 2, "gru", layer_norm=False, dtype=jnp.float32, rngs=nnx.Rngs(1))
  layer.bias[...] = jax.random.normal(jax.random.key(3), (2, 6))
  x = np.asarray(jax.random.normal(jax.random.key(4), (1, 4, 3)))
  w, u, b = (np.asarray(v[...]) for v in (layer.kernel, layer.recurrent_kernel, layer.bias))
  sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  h = np.zeros((1, 2))
  for t in range(4):
    xp, hp = x[:, t] @ w + b[0], h @ u + b[1]
    z, r = sigmoid(xp[:, :2] + hp[:, :2]), sigmoid(xp[:, 2:4] + hp[:, 2:4])
    h = z * h + (1 - z) * np.tanh(xp[:, 4:] + r * hp[:, 4:])
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x)))[:, -1], h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train_backbone,trainable_blocks", [("frozen", 0), ("last5", 5)])
@pytest.mark.slow
def test_frozen_backbone_weights_stay_bit_identical_after_a_step(train_backbone, trainable_blocks):
  config = _config(
    f"cnn_rnn:backbone=inception_v3,train_backbone={train_backbone}", clip_frames=2, image_size=75
  )
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=10)
  model = nnx.merge(graphdef, state.params, state.batch_stats)
  # Host copies: the step donates (and so deletes) the state's device buffers.
  before = [
    (path, np.array(value))
    for path, value in nnx.to_flat_state(nnx.as_pure(nnx.state(model, nnx.Param)))
  ]
  train_step = steps.make_train_step(graphdef, tx, mesh)
  batch = sharding.shard_batch(_fixed_batch(2, 2, 75), mesh)
  state, out = train_step(jax.device_put(state, sharding.replicated(mesh)), batch)
  assert np.isfinite(float(out["loss"]))
  after = dict(nnx.to_flat_state(state.params))
  frozen = changed = 0
  for path, value in before:
    moved = not np.array_equal(value, np.asarray(after[path]))
    if model.trainable(tuple(path)):
      changed += moved
    else:
      frozen += 1
      assert not moved, path
  assert frozen > 0 and changed > 0
  assert model.trainable_blocks == trainable_blocks


def test_summary_marks_frozen_parameters():
  config = _config("cnn_rnn:backbone=inception_v3", clip_frames=2, image_size=75)
  table = summary.parameter_table(config)
  assert table.splitlines()[-1] == "trainable_params: 99873"
  assert "frozen_params: 21768352" in table


@pytest.mark.parametrize(
  "arg,message",
  [
    ("backbone=inception_v3,norm=layer", "norm"),
    ("backbone=vgg", "backbone"),
    ("backbone=i3d_mini_2d,train_backbone=frozen", "train_backbone"),
    ("rnn=rnn", "rnn"),
  ],
)
def test_cnn_rnn_rejects_bad_options_by_name(arg, message):
  with pytest.raises(ValueError, match=message):
    models.create_model(_config(f"cnn_rnn:{arg}", image_size=80))


def test_inception_backbone_needs_frames_of_75_pixels():
  with pytest.raises(ValueError, match="75"):
    models.create_model(_config("cnn_rnn:backbone=inception_v3", image_size=32))
  assert cnn_rnn.INCEPTION_MIN_SIZE == 75


def test_two_stream_flatten_size():
  assert two_stream.flat_features(28, 112, 56, 32) == 14 * 56 * 28 * 32
