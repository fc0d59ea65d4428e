"""I3D family: shapes, parameter counts against PyTorch, options, the im2col stem, norms, heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import models
from lvef_jax.errors import ConfigError
from lvef_jax.models import heads, i3d, layers, winograd
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


@pytest.mark.parametrize("shape", [(2, 16, 32, 32, 1), (1, 7, 13, 12, 1)])
def test_im2col_stem_equals_the_xla_convolution(shape):
  conv = _model("variant=stem", shape[1], shape[2], stem_impl="conv")
  im2col = _model("variant=stem", shape[1], shape[2], stem_impl="im2col")
  clips = jax.random.uniform(jax.random.key(1), shape)
  np.testing.assert_allclose(
    conv.features_map(clips), im2col.features_map(clips), atol=1e-5, rtol=1e-5
  )


def test_im2col_equals_the_xla_convolution_in_2d():
  conv = layers.conv(1, 8, (7, 7), strides=2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  frames = jax.random.uniform(jax.random.key(2), (3, 15, 12, 1))
  np.testing.assert_allclose(
    conv(frames), layers.conv_im2col(frames, conv, (2, 2)), atol=1e-5, rtol=1e-5
  )


def _xla_conv(x, kernel, strides):
  spatial = "DHW"[3 - (kernel.ndim - 2) :]
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  return jax.lax.conv_general_dilated(x, kernel, strides, "SAME", dimension_numbers=numbers)


def _assert_same_values_and_gradients(fast, x, kernel, strides):
  """``fast(x, kernel)`` against XLA's convolution: output, input and kernel gradients."""
  cotangent = jax.random.normal(jax.random.key(3), _xla_conv(x, kernel, strides).shape)
  got_y, got_vjp = jax.vjp(jax.jit(fast), x, kernel)
  want_y, want_vjp = jax.vjp(lambda x, k: _xla_conv(x, k, strides), x, kernel)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  for got, want in zip(got_vjp(cotangent), want_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize(
  "shape,window,strides",
  [
    ((3, 9, 13, 11, 1), (7, 7, 7), (2, 2, 2)),
    ((2, 10, 9, 11, 3), (5, 3, 7), (3, 1, 2)),  # taps folded with 3 channels, uneven strides
    ((3, 15, 12, 2), (7, 7), (2, 2)),
  ],
)
def test_taps_in_channels_have_the_xla_convolution_s_values_and_gradients(shape, window, strides):
  """The CPU stem (``layers.conv_im2col``): a 3-D kernel's temporal taps folded into the input
  channels of one 2-D convolution. With 3 channels the test fails if the fold's channel order
  is wrong."""
  x = jax.random.uniform(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (*window, shape[-1], 8))
  _assert_same_values_and_gradients(
    lambda x, k: layers._conv_taps_in_channels(x, k, strides), x, kernel, strides
  )


@pytest.mark.parametrize(
  "shape,kernel",
  [
    ((2, 5, 7, 9, 3), (3, 3, 3)),  # odd frames: the last 2x2 tiles are half outside
    ((2, 4, 8, 8, 5), (1, 3, 3)),
    ((2, 6, 14, 14, 2), (5, 3, 3)),
    ((1, 1, 1, 1, 2), (3, 3, 3)),
    ((3, 9, 6, 4), (3, 3)),
  ],
)
def test_winograd_has_the_xla_convolution_s_values_and_gradients(shape, kernel):
  """``winograd.conv`` and its hand-written gradients against XLA's convolution."""
  x = jax.random.normal(jax.random.key(1), shape)
  k = jax.random.normal(jax.random.key(2), (*kernel, shape[-1], 4))
  _assert_same_values_and_gradients(winograd.conv, x, k, (1,) * len(kernel))


def test_winograd_applies_to_float32_kernels_3x3_in_space_with_odd_temporal_taps():
  assert winograd.applies((3, 3, 3, 8, 4), jnp.float32)
  assert winograd.applies((3, 3, 8, 4), jnp.float32)
  assert winograd.applies((5, 3, 3, 8, 4), jnp.float32)
  assert not winograd.applies((3, 3, 3, 8, 4), jnp.bfloat16)
  assert not winograd.applies((2, 3, 3, 8, 4), jnp.float32)
  assert not winograd.applies((3, 5, 5, 8, 4), jnp.float32)
  assert not winograd.applies((3, 1, 1, 8, 4), jnp.float32)


@pytest.mark.parametrize(
  "shape,window,path",
  [
    ((3, 5, 8, 8, 4), (3, 3, 3), "winograd"),
    ((2, 3, 7, 6, 3), (3, 3, 3), "winograd"),  # from 6x6 frames
    ((2, 5, 9, 8, 3), (3, 5, 5), "taps"),
    ((2, 3, 7, 7, 3), (3, 5, 5), "xla"),  # the taps start at 8x8 frames
    ((15, 9, 8, 4), (3, 3), "frame groups"),
  ],
)
def test_cpu_convolutions_have_the_xla_convolution_s_values_and_gradients(shape, window, path):
  """On the CPU, ``layers.Conv`` against XLA's own convolution: the 3x3x3 one as Winograd (from
  6x6 frames), other 3-D ones as 2-D taps (from 8x8 frames) or XLA's, and the 2-D one whose
  kernel gradient is summed over groups of frames (15 frames: three groups of five). Each runs
  the path it names (checked in the jaxpr)."""
  conv = layers.conv(shape[-1], 6, window, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), shape)
  jaxpr = str(jax.make_jaxpr(conv)(x))
  if path == "winograd":
    assert "name=_winograd" in jaxpr and "conv_general_dilated" not in jaxpr
  elif path == "xla":
    assert "name=_" not in jaxpr and jaxpr.count("conv_general_dilated") == 1
  else:  # one 2-D convolution per temporal tap, or the one of the frames
    assert jaxpr.count("name=_conv2d_same") == (window[0] if len(window) == 3 else 1)

  graphdef, state = nnx.split(conv)

  def fast(x, kernel):
    layer = nnx.merge(graphdef, state, copy=True)
    layer.kernel[...] = kernel
    return layer(x) - layer.bias[...]

  assert jax.default_backend() == "cpu"
  _assert_same_values_and_gradients(fast, x, conv.kernel[...], (1,) * (len(shape) - 2))


def test_plain_convolutions_turn_the_cpu_forms_off():
  """Within ``layers.plain_convolutions`` the CPU traces XLA's convolution, as GPUs do, and the
  I3D stem's ``auto`` is the 3-D convolution."""

  def jaxpr():  # a new layer each time: a function traced before keeps the form it had then
    conv = layers.conv(4, 6, (3, 3, 3), dtype=jnp.float32, rngs=nnx.Rngs(0))
    return str(jax.make_jaxpr(conv)(jnp.zeros((1, 3, 8, 8, 4))))

  assert "name=_winograd" in jaxpr() and "conv_general_dilated" not in jaxpr()
  assert i3d.resolve_stem_impl("auto") == "im2col"
  with layers.plain_convolutions():
    assert "name=_winograd" not in jaxpr() and "conv_general_dilated" in jaxpr()
    assert i3d.resolve_stem_impl("auto") == "conv"
  assert layers.cpu_forms()


@pytest.mark.parametrize(
  "shape,window,strides",
  [
    ((2, 5, 9, 8, 3), (1, 3, 3), (1, 2, 2)),
    ((2, 5, 7, 6, 3), (3, 3, 3), (1, 1, 1)),
    ((2, 5, 7, 6, 3), (3, 3, 3), (2, 2, 2)),
    ((3, 11, 10, 2), (3, 3), (2, 2)),
    ((3, 11, 10, 2), (2, 1), (3, 2)),
  ],
)
def test_max_pool_has_reduce_window_s_values_and_gradient(shape, window, strides):
  """Without ties (random floats), the hand-written gradient is exactly reduce_window's."""
  x = jax.random.normal(jax.random.key(1), shape)

  def reference(x):
    dims, steps = (1, *window, 1), (1, *strides, 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, "SAME")

  want, want_vjp = jax.vjp(reference, x)
  got, got_vjp = jax.vjp(jax.jit(lambda x: layers.max_pool(x, window, strides)), x)
  np.testing.assert_array_equal(got, want)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  np.testing.assert_allclose(got_vjp(cotangent)[0], want_vjp(cotangent)[0], rtol=1e-6, atol=1e-6)


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
    ("", {"stem_impl": "fft"}, "stem_impl"),
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


def test_glorot_uniform_is_deterministic_and_bounded():
  a = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  b = layers.glorot_uniform(jax.random.key(0), (3, 3, 3, 8, 16))
  c = layers.glorot_uniform(jax.random.key(1), (3, 3, 3, 8, 16))
  limit = np.sqrt(6 / (27 * 8 + 27 * 16))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.max(jnp.abs(a))) <= limit and float(jnp.std(a)) > 0.5 * limit / np.sqrt(3)


def test_orthogonal_init_is_orthogonal():
  q = np.asarray(layers.orthogonal(jax.random.key(0), (16, 48)))
  np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-5)


def test_pointwise_blocks_as_one_matmul_equal_the_blocks_one_by_one():
  def block(i, o, k, seed):
    return layers.ConvNormAct(
      i, o, k, norm="batch", bn_momentum=0.9, dtype=jnp.float32, rngs=nnx.Rngs(seed)
    )

  blocks = [block(6, 4, 1, 0), block(6, 3, 1, 1), block(6, 5, 1, 2)]
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, 6))
  graphdef, state = nnx.split(blocks)

  def run(state, x, fused):
    blocks = nnx.merge(graphdef, state)
    if fused:
      ys = layers.pointwise_norm_act(blocks, x, train=True)
    else:
      ys = [b(x, train=True) for b in blocks]
    return sum(jnp.sum(y * jnp.arange(y.shape[-1])) for y in ys), ys

  (want, want_ys), want_grads = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(
    state, x, False
  )
  (got, got_ys), got_grads = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(state, x, True)
  for g, w in zip(got_ys, want_ys, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="not a pointwise convolution"):
    layers.pointwise_norm_act([blocks[0], block(6, 4, 3, 3)], x, train=True)
