"""The benchmark runs, and model/step/benchmark code stays free of TensorFlow."""

import subprocess
import sys

import pytest

from lvef_jax import bench
from tests.conftest import ROOT, load_config


def test_benchmark_times_the_sharded_train_step():
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  result = bench.benchmark(config, batch_size=8, num_steps=2)
  assert result["devices"] == 8 and result["batch"] == 8
  assert result["shape"] == [8, 16, 16, 1] and result["variant"] == "i3d_stem_conv2_1x1x1"
  assert result["step_s"] > 0
  assert result["clips_per_s"] == pytest.approx(8 / result["step_s"], rel=0.01)  # step_s is rounded


def test_model_step_and_bench_code_never_import_tensorflow():
  """GPU machines have JAX but no TensorFlow: these modules must run there."""
  code = (
    "import sys, lvef_jax.bench, lvef_jax.models.i3d, lvef_jax.training.steps, "
    "lvef_jax.checkpoints, lvef_jax.reporting.summary; "
    "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-2000:]


def test_train_flops_per_clip_follow_the_model():
  def flops(arg, batch):
    config = load_config("i3d", arg)
    config.data.update(clip_frames=8, image_size=32)
    config.train.batch_size = batch
    return bench.train_flops_per_clip(config)

  mini = flops("variant=mini", 8)
  assert mini > 0
  assert flops("variant=mini", 16) == pytest.approx(mini, rel=0.05)  # per clip, not per batch
  assert flops("variant=mini,conv2=3x3x3", 8) > 1.1 * mini  # a 27x larger conv2 kernel
  assert flops("variant=stem", 8) < 0.5 * mini


def test_suite_estimate_counts_every_run(monkeypatch):
  monkeypatch.setattr(bench, "train_flops_per_clip", lambda config: 3e10)
  records = bench.suite(sustained_tflops=100.0)
  assert len(records) == 43 and records[-1]["experiment"] == "total"
  per_run = 50 * 7465 * 3e10 + (50 * 1288 + 7465 + 1288 + 1277) * 1e10
  assert records[0]["pflop"] == pytest.approx(per_run / 1e15)
  assert records[-1]["hours"] == pytest.approx(42 * per_run / 1e14 / 3600)
