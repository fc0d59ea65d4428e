"""I3D family: shapes, parameter counts against the PyTorch peer, options, the im2col stem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import models
from lvef_jax.errors import ConfigError
from lvef_jax.models import i3d, layers
from tests.conftest import load_config

# `python ../shared/peers/torch_i3d.py counts` (PyTorch 2.13.0, CPU), the reference
# implementation of the same layers; head A (GAP-Dropout-Dense), BatchNorm.
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


@pytest.mark.parametrize("variant,conv2", sorted(TORCH_PEER_COUNTS))
def test_parameter_counts_match_the_pytorch_peer(variant, conv2):
  # The config path users take: configs/i3d.py:variant=...,conv2=...
  config = load_config("i3d", f"variant={variant},conv2={conv2}")
  model = jax.eval_shape(lambda: models.create_model(config))  # shapes only: fast
  assert models.count_params(model) == TORCH_PEER_COUNTS[(variant, conv2)]


def test_layer_norm_has_the_same_parameter_count_as_batch_norm():
  counts = [models.count_params(jax.eval_shape(
      lambda n=norm: i3d.Model(variant="mini", norm=n, rngs=nnx.Rngs(0)))) for norm in ("batch", "layer")]
  assert counts[0] == counts[1]
  layer_model = jax.eval_shape(lambda: i3d.Model(variant="mini", norm="layer", rngs=nnx.Rngs(0)))
  assert not jax.tree.leaves(nnx.state(layer_model, nnx.BatchStat))


@pytest.mark.parametrize("head,extra", [("og", 8 * 2 * 2 * 192), ("a", 192), ("b", 192),
                                        ("c", 192 * 256 + 256 + 256)])
def test_heads(head, extra):
  """Heads follow paper Table 2; OG flattens, so its size depends on the clip shape."""
  model = i3d.Model(variant="stem", head=head, clip_frames=16, image_size=16, rngs=nnx.Rngs(0))
  body = models.count_params(model) - sum(
      x.size for x in jax.tree.leaves(nnx.state(model.out, nnx.Param)))
  if head == "c":
    body -= sum(x.size for x in jax.tree.leaves(nnx.state(model.hidden, nnx.Param)))
  assert body == 34817 - 193  # the stem alone
  out_params = models.count_params(model) - body
  assert out_params == extra + 1  # + the output bias
  clips = jax.random.randint(jax.random.key(0), (3, 16, 16, 16, 1), 0, 256).astype(jnp.uint8)
  ef = model(clips)
  assert ef.shape == (3,) and ef.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(ef)))


@pytest.mark.parametrize("variant", ["original", "mini", "stem", "stem_im3_im4"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_every_variant_maps_clips_to_ef(variant, norm):
  config = load_config("i3d", f"variant={variant},norm={norm}")
  config.data.update(clip_frames=8, image_size=16)
  model = models.create_model(config)
  clips = jnp.zeros((2, 8, 16, 16, 1), jnp.uint8)
  out = jax.eval_shape(lambda: model(clips))
  assert out.shape == (2,)


def test_train_mode_uses_dropout_and_batch_statistics():
  model = i3d.Model(variant="stem", clip_frames=8, image_size=16, rngs=nnx.Rngs(0))
  clips = jax.random.randint(jax.random.key(1), (4, 8, 16, 16, 1), 0, 256).astype(jnp.uint8)
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  eval_a, eval_b = model(clips), model(clips)
  np.testing.assert_array_equal(eval_a, eval_b)  # inference is deterministic
  train_a = model(clips, train=True, dropout_key=jax.random.key(0))
  train_b = model(clips, train=True, dropout_key=jax.random.key(1))
  assert not np.allclose(train_a, train_b)  # different dropout masks
  after = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert all(jax.tree.leaves(changed))  # running statistics moved in training mode only


@pytest.mark.parametrize("shape", [(2, 16, 32, 32, 1), (1, 7, 13, 12, 1)])
def test_im2col_stem_equals_the_xla_convolution(shape):
  kwargs = dict(variant="stem", clip_frames=shape[1], image_size=shape[2])
  conv = i3d.Model(stem_impl="conv", rngs=nnx.Rngs(0), **kwargs)
  im2col = i3d.Model(stem_impl="im2col", rngs=nnx.Rngs(0), **kwargs)
  clips = jax.random.uniform(jax.random.key(1), shape)
  np.testing.assert_allclose(conv.features_map(clips), im2col.features_map(clips),
                             atol=1e-5, rtol=1e-5)


def test_unit_range_input():
  """uint8 clips are scaled by 1/255 on the device; float clips are taken as [0, 1]."""
  model = i3d.Model(variant="stem", clip_frames=8, image_size=16, rngs=nnx.Rngs(0))
  clips = jax.random.randint(jax.random.key(2), (2, 8, 16, 16, 1), 0, 256).astype(jnp.uint8)
  np.testing.assert_allclose(model(clips), model(clips.astype(jnp.float32) / 255), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_output():
  model = i3d.Model(variant="stem", dtype="bfloat16", clip_frames=8, image_size=16,
                    rngs=nnx.Rngs(0))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  assert model(jnp.zeros((2, 8, 16, 16, 1), jnp.uint8)).dtype == jnp.float32


@pytest.mark.parametrize("kwargs,message", [
    (dict(variant="huge"), "variant"), (dict(conv2="5x5x5"), "conv2"), (dict(head="d"), "head"),
    (dict(norm="group"), "norm"), (dict(stem_impl="fft"), "stem_impl")])
def test_bad_options_are_rejected_by_name(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    i3d.Model(rngs=nnx.Rngs(0), **kwargs)


def test_config_argument_parsing():
  config = load_config("i3d", "variant=original,conv2=3x3x3,norm=layer,head=c")
  assert (config.model.variant, config.model.conv2, config.model.norm, config.model.head) == (
      "original", "3x3x3", "layer", "c")
  assert load_config("i3d", "").model.variant == "mini"
  with pytest.raises(ConfigError, match="widht"):
    load_config("i3d", "widht=3")
  with pytest.raises(ConfigError, match="unknown model"):
    models.model_class("resnet")


def test_glorot_uniform_is_deterministic_and_bounded():
  a = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  b = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  c = layers.glorot_uniform(jax.random.key(1), (3, 3, 3, 8, 16))
  limit = np.sqrt(6 / (27 * 8 + 27 * 16))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.max(jnp.abs(a))) <= limit and float(jnp.std(a)) > 0.5 * limit / np.sqrt(3)
