"""The CPU's forms of the models' ops (lvef_jax/kernels) against XLA's plain ops, and the switch
that chooses them (``config.compute.kernels``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lvef_jax import kernels, models
from lvef_jax.errors import ConfigError
from lvef_jax.kernels import conv as cpu_conv, winograd
from lvef_jax.models import layers
from lvef_jax.training import state as state_lib, steps
from lvef_jax import sharding
from tests.conftest import load_config


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
    ((3, 9, 13, 11, 1), (7, 7, 7), (2, 2, 2)),  # the I3D stem
    ((2, 10, 9, 11, 3), (5, 3, 7), (3, 1, 2)),  # taps folded with 3 channels, uneven strides
  ],
)
def test_folded_taps_have_the_xla_convolution_s_values_and_gradients(shape, window, strides):
  """A strided 3-D convolution as one 2-D convolution of the temporal taps side by side on the
  channels. With 3 channels the test fails if the fold's channel order is wrong."""
  x = jax.random.uniform(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (*window, shape[-1], 8))
  _assert_same_values_and_gradients(
    lambda x, k: cpu_conv.taps_in_channels(x, k, strides), x, kernel, strides
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
  "shape,window,strides,form",
  [
    ((3, 5, 8, 8, 4), (3, 3, 3), 1, "winograd"),
    ((2, 3, 7, 6, 3), (3, 3, 3), 1, "winograd"),  # from 6x6 frames
    ((2, 5, 9, 8, 3), (3, 5, 5), 1, "taps"),
    ((2, 5, 9, 8, 3), (3, 1, 1), 1, "taps"),  # the paper's 3x1x1 conv2
    ((2, 3, 7, 7, 3), (3, 5, 5), 1, "xla"),  # the taps start at 8x8 frames
    ((2, 9, 13, 11, 1), (7, 7, 7), 2, "folded"),
    ((2, 3, 5, 5, 6), (1, 1, 1), 1, "matmul"),
    ((3, 7, 6, 6), (1, 1), 1, "matmul"),
    ((15, 9, 8, 4), (3, 3), 1, "xla"),  # 2-D convolutions stay XLA's
    ((3, 15, 12, 2), (7, 7), 2, "xla"),
  ],
)
def test_cpu_conv_takes_its_form_and_has_nnx_conv_s_values_and_gradients(
  shape, window, strides, form
):
  """``kernels.conv.Conv`` against ``nnx.Conv`` with the same parameters: the form it names
  (checked in the jaxpr), the output, and the gradients of the input, kernel and bias."""
  plain = layers.conv(shape[-1], 6, window, strides=strides, dtype=jnp.float32, rngs=nnx.Rngs(0))
  fast = layers.conv(
    shape[-1],
    6,
    window,
    strides=strides,
    dtype=jnp.float32,
    rngs=nnx.Rngs(0),
    ops=kernels.CPU_OPS,
  )
  assert type(plain) is nnx.Conv and isinstance(fast, cpu_conv.Conv)
  x = jax.random.normal(jax.random.key(1), shape)
  assert cpu_conv.form(fast, x.shape, jnp.float32) == form
  jaxpr = str(jax.make_jaxpr(fast)(x))
  expected_convs = {"winograd": 0, "matmul": 0, "taps": window[0], "folded": 1, "xla": 1}[form]
  assert jaxpr.count("conv_general_dilated") == expected_convs
  assert ("name=_winograd" in jaxpr) == (form == "winograd")

  def loss(layer, x):
    y = layer(x)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

  want_grads, want_y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(plain, x)
  got_grads, got_y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(fast, x)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_each_conv_runs_pointwise_heads_as_one_matmul_and_any_other_conv_on_its_own():
  """``kernels.conv.each_conv`` equals ``layers.each_conv`` (one call per convolution), in
  values and gradients, with a 3x3x3 convolution and a biased pointwise one among them."""
  specs = [((1, 1, 1), False), ((1, 1, 1), False), ((3, 3, 3), False), ((1, 1, 1), True)]
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, 6))

  def build(ops):
    return [
      layers.conv(6, 4 + i, k, use_bias=b, dtype=jnp.float32, rngs=nnx.Rngs(i), ops=ops)
      for i, (k, b) in enumerate(specs)
    ]

  def loss(convs, x, each):
    ys = each(convs, x)
    return sum(jnp.sum(y * jnp.arange(y.shape[-1])) for y in ys), ys

  fused = build(kernels.CPU_OPS)
  jaxpr = str(jax.make_jaxpr(lambda x: cpu_conv.each_conv(fused, x))(x))
  assert jaxpr.count("dot_general") == 2  # the two pointwise heads together, the biased one
  want_grads, want_ys = nnx.grad(loss, argnums=(0, 1), has_aux=True)(
    build(layers.XLA_OPS), x, layers.each_conv
  )
  got_grads, got_ys = nnx.grad(loss, argnums=(0, 1), has_aux=True)(fused, x, cpu_conv.each_conv)
  for g, w in zip(got_ys, want_ys, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_the_switch_picks_the_ops_by_backend():
  assert models.ops_for("auto", backend="cpu") is kernels.CPU_OPS
  assert models.ops_for("auto", backend="gpu") is layers.XLA_OPS
  assert models.ops_for("xla", backend="cpu") is layers.XLA_OPS
  assert models.ops_for("cpu", backend="gpu") is kernels.CPU_OPS
  with pytest.raises(ConfigError, match="compute.kernels"):
    models.ops_for("fast")


def _conv_classes(model) -> set:
  return {type(m) for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)}


def test_a_model_of_xla_ops_holds_only_plain_convolutions():
  config = load_config("i3d", "variant=mini,conv2=3x1x1,head=b")  # conftest: kernels=xla
  assert config.compute.kernels == "xla"
  assert _conv_classes(jax.eval_shape(lambda: models.create_model(config))) == {nnx.Conv}
  config.compute.kernels = "cpu"
  assert _conv_classes(jax.eval_shape(lambda: models.create_model(config))) == {cpu_conv.Conv}


def test_a_train_step_with_the_cpu_forms_matches_xla_s():
  """One train step of I3D-mini on 48x48 frames, where every CPU form is taken (the folded stem,
  Winograd for the 3x3x3 convolutions, temporal taps for the 3x1x1 conv2, the pointwise
  convolutions as matmuls): the same loss, gradient norm, BatchNorm statistics
  and weight updates as XLA's plain ops, within float32 rounding. (Plain SGD with a rate so
  large that the new weights are the update, -1e4 times the gradient: Adam's first step is
  about the gradient's sign, which rounding flips where a gradient is near 0.)"""
  mesh = sharding.make_mesh(jax.devices()[:1])  # the forms, not the sharding, are tested here
  batch = {
    "video": jax.random.randint(jax.random.key(0), (2, 6, 48, 48, 1), 0, 256).astype(jnp.uint8),
    "ef": jnp.array([30.0, 70.0]),
  }
  tx = optax.sgd(1e4)
  results = {}
  for kernel_ops in ("xla", "cpu"):
    config = load_config("i3d", "variant=mini,conv2=3x1x1")
    config.data.update(clip_frames=6, image_size=48)  # 6x6 Inception maps: Winograd
    config.compute.kernels = kernel_ops
    graphdef, state = state_lib.create_train_state(models.create_model(config), tx, seed=0)
    state = jax.device_put(state, sharding.replicated(mesh))
    forward = lambda s: nnx.merge(graphdef, s.params, s.batch_stats)(batch["video"])  # noqa: E731
    jaxpr = str(jax.make_jaxpr(forward)(state))
    new_state, metrics = steps.make_train_step(graphdef, tx, mesh)(
      state, sharding.shard_batch(batch, mesh)
    )
    results[kernel_ops] = (jaxpr, metrics, new_state.params, new_state.batch_stats)
  xla_jaxpr, xla_metrics, xla_updates, xla_stats = results["xla"]
  cpu_jaxpr, cpu_metrics, cpu_updates, cpu_stats = results["cpu"]
  assert "name=_winograd" in cpu_jaxpr and "name=_winograd" not in xla_jaxpr
  assert "conv_general_dilated" in xla_jaxpr
  # Both take the models' own max pool (lvef_jax.models.pooling), not reduce_window.
  assert "name=_max_pool" in cpu_jaxpr and "name=_max_pool" in xla_jaxpr
  assert "reduce_window_max" not in xla_jaxpr
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(cpu_metrics[key], xla_metrics[key], rtol=1e-4)
  # Rounding is measured against the largest value of the tree: some gradients are 0 but for
  # rounding (conv2's bias, which the BatchNorms after it cancel).
  for got_tree, want_tree in ((cpu_updates, xla_updates), (cpu_stats, xla_stats)):
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(want_tree))
    for got, want in zip(jax.tree.leaves(got_tree), jax.tree.leaves(want_tree), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * scale)
