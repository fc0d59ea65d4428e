"""I3D family: shapes, parameter counts against PyTorch, options, norms, heads, initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import config_base, models
from lvef_jax.errors import ConfigError
from lvef_jax.models import heads, layers
from tests.conftest import load_config

# Counted with a PyTorch implementation of the same layers (PyTorch 2.13.0, CPU), built
# independently of this code base; head A (GAP-Dropout-Dense), BatchNorm. The project's own
# peer, benchmarks/torch_peer.py, is checked against the JAX model in tests/test_torch_peer.py.
TORCH_PEER_COUNTS = {
  ("original", "1x1x1"): 13919617,
  ("original", "3x3x3"): 14239105,
  ("mini", "1x1x1"): 1536001,
  ("mini", "3x3x3"): 1855489,
  ("mini", "3x1x1"): 1560577,
  ("mini", "2x3x3x3"): 2851009,
  ("stem", "1x1x1"): 34817,
  ("stem_im3_im4", "1x1x1"): 8275169,
}


def _model(arg: str, clip_frames=8, image_size=16, **overrides):
  config = load_config("i3d", arg)
  config.data.update(clip_frames=clip_frames, image_size=image_size)
  config.model.update(overrides)
  return models.create_model(config)


def _clips(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256).astype(jnp.uint8)


@pytest.mark.parametrize("variant,conv2", sorted(TORCH_PEER_COUNTS))
def test_parameter_counts_match_the_pytorch_peer(variant, conv2):
  # The config path users take: configs/i3d.py:variant=...,conv2=...
  config = load_config("i3d", f"variant={variant},conv2={conv2}")
  model = jax.eval_shape(lambda: models.create_model(config))  # shapes only: fast
  assert models.count_params(model) == TORCH_PEER_COUNTS[(variant, conv2)]


def test_every_norm_has_the_same_parameter_count():
  counts = {
    norm: models.count_params(jax.eval_shape(lambda n=norm: _model(f"norm={n}")))
    for norm in layers.NORMS
  }
  assert len(set(counts.values())) == 1, counts
  layer_model = jax.eval_shape(lambda: _model("norm=layer"))
  assert not jax.tree.leaves(nnx.state(layer_model, nnx.BatchStat))


def test_paper_layer_norm_normalises_each_sample_over_every_axis():
  """norm=layer: per sample over (T, H, W, C), per-channel scale; layer_channels: per position."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 5, 6)) * 7 + 2
  paper = layers.Norm(6, "layer", momentum=0.99, dtype=jnp.float32, rngs=nnx.Rngs(0))
  y = np.asarray(paper(x, train=True))
  np.testing.assert_allclose(y.mean(axis=(1, 2, 3, 4)), 0, atol=1e-4)
  np.testing.assert_allclose(y.std(axis=(1, 2, 3, 4)), 1, atol=1e-3)
  assert np.abs(y.mean(axis=-1)).max() > 0.1  # positions are not normalised one by one
  channels = layers.Norm(6, "layer_channels", momentum=0.99, dtype=jnp.float32, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(channels(x, train=True)).mean(axis=-1), 0, atol=1e-4)
  assert paper.norm.scale.shape == (6,)
  # The sample statistics do not depend on the rest of the batch (unlike BatchNorm).
  np.testing.assert_allclose(np.asarray(paper(x[:1], train=True)), y[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "head,extra",
  [
    # OG: AveragePooling(2x4x4, stride 1, valid) on the 8x4x4 map of 16x16x16 clips -> 7x1x1.
    ("og", 7 * 1 * 1 * 192),
    ("a", 192),
    ("b", 192),
    ("c", 192 * 256 + 256 + 256),
  ],
)
def test_heads(head, extra):
  """Heads follow paper Table 2; OG pools then flattens, so its size depends on the clip."""
  model = _model(f"variant=stem,head={head}", clip_frames=16, image_size=16)
  head_params = models.count_params(model.head)
  assert models.count_params(model) - head_params == 34817 - 193  # the stem alone
  assert head_params == extra + 1  # + the output bias
  ef = model(_clips((3, 16, 16, 16, 1)))
  assert ef.shape == (3,) and ef.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(ef)))


def test_og_head_pools_like_the_adapted_code_at_the_paper_shape():
  """I3D-original's 4x4x4x1024 map at 28x112x112 pools to 3x1x1x1024 before the Dense."""
  model = jax.eval_shape(lambda: _model("variant=original,head=og", 28, 112))
  assert models.count_params(model.head) == 3 * 1024 + 1
  assert heads._og_window((1, 2, 8)) == (1, 2, 4)  # cut to maps smaller than the window


@pytest.mark.parametrize("variant", ["original", "mini", "stem", "stem_im3_im4"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_every_variant_maps_clips_to_ef(variant, norm):
  model = _model(f"variant={variant},norm={norm}")
  out = jax.eval_shape(lambda: model(jnp.zeros((2, 8, 16, 16, 1), jnp.uint8)))
  assert out.shape == (2,)


def test_train_mode_uses_dropout_and_batch_statistics():
  model = _model("variant=stem")
  clips = _clips((4, 8, 16, 16, 1), seed=1)
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  eval_a, eval_b = model(clips), model(clips)
  np.testing.assert_array_equal(eval_a, eval_b)  # inference is deterministic
  train_a = model(clips, train=True, dropout_key=jax.random.key(0))
  train_b = model(clips, train=True, dropout_key=jax.random.key(1))
  assert not np.allclose(train_a, train_b)  # different dropout masks
  after = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert all(jax.tree.leaves(changed))  # running statistics moved in training mode only


def test_unit_range_input():
  """uint8 clips are scaled by 1/255 on the device; float clips are taken as [0, 1]."""
  model = _model("variant=stem")
  clips = _clips((2, 8, 16, 16, 1), seed=2)
  np.testing.assert_allclose(model(clips), model(clips.astype(jnp.float32) / 255), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_output():
  model = _model("variant=stem", dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  assert model(jnp.zeros((2, 8, 16, 16, 1), jnp.uint8)).dtype == jnp.float32


@pytest.mark.parametrize(
  "arg,overrides,message",
  [
    ("variant=huge", {}, "variant"),
    ("conv2=5x5x5", {}, "conv2"),
    ("head=d", {}, "head"),
    ("norm=group", {}, "norm"),
  ],
)
def test_bad_options_are_rejected_by_name(arg, overrides, message):
  with pytest.raises(ConfigError, match=message):
    _model(arg, **overrides)


def test_config_argument_parsing():
  config = load_config("i3d", "variant=original,conv2=3x3x3,norm=layer,head=c")
  assert (config.model.variant, config.model.conv2, config.model.norm, config.model.head) == (
    "original",
    "3x3x3",
    "layer",
    "c",
  )
  assert load_config("i3d", "").model.variant == "mini"
  with pytest.raises(ConfigError, match="widht"):
    load_config("i3d", "widht=3")
  with pytest.raises(ConfigError, match="unknown model"):
    models.model_class("resnet")


def test_check_key_names_the_closest_valid_keys():
  config = load_config("i3d")
  config_base.check_key(config, "train.batch_size")
  config_base.check_key(config, "compute.kernels")
  with pytest.raises(ConfigError, match="no 'batchsize' in train; closest: train.batch_size"):
    config_base.check_key(config, "train.batchsize")
  with pytest.raises(ConfigError, match="no 'variantt' in model; closest: model.variant"):
    config_base.check_key(config, "model.variantt")
  with pytest.raises(ConfigError, match="no 'x'"):
    config_base.check_key(config, "seed.x")  # seed is a number, not a section


def test_glorot_uniform_is_deterministic_and_bounded():
  a = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  b = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  c = layers.glorot_uniform(jax.random.key(1), (3, 3, 3, 8, 16))
  limit = np.sqrt(6 / (27 * 8 + 27 * 16))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.max(jnp.abs(a))) <= limit and float(jnp.std(a)) > 0.5 * limit / np.sqrt(3)


def test_initialisation_gives_the_same_weights_under_jit():
  """The host-drawn initialisers draw from the key's value under a transformation too."""
  config = load_config("cnn_rnn", "backbone=i3d_mini_2d,rnn=lstm")  # Glorot and orthogonal
  config.data.update(clip_frames=4, image_size=16)
  eager = nnx.state(models.create_model(config, seed=3), nnx.Param)
  jitted = jax.jit(lambda: nnx.state(models.create_model(config, seed=3), nnx.Param))()
  other = nnx.state(models.create_model(config, seed=4), nnx.Param)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(
    not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(eager), jax.tree.leaves(other))
  )


def test_orthogonal_init_is_orthogonal():
  q = np.asarray(layers.orthogonal(jax.random.key(0), (16, 48)))
  np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-5)


@pytest.mark.parametrize(
  "shape,window,strides,padding",
  [
    ((2, 5, 9, 8, 3), (1, 3, 3), (1, 2, 2), "SAME"),  # the I3D stem's pools
    ((2, 5, 7, 6, 3), (3, 3, 3), (1, 1, 1), "SAME"),  # an Inception branch's pool
    ((2, 5, 7, 6, 3), (3, 3, 3), (2, 2, 2), "SAME"),
    ((3, 11, 10, 2), (3, 3), (2, 2), "SAME"),
    ((3, 11, 10, 2), (2, 1), (3, 2), "SAME"),  # a window smaller than its stride
    ((2, 5, 9, 8, 3), (2, 2, 2), (2, 2, 2), "VALID"),  # Two-Stream's pools, odd sizes
    ((3, 12, 11, 2), (3, 3), (2, 2), "VALID"),  # InceptionV3's
    ((3, 7, 7, 2), (3, 3), (1, 1), "VALID"),
  ],
)
def test_max_pool_has_reduce_window_s_values_and_gradient(shape, window, strides, padding):
  """The models' max pool (strided slices, gradient by hand) against ``nnx.max_pool`` (XLA's
  ``reduce_window`` and ``select_and_scatter``): without ties (random floats) the values and
  the gradient are exactly the same, inputs no VALID window covers getting none."""
  x = jax.random.normal(jax.random.key(1), shape)

  def reference(x):
    return nnx.max_pool(x, window_shape=window, strides=strides, padding=padding)

  want, want_vjp = jax.vjp(reference, x)
  got, got_vjp = jax.vjp(jax.jit(lambda x: layers.max_pool(x, window, strides, padding)), x)
  np.testing.assert_array_equal(got, want)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  np.testing.assert_allclose(got_vjp(cotangent)[0], want_vjp(cotangent)[0], rtol=1e-6, atol=1e-6)
  jaxpr = str(
    jax.make_jaxpr(jax.grad(lambda x: layers.max_pool(x, window, strides, padding).sum()))(x)
  )
  assert "reduce_window" not in jaxpr and "select_and_scatter" not in jaxpr


def test_max_pool_rejects_unknown_padding():
  with pytest.raises(ConfigError, match="SAME or VALID"):
    layers.max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2), (2, 2), "CAUSAL")
