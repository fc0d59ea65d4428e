"""The PyTorch throughput peer (benchmarks/torch_peer.py) builds exactly the JAX I3D's layers."""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import models
from lvef_jax.models import heads, i3d, layers
from tests.conftest import ROOT, load_config
from tests.test_bench import tiny_bench

torch = pytest.importorskip("torch")

SCRIPT = ROOT / "benchmarks" / "torch_peer.py"
_spec = importlib.util.spec_from_file_location("torch_peer", SCRIPT)
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)

DEFAULT_SHAPE = (28, 112, 112)  # the configs' clip shape, at which docs/models.md counts


def _jax_count(arg: str, clip_frames: int = 28, image_size: int = 112) -> int:
  config = load_config("i3d", arg)
  config.data.update(clip_frames=clip_frames, image_size=image_size)
  model = jax.eval_shape(lambda: models.create_model(config))  # shapes only: fast
  return models.count_params(model, trainable_only=True)


def test_the_peer_mirrors_the_jax_options():
  assert peer.VARIANTS == i3d.VARIANTS and peer.CONV2_KERNELS == i3d.CONV2_KERNELS
  assert peer.INCEPTION_WIDTHS == i3d.INCEPTION_WIDTHS and peer.STAGES == i3d.STAGES
  assert peer.HEADS == heads.HEADS and peer.OG_POOL == heads.OG_POOL
  assert peer.NORM_EPSILON == layers.NORM_EPSILON
  model = load_config("i3d").model
  assert (peer.DROPOUT, peer.HEAD_HIDDEN) == (model.dropout, model.head_hidden)
  assert (peer.EF_OFFSET, peer.EF_SCALE, peer.BN_MOMENTUM) == (
    model.ef_offset,
    model.ef_scale,
    model.bn_momentum,
  )


@pytest.mark.parametrize("variant", sorted(i3d.VARIANTS))
def test_parameter_counts_equal_the_jax_model_for_every_conv2(variant):
  counts = peer.param_counts("a", DEFAULT_SHAPE)
  for conv2 in i3d.CONV2_KERNELS:
    jax_count = _jax_count(f"variant={variant},conv2={conv2},norm=batch")
    assert counts[peer.variant_name(variant, conv2)] == jax_count, conv2


@pytest.mark.parametrize("head", ["og", "b", "c"])
def test_parameter_counts_equal_the_jax_model_for_every_head(head):
  """OG flattens, so its Dense depends on the clip shape: compared at the configs' shape."""
  counts = peer.param_counts(head, DEFAULT_SHAPE)
  for variant in i3d.VARIANTS:
    jax_count = _jax_count(f"variant={variant},head={head}")
    assert counts[peer.variant_name(variant, "1x1x1")] == jax_count, variant


def test_og_head_count_on_a_map_smaller_than_its_window():
  counts = peer.param_counts("og", (9, 20, 20))
  assert counts["i3d_mini_conv2_1x1x1"] == _jax_count("head=og", clip_frames=9, image_size=20)


@pytest.mark.parametrize(
  "window,strides",
  [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)), i3d.STAGES["im4"][0], i3d.STAGES["im5"][0]],
)
def test_max_pooling_is_tf_same_pooling(window, strides):
  """Negative inputs: SAME pads with -inf, never with 0 (conv2's output has no ReLU)."""
  for shape in [(1, 2, 3), (4, 5, 6), (7, 8, 9), (13, 14, 11)]:
    x = np.random.default_rng(0).normal(size=(2, *shape, 3)).astype(np.float32) - 3
    want = np.asarray(layers.max_pool(jnp.asarray(x), window, strides))
    got = peer.max_pool_same(torch.from_numpy(x).permute(0, 4, 1, 2, 3), window, strides)
    np.testing.assert_array_equal(got.permute(0, 2, 3, 4, 1).numpy(), want, err_msg=str(shape))


@pytest.mark.parametrize("shape", [(5, 6, 7), (2, 3, 4), (9, 20, 20)])
def test_stem_convolution_is_tf_same_convolution(shape):
  conv = layers.conv(1, 4, (7, 7, 7), strides=2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).uniform(size=(2, *shape, 1)).astype(np.float32)
  torch_conv = peer.SameConv3d(1, 4, (7, 7, 7), stride=2)
  with torch.no_grad():
    torch_conv.weight.copy_(torch.from_numpy(np.array(conv.kernel[...]).transpose(4, 3, 0, 1, 2)))
    torch_conv.bias.zero_()
    got = torch_conv(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
  np.testing.assert_allclose(got.numpy(), np.asarray(conv(jnp.asarray(x))), atol=1e-5, rtol=1e-5)


def _torch_name(path: tuple) -> tuple[str, bool]:
  """The PyTorch state-dict name of a JAX state path, and whether it is a kernel."""
  keys = [str(k) for k in path]
  renames = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
  if keys[-2] == "norm" and keys[-1] in ("scale", "bias", "mean", "var"):
    keys.pop(-2)  # layers.Norm wraps nnx.BatchNorm in `.norm`; the peer uses BatchNorm3d itself
  keys[-1] = renames.get(keys[-1], keys[-1])
  return ".".join(keys), path[-1] == "kernel"


def _to_torch(value: np.ndarray, is_kernel: bool) -> torch.Tensor:
  if is_kernel:  # (kT, kH, kW, in, out) -> (out, in, kT, kH, kW); (in, out) -> (out, in)
    value = value.transpose(4, 3, 0, 1, 2) if value.ndim == 5 else value.T
  return torch.from_numpy(np.array(value))  # a writable, contiguous copy


@pytest.mark.slow
def test_same_weights_give_the_same_training_forward_pass():
  """mini, conv2 3x1x1 on an odd-and-even 9x20x20 clip: every padding case, BatchNorm in
  training mode (batch statistics, running-average momentum), dropout off."""
  shape = (9, 20, 20)
  config = load_config("i3d", "variant=mini,conv2=3x1x1")
  config.data.update(clip_frames=shape[0], image_size=shape[1])
  config.model.update(dropout=0.0)
  model = models.create_model(config)
  torch_model = peer.I3D("mini", "3x1x1", "a", shape, dropout=0.0).train()

  state = {}
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    name, is_kernel = _torch_name(path)
    state[name] = _to_torch(np.asarray(variable[...]), is_kernel)
  expected = {k for k in torch_model.state_dict() if not k.endswith("num_batches_tracked")}
  assert set(state) == expected
  torch_model.load_state_dict(state, strict=False)

  clips = np.random.default_rng(2).integers(0, 256, (3, *shape, 1), dtype=np.uint8)
  want = np.asarray(model(jnp.asarray(clips), train=True, dropout_key=jax.random.key(0)))
  with torch.no_grad():
    got = torch_model(torch.from_numpy(clips)).numpy()
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
  assert np.ptp(want) > 1e-3  # the clips are told apart: the comparison means something
  # The running averages moved the same way (momentum); PyTorch keeps the unbiased variance.
  torch_state = torch_model.state_dict()
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    name, _ = _torch_name(path)
    if name.endswith("running_mean"):
      np.testing.assert_allclose(
        torch_state[name].numpy(), np.asarray(variable[...]), atol=1e-5, rtol=1e-4, err_msg=name
      )


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )


@pytest.mark.slow
def test_time_prints_one_json_line_with_the_bench_keys():
  done = _run(
    "time", "--variant=mini", "--shape=8,32,32,1", "--batch=2", "--steps=1", "--threads=1"
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  keys = {
    "framework",
    "device",
    "devices",
    "variant",
    "dtype",
    "batch",
    "shape",
    "first_step_s",
    "step_s",
    "clips_per_s",
    "params",
    "threads",
    "compiled",
  }
  assert keys <= set(result), keys - set(result)
  assert result["framework"] == f"torch-{torch.__version__}" and result["device"] == "cpu"
  assert result["variant"] == "i3d_mini_conv2_1x1x1" and result["dtype"] == "float32"
  assert (result["batch"], result["shape"], result["devices"]) == (2, [8, 32, 32, 1], 1)
  assert result["params"] == _jax_count("variant=mini", clip_frames=8, image_size=32)
  assert result["threads"] == 1 and result["compiled"] is False
  assert result["step_s"] > 0 and result["first_step_s"] > 0


def test_time_refuses_a_different_parameter_count():
  done = _run(
    "time",
    "--variant=mini",
    "--shape=8,32,32,1",
    "--batch=2",
    "--threads=1",
    "--expect_params=12345",
  )
  assert done.returncode == 2
  assert "12345" in done.stderr and "1536001" in done.stderr
  assert done.stdout == ""


def test_counts_prints_every_variant():
  done = _run("counts", "--head=a")
  assert done.returncode == 0, done.stderr[-2000:]
  counts = json.loads(done.stdout)
  assert len(counts) == len(i3d.VARIANTS) * len(i3d.CONV2_KERNELS)
  assert counts["i3d_mini_conv2_1x1x1"] == 1536001  # docs/models.md


@pytest.mark.slow
def test_bench_times_the_peer_in_the_same_call_and_prints_the_ratio():
  done = tiny_bench("--model=i3d_stem", "--peer=torch")
  assert done.returncode == 0, done.stderr[-3000:]
  ours, peer, ratio = [json.loads(line) for line in done.stdout.strip().splitlines()]
  assert ours["params"] == peer["params"] == _jax_count("variant=stem", 8, 16)
  assert peer["framework"].startswith("torch-") and peer["batch"] == 8
  assert peer["shape"] == ours["shape"] == [8, 16, 16, 1]
  assert ratio["clips_per_s"] == pytest.approx(ours["clips_per_s"] / peer["clips_per_s"], rel=1e-2)


@pytest.mark.slow
def test_bench_peer_refuses_a_family_it_does_not_implement():
  done = tiny_bench("--model=two_stream", "--peer=torch")
  assert done.returncode == 1
  assert "error: --peer=torch implements the I3D family" in done.stderr
