"""The benchmark runs, and model/step/benchmark code stays free of TensorFlow."""

import json
import math
import os
import subprocess
import sys

import pytest

from lvef_jax import bench, cpu_backend, hostmem
from lvef_jax.errors import LvefError
from tests.conftest import PLAIN_OPS, ROOT, load_config, shrink


def test_benchmark_times_the_sharded_train_step():
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  result = bench.benchmark(config, batch_size=8, num_steps=2)
  assert result["devices"] == 8 and result["batch"] == 8
  assert result["shape"] == [8, 16, 16, 1] and result["variant"] == "i3d_stem_conv2_1x1x1"
  assert result["step_s"] > 0
  assert result["clips_per_s"] == pytest.approx(8 / result["step_s"], rel=0.01)  # step_s is rounded
  assert isinstance(result["page_faults_per_step"], int) and result["page_faults_per_step"] >= 0
  assert result["glibc_tunables"] == os.environ.get("GLIBC_TUNABLES", "")


def test_benchmark_times_several_members_in_one_step():
  """Two runs of one model in one step, built as training builds them (train.seeds, the
  members mesh): clips/s counts both members' clips, and the FLOPs and parameters are a run's."""
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  one = bench.benchmark(config, batch_size=8, num_steps=1)
  result = bench.benchmark(config, batch_size=8, num_steps=2, members=2)
  assert result["members"] == 2 and result["batch"] == 8 and result["member_map"] == "loop"
  assert one["members"] == 1 and one["member_map"] == "none"
  assert result["clips_per_s"] == pytest.approx(2 * result["clips_per_s_per_member"], rel=1e-3)
  assert result["clips_per_s"] == pytest.approx(16 / result["step_s"], rel=0.01)
  assert result["params"] == one["params"] and result["gflop_per_clip"] == one["gflop_per_clip"]
  assert config.train.seeds == 1  # the caller's config is left as it was
  config.compute.members = "vmap"
  assert bench.benchmark(config, 8, num_steps=1, members=2)["member_map"] == "vmap"
  with pytest.raises(LvefError, match="--data=device, not resident"):
    bench.benchmark(config, batch_size=8, num_steps=1, data_mode="resident", members=2)


def test_member_counts_are_timed_in_turns():
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  records = bench.benchmark_members(config, batch_size=8, num_steps=2, counts=[1, 2, 1])
  assert [r["members"] for r in records] == [1, 2]  # each count once
  one, two = records
  assert one["clips_per_s_vs_one"] == 1.0 and one["timed"] == "in turns"
  assert two["clips_per_s_vs_one"] == pytest.approx(two["clips_per_s"] / one["clips_per_s"], 1e-2)


@pytest.mark.slow
def test_model_step_and_bench_code_never_import_tensorflow():
  """GPU machines have JAX but no TensorFlow: these modules must run there."""
  code = (
    "import sys, lvef_jax.bench, lvef_jax.models.i3d, lvef_jax.training.steps, "
    "lvef_jax.checkpoints, lvef_jax.reporting.summary, lvef_jax.data.clips, "
    "lvef_jax.data.device_data, lvef_jax.evaluation.commands, lvef_jax.gpu_program, "
    "lvef_jax.hlo_cost; "
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


def test_flops_are_the_model_s_whatever_the_kernels():
  """With the CPU's forms the step does fewer multiplications (Winograd on the 8x8 Inception
  maps) and more (the folded stem multiplies the zero frames that pad the clip); the bench
  counts the model's FLOPs, those of XLA's plain ops, and says so in its line."""
  config = load_config("i3d", "variant=mini")
  config.data.update(clip_frames=8, image_size=64)  # 8x8 Inception maps
  plain = bench.train_flops_per_clip(config, 8)
  assert bench.lowered_flops_per_clip(config, 8) == pytest.approx(plain, rel=1e-6)  # xla
  config.compute.kernels = "cpu"
  assert bench.train_flops_per_clip(config, 8) == pytest.approx(plain, rel=1e-6)
  assert bench.lowered_flops_per_clip(config, 8) < 0.8 * plain
  config.data.update(image_size=16)
  result = bench.benchmark(config, batch_size=8, num_steps=1)
  want = bench.train_flops_per_clip(config, 8) / 1e9
  assert result["gflop_per_clip"] == pytest.approx(want, rel=1e-3)  # rounded


def test_suite_estimate_counts_every_run(monkeypatch):
  """Every run at its epochs (the paper's 50, EchoNet-Dynamic's 45) of full train batches (the
  last partial one dropped, as training does), plus its predictions at a third of a train
  step's FLOPs: one val clip a video each epoch, then the final evaluation's clips."""
  from lvef_jax import experiments

  monkeypatch.setattr(bench, "train_flops_per_clip", lambda config: 3e10)
  records = bench.suite(sustained_tflops=100.0)
  assert len(records) == 45 + 1 and records[-1]["experiment"] == "total"
  assert [r["experiment"] for r in records[:-1]] == experiments.names(include_aliases=False)
  predicted = (50 * 1288 + 7465 + 1288 + 1277) * 1e10

  def per_run(batch):
    return 50 * (7465 // batch) * batch * 3e10 + predicted

  assert records[0]["experiment"] == "table1/stem"  # batch 4
  assert records[0]["pflop"] == pytest.approx(per_run(4) / 1e15)
  # R(2+1)D-18: 45 epochs at batch 20; every clip (one frame apart) of a 175-frame video at
  # the end: 175 - 31 * 2 = 113 clips a video, of val and test (EchoNet-Dynamic's scoring).
  echonet = records[-4]
  assert echonet["experiment"] == "echonet/r2plus1d_32_2"
  final = (1288 + 1277) * 113
  want = 45 * (7465 // 20) * 20 * 3e10 + (45 * 1288 + final) * 1e10
  assert echonet["pflop"] == pytest.approx(want / 1e15)

  def flops(name):
    config = experiments.get_config(name)
    work = bench.run_work(config)
    return work["train_steps"] * config.train.batch_size * 3e10 + work["predicted_clips"] * 1e10

  total = sum(flops(r["experiment"]) for r in records[:-1])
  assert records[-1]["hours"] == pytest.approx(total / 1e14 / 3600)


def test_the_work_of_an_all_clips_run():
  """EchoNet-Dynamic's recipe: 45 epochs, no recalibration, the val split's first clips each
  epoch, then every clip of each video of eval.splits (a 175-frame video), in calls of
  eval.batch_size."""
  from lvef_jax import experiments

  config = experiments.get_config("echonet/r2plus1d_32_2")
  assert bench.final_clips_per_video(config) == 113
  work = bench.run_work(config)
  assert work["train_steps"] == 45 * (7465 // 20) and work["recalibration_steps"] == 0
  final = [n * 113 for n in (1288, 1277)]  # eval.splits: val and test
  assert work["predicted_clips"] == 45 * 1288 + sum(final)
  batch = config.eval.batch_size
  want = 45 * math.ceil(1288 / batch) + sum(math.ceil(n / batch) for n in final)
  assert work["predict_calls"] == want
  config.eval.update(splits=("val", "test"), clip_stride=0)  # clips that follow each other
  assert bench.final_clips_per_video(config) == 2  # starts 0 and 64 of the latest 112
  assert bench.run_work(config)["predicted_clips"] == 45 * 1288 + (1288 + 1277) * 2
  config.eval.clips = "one"
  assert bench.final_clips_per_video(config) == 1


def test_benchmark_reports_flops_and_mfu_and_model_short_names():
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  result = bench.benchmark(config, batch_size=8, num_steps=1, peak_tflops=1.0)
  assert result["gflop_per_clip"] > 0
  achieved = result["gflop_per_clip"] * result["clips_per_s"] / 1e3
  assert result["tflops"] == pytest.approx(achieved, rel=0.05)
  assert result["mfu"] == pytest.approx(result["tflops"] / 8, rel=0.05)  # 8 devices of 1 TFLOP/s
  argv = bench._model_config_argv(["bench", "--model=i3d_original", "--batch=2"])
  assert argv[1].endswith("configs/i3d.py:variant=original") and argv[2:] == ["--batch=2"]
  assert ":table3/B2,recipe=paper" in bench._model_config_argv(["b", "--model=table3/B2"])[1]
  argv = bench._model_config_argv(["b", "--model=r2plus1d_18"])
  assert argv[1].endswith("configs/r2plus1d.py:arch=r2plus1d_18")
  assert bench.MODELS["r3d_18"] == ("r2plus1d", "arch=r3d_18")
  assert bench.MODELS["mc3_18"] == ("r2plus1d", "arch=mc3_18")
  argv = bench._model_config_argv(["b", "--model=echonet/r3d_32_2"])
  assert ":echonet/r3d_32_2,recipe=paper" in argv[1]
  with pytest.raises(SystemExit, match="expected one of"):
    bench._model_config_argv(["b", "--model=nope"])


def tiny_bench(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """``python -m lvef_jax.bench`` with ``flags`` at a tiny clip shape (8x16x16, batch 8)."""
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "lvef_jax.bench",
      "--batch=8",
      "--steps=1",
      "--config.data.clip_frames=8",
      "--config.data.image_size=16",
      PLAIN_OPS,
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )


@pytest.mark.slow
def test_bench_command_line_with_a_model_name_and_overrides():
  # Started without glibc's tunables: where huge pages would help, the bench says how to ask.
  # And without the XLA flag of lvef_jax/cpu_backend.py, which the bench sets for itself.
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(cpu_backend.FLAG, "").strip()
  done = tiny_bench("--model=i3d_stem", "--precision=bf16", env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["variant"] == "i3d_stem_conv2_1x1x1" and result["dtype"] == "bfloat16"
  assert result["kernels"] == "xla"
  assert result["shape"] == [8, 16, 16, 1] and result["glibc_tunables"] == ""
  assert result["xla_flags"] == f"{env['XLA_FLAGS']} {cpu_backend.FLAG}".strip()
  hint = hostmem.allocator_hint(env, backend="cpu")
  assert (f"GLIBC_TUNABLES={hostmem.TUNABLE}" in done.stderr) == (hint is not None)


@pytest.mark.slow
def test_bench_command_line_times_echonet_dynamic_s_model_in_bf16():
  """``--model=r2plus1d_18`` at a tiny clip, in bf16: the arch named, a run's parameters
  (torchvision's R(2+1)D-18 with one output). R3D-18 and MC3-18 are the same path."""
  model = "r2plus1d_18"
  done = tiny_bench(f"--model={model}", "--precision=bf16", "--config.data.image_size=32")
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["variant"] == model and result["dtype"] == "bfloat16"
  assert result["shape"] == [8, 32, 32, 1] and result["batch"] == 8
  assert result["model"]["arch"] == model and result["model"]["dtype"] == "bfloat16"
  assert result["clips_per_s"] > 0 and result["gflop_per_clip"] > 0
  assert result["params"] == 31_505_325 - 400 * 512 - 400 + 513


def test_the_torch_peer_refuses_other_models_before_timing():
  with pytest.raises(LvefError, match="I3D family with norm=batch, not r2plus1d"):
    bench.check_peer(load_config("r2plus1d"))
  with pytest.raises(LvefError, match="not i3d/layer"):
    bench.check_peer(load_config("i3d", "variant=mini,norm=layer"))
  bench.check_peer(load_config("i3d", "variant=mini"))


@pytest.mark.slow
def test_bench_command_line_refuses_the_peer_for_a_video_resnet():
  done = tiny_bench("--model=r2plus1d_18", "--peer=torch")
  assert done.returncode == 1 and "I3D family with norm=batch" in done.stderr, done.stderr
  assert done.stdout == ""  # nothing timed


@pytest.mark.slow
def test_bench_command_line_times_members():
  done = tiny_bench("--model=i3d_stem", "--members=2")
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["members"] == 2 and result["member_map"] == "loop"
  assert result["clips_per_s"] == pytest.approx(2 * result["clips_per_s_per_member"], rel=1e-3)
  done = tiny_bench("--model=i3d_stem", "--members=1,2", "--config.compute.members=vmap")
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
  assert [(r["members"], r["member_map"]) for r in lines] == [(1, "none"), (2, "vmap")]
  assert "clips_per_s_vs_one" in lines[1]
  for flags, message in [
    (("--members=2", "--data=resident"), "error: --members=2 times the step"),
    (("--members=1,2", "--data=resident"), "--data=device, not resident"),
    (("--members=1,two",), "expected counts"),
    (("--members=2", "--peer=torch"), "not with --suite or --peer"),
  ]:
    done = tiny_bench("--model=i3d_stem", *flags)
    assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("data_mode", ["resident", "tfdata"])
def test_benchmark_fed_by_the_device_resident_split_or_by_tf_data(
  data_mode, data_cache, monkeypatch
):
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  monkeypatch.setattr(bench, "INPUT_SECONDS", 0.2)
  result = bench.benchmark(config, batch_size=8, num_steps=2, data_mode=data_mode)
  assert result["data"] == data_mode and result["clips_per_s"] > 0
  assert result["shape"] == [8, 16, 16, 1]
  assert ("input_clips_per_s" in result) == (data_mode == "tfdata")
  if data_mode == "tfdata":
    assert result["input_clips_per_s"] > 0


@pytest.mark.parametrize(
  "model", ["i3d_mini", "two_stream", "fusion_single_input", "cnn_rnn_lstm", "r2plus1d_18"]
)
@pytest.mark.slow
def test_the_bench_runs_every_family_at_a_tiny_shape(model):
  family, arg = bench.MODELS[model]
  config = load_config(family, arg or None)
  config.data.update(clip_frames=8, image_size=32)
  result = bench.benchmark(config, batch_size=8, num_steps=1)
  assert result["clips_per_s"] > 0 and result["gflop_per_clip"] > 0
  assert result["params"] > 0 and result["shape"] == [8, 32, 32, 1]
