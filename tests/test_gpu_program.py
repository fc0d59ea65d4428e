"""The GPU program compiled without a GPU (``bench --target``): the targets read from XLA's
specs, the message without the CUDA build, and, where JAX's CUDA build is installed (``make
gpu-check``), the compiled H100 train step against the model's own count."""

import math

import pytest

from lvef_jax import bench, gpu_program
from lvef_jax.errors import LvefError
from tests.conftest import load_config

needs_cuda_build = pytest.mark.skipif(
  not gpu_program.cuda_build_installed(),
  reason="needs JAX's CUDA build (make gpu-check installs it in .venv-gpu)",
)


def test_targets_come_from_xla_s_specs():
  """Bandwidth and memory as the spec files give them; the tensor-core peaks from their matrix
  units (2 FLOPs a multiply-add) or, where a spec has none, from the vendor table."""
  h100 = gpu_program.load_target("h100")
  assert h100.device == "NVIDIA H100 80GB HBM3"
  assert h100.bandwidth == 3.35232e12 and h100.memory_bytes == 84942979072
  assert h100.peak_flops["bfloat16"] == pytest.approx(989.4e12, rel=1e-3)  # 132 SMs x 4 x 512
  assert h100.peak_flops["float32"] == pytest.approx(h100.peak_flops["bfloat16"] / 2)  # TF32
  assert "collective_memory_granularity" not in h100.spec  # jaxlib 0.10.2 cannot parse it
  h200 = gpu_program.load_target("h200")
  assert h200.bandwidth == 4.8e12 and h200.peak_flops == h100.peak_flops
  a100 = gpu_program.load_target("a100")
  assert a100.peak_flops == {"bfloat16": 312e12, "float32": 156e12}
  for name in gpu_program.TARGETS:
    assert "Source: the OpenXLA project" in gpu_program.load_target(name).source.read_text()
  with pytest.raises(LvefError, match="expected one of h100, h200, a100"):
    gpu_program.load_target("v100")


def test_without_the_cuda_build_the_error_says_how_to_get_it(monkeypatch):
  monkeypatch.setattr(gpu_program, "cuda_build_installed", lambda: False)
  gpu_program.target_mesh.cache_clear()
  with pytest.raises(LvefError, match="make gpu-check"):
    gpu_program.compile_step(load_config("i3d", "variant=stem"), 2, "h100")


def test_the_sweep_s_work_per_run():
  """Train steps are full batches of EchoNet-Dynamic's 7,465 train videos, 50 epochs."""
  config = load_config("i3d", "variant=mini")
  work = bench.run_work(config)
  assert work["train_steps"] == 50 * (7465 // config.train.batch_size)
  assert work["predicted_clips"] == 50 * 1288 + 7465 + 1288 + 1277
  eval_batch = config.eval.batch_size
  calls = 50 * math.ceil(1288 / eval_batch) + sum(
    math.ceil(n / eval_batch) for n in (7465, 1288, 1277)
  )
  assert work["predict_calls"] == calls


@needs_cuda_build
@pytest.mark.gpu_compile
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_h100_train_step_does_the_model_s_arithmetic(precision):
  """I3D-mini at the paper's clip and batch 4, compiled for an H100: its FLOPs (counted from the
  optimized HLO, cuDNN's convolutions from their shapes) within 2 % of the model's (XLA's cost
  analysis of the step lowered for the CPU), it fits, and its pools leave no scatter."""
  config = load_config("i3d", "variant=mini")
  bench._compute_dtype(config, precision)
  line = bench.gpu_line(config, 4, "h100", kernel_us=3.0)
  assert line["device"] == "NVIDIA H100 80GB HBM3" and line["batch"] == 4
  assert line["gflop"] == pytest.approx(line["model_gflop"], rel=0.02)
  assert line["matmul_gflop"] == pytest.approx(line["model_gflop"], rel=0.02)
  assert line["fits"] and 0 < line["memory_gb"]["needed"] < 1.0
  assert line["kernels"]["library"] >= 40  # cuDNN: forward, data and filter gradients
  assert line["kernels_total"] == sum(line["kernels"].values())
  bounds = line["bound_ms"]
  assert line["step_bound_ms"] == max(bounds.values()) and line["limited_by"] in bounds
  assert bounds["launches"] == pytest.approx(line["kernels_total"] * 3.0e-3, rel=1e-3)
  assert bounds["memory"] == pytest.approx(line["gb_moved"] / 3.35232, rel=1e-2)
  assert 0 < line["mfu_bound"] < 1


@needs_cuda_build
@pytest.mark.gpu_compile
def test_the_models_pools_compile_to_slices_on_the_gpu():
  """The max pools' gradient is the models' own (lvef_jax.models.pooling): XLA's GPU compiler
  would turn reduce_window's into a scatter fed by an index per axis."""
  config = load_config("i3d", "variant=mini")
  config.data.update(clip_frames=8, image_size=32)
  compiled, _ = gpu_program.compile_step(config, 2, "h100")
  text = compiled.as_text()
  assert "scatter" not in text and "reduce-window" not in text


@needs_cuda_build
@pytest.mark.gpu_compile
@pytest.mark.parametrize("step", ["predict", "batch_stats"])
def test_the_sweep_s_other_steps_compile(step):
  config = load_config("two_stream")
  config.data.update(clip_frames=8, image_size=32)
  compiled, _ = gpu_program.compile_step(config, 4, "h100", step)
  figures = gpu_program.program_figures(compiled, gpu_program.load_target("h100"), "float32")
  assert figures["fits"] and figures["kernels_total"] > 0 and figures["gflop"] > 0


@needs_cuda_build
@pytest.mark.gpu_compile
def test_members_share_one_program_s_launches():
  """Two runs in one train step (``--members=2``): twice the model's FLOPs, not twice the
  kernels."""
  config = load_config("i3d", "variant=mini")
  config.data.update(clip_frames=8, image_size=32)
  solo = bench.gpu_line(config, 2, "h100", kernel_us=3.0)
  pair = bench.gpu_line(config, 2, "h100", kernel_us=3.0, members=2)
  assert pair["members"] == 2 and pair["model_gflop"] == pytest.approx(2 * solo["model_gflop"])
  assert pair["kernels_total"] < 1.5 * solo["kernels_total"]
  assert pair["member_step_bound_ms"] == pytest.approx(pair["step_bound_ms"] / 2, rel=1e-3)
