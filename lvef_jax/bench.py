r"""Train-step throughput of a model config, JAX only (no TensorFlow, no data on disk).

  python -m lvef_jax.bench --config=configs/i3d.py:variant=mini --batch=4 --steps=5
  python -m lvef_jax.bench --config=configs/quickstart.py --batch=16

Prints one JSON line per run, in the same shape as the PyTorch implementation of the I3D
layers that ``docs/benchmarks.md`` compares with, so the two can be compared on the same
machine. Random uint8 clips are placed on the devices once; what is timed is the jitted,
sharded train step (forward, backward, Adam), the part ``launch.py`` repeats. Record results
in ``docs/benchmarks.md`` with the machine. Every model family works (``--config`` any
``configs/<family>.py``).

  python -m lvef_jax.bench --model=i3d_mini --batch=4 --precision=bf16
  python -m lvef_jax.bench --model=table3/B2        # any experiment of the benchmark too

``--data=device`` (the default) times the step on one random batch already on the devices;
``--data=resident`` feeds it batches cut on the devices from a synthesised device-resident
split (``data.device_resident`` in training); ``--data=tfdata`` feeds it from the tf.data
pipeline over the configured dataset (end to end; TensorFlow is imported only then) and also
reports ``input_clips_per_s``, what the pipeline alone delivers.

``--model`` names a registry model (``MODELS`` below, or an experiment name) instead of a config
file; ``--config.KEY=VALUE`` overrides apply to it. Each line has the FLOPs per clip of the
whole step (XLA's cost analysis of the lowered step, with plain convolutions as on GPUs: the
model's FLOPs, also on the CPU, whose Winograd convolutions do fewer), the achieved TFLOP/s,
and the MFU where the device's peak is known (``PEAK_TFLOPS``, or ``--peak_tflops``).

  python -m lvef_jax.bench --model=i3d_mini --batch=4 --peer=torch [--peer_compile]

``--peer=torch`` then times ``benchmarks/torch_peer.py``, the same I3D model in PyTorch (the
optional ``peer`` extra), in the same call, and prints its line and the ratio of clips/s. The
peer refuses to run unless its parameter count equals ours.

  python -m lvef_jax.bench --suite [--sustained_tflops=100]

prints, for every run of the paper's benchmark (``lvef_jax/experiments.py``), the FLOPs of one
train step per clip (XLA's cost analysis of the lowered step at the paper's clip shape and
batch; nothing is compiled or run), and the arithmetic of the whole sweep on EchoNet-Dynamic
with its time at an assumed sustained rate.

  python -m lvef_jax.bench --target=h100 --model=i3d_mini --batch=4 --precision=bf16
  python -m lvef_jax.bench --target=h100 --check      # every family (make gpu-check)
  python -m lvef_jax.bench --target=h100 --suite      # the whole benchmark's bounds

compile the train step for a GPU on any machine (JAX's CUDA build, the ``gpu`` extra; no device
is used) and print what the compiled program does per step: its memory, FLOPs, bytes and
kernels, and lower bounds on its time (``lvef_jax.gpu_program``). ``--suite`` adds those bounds
up over the whole benchmark (train, prediction and BatchNorm-recalibration steps).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lvef_jax import config_base, cpu_backend, gpu_program, hostmem, models, sharding
from lvef_jax.errors import LvefError
from lvef_jax.training import state as state_lib, steps

# Short names of the registry's models: family config file and its argument.
MODELS = {
  "i3d_mini": ("i3d", "variant=mini"),
  "i3d_mini_3x3x3": ("i3d", "variant=mini,conv2=3x3x3"),
  "i3d_original": ("i3d", "variant=original"),
  "i3d_stem": ("i3d", "variant=stem"),
  "i3d_stem_im3_im4": ("i3d", "variant=stem_im3_im4"),
  "two_stream": ("two_stream", ""),
  "fusion_combination": ("fusion", "kind=combination"),
  "fusion_new_combination": ("fusion", "kind=new_combination"),
  "fusion_dual_input": ("fusion", "kind=dual_input"),
  "fusion_dual_input_truncated": ("fusion", "kind=dual_input_truncated"),
  "fusion_single_input": ("fusion", "kind=single_input"),
  "cnn_rnn_gru": ("cnn_rnn", "rnn=gru"),
  "cnn_rnn_lstm": ("cnn_rnn", "rnn=lstm"),
  "cnn_rnn_inception_v3": ("cnn_rnn", "backbone=inception_v3,train_backbone=all"),
}
MODELS_DOC = MODELS
# Dense peak TFLOP/s by device kind and compute dtype (vendor figures, without sparsity;
# float32 matmuls run as TF32 on these GPUs).
PEAK_TFLOPS = {
  "NVIDIA H100 80GB HBM3": {"bfloat16": 989.0, "float32": 494.7},
  "NVIDIA H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
  "NVIDIA H200": {"bfloat16": 989.0, "float32": 494.7},
  "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "float32": 156.0},
  "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "float32": 156.0},
  "NVIDIA L4": {"bfloat16": 121.0, "float32": 60.0},
}


def _model_config_argv(argv: list[str]) -> list[str]:
  """``--model=NAME`` becomes the ``--config`` that builds it, so ``--config.KEY`` overrides
  apply to that model (absl needs the config file on the command line when it parses)."""
  name = next((a.partition("=")[2] for a in argv if a.startswith("--model=")), None)
  if name is None:
    return argv
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    raise SystemExit("error: give --model or --config, not both")
  config_dir = config_base.CONFIG_DIR
  if name in MODELS:
    family, arg = MODELS[name]
    spec = f"{config_dir / family}.py:{arg}" if arg else f"{config_dir / family}.py"
  else:
    from lvef_jax import experiments

    try:
      experiments.canonical(name)
    except LvefError:
      raise SystemExit(
        f"error: --model={name}: expected one of {', '.join(sorted(MODELS))} or an experiment "
        "name (python launch.py --list_experiments)"
      ) from None
    spec = f"{config_dir / 'experiment.py'}:{name},recipe=paper,runlocal=0"
  # --model itself is consumed here: absl then sees the same command line as with --config.
  rest = [a for a in argv[1:] if not a.startswith("--model=")]
  return [argv[0], f"--config={spec}", *rest]


if __name__ == "__main__":
  # Before the flags are defined: the config flag reads the command line when it is defined.
  sys.argv = _model_config_argv(sys.argv)

CONFIG = config_flags.DEFINE_config_file("config", "configs/i3d.py", "Model config.")
BATCH = flags.DEFINE_integer(
  "batch", None, "Global batch (default: the config's train.batch_size)."
)
STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the compiling one.")
MODEL = flags.DEFINE_string(
  "model", None, f"A model short name ({', '.join(sorted(MODELS_DOC))}) or an experiment name."
)
PRECISION = flags.DEFINE_enum(
  "precision", None, ["fp32", "bf16"], "Compute dtype (parameters and Adam stay float32)."
)
DATA = flags.DEFINE_enum(
  "data",
  "device",
  ["device", "resident", "tfdata"],
  "Where batches come from: one random batch on the devices (the step alone), a synthesised "
  "device-resident split (sampler + step), or the tf.data pipeline (end to end; imports "
  "TensorFlow).",
)
PEAK = flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s, for the MFU.")
PEER = flags.DEFINE_enum(
  "peer",
  None,
  ["torch"],
  "Also time the PyTorch implementation of the same I3D model (benchmarks/torch_peer.py, the "
  "optional `peer` extra) in this call, and print the ratio.",
)
PEER_COMPILE = flags.DEFINE_bool("peer_compile", False, "--peer: torch.compile the peer's model.")
SUITE = flags.DEFINE_bool(
  "suite", False, "FLOPs of every benchmark run and the sweep total (with --target: its bounds)."
)
TARGET = flags.DEFINE_enum(
  "target",
  None,
  list(gpu_program.TARGETS),
  "Compile the train step for this GPU (no device needed; the CUDA build of jaxlib, the `gpu` "
  "extra) and print its memory, FLOPs, bytes, kernels and step-time bounds instead of timing.",
)
KERNEL_US = flags.DEFINE_float(
  "kernel_us", gpu_program.KERNEL_US, "--target: assumed cost of one kernel launch (µs)."
)
MEMBERS = flags.DEFINE_integer(
  "members",
  1,
  "--target: this many runs in one train step (jax.vmap over a leading member axis of the "
  "state and batch; steps.make_train_step).",
)
CHECK = flags.DEFINE_bool(
  "check",
  False,
  "--target: compile one train step of every model family at its paper batch size, print the "
  "table and fail unless each fits in the GPU's memory (make gpu-check).",
)
SUSTAINED = flags.DEFINE_float(
  "sustained_tflops", 100.0, "--suite: assumed sustained TFLOP/s of the accelerator."
)

# EchoNet-Dynamic's splits (FileList.csv), the paper's epoch limit.
ECHONET_SPLITS = {"train": 7465, "val": 1288, "test": 1277}
MAX_EPOCHS = 50


def train_flops_per_clip(config, batch_size: int | None = None) -> float:
  """FLOPs of one train step per clip at the config's (or this) batch and clip shape: the
  model's own, built with XLA's plain ops (``compute.kernels=xla``) as GPUs run them, whatever
  the config's kernels (the CPU's Winograd convolutions do fewer multiplications)."""
  plain = config.copy_and_resolve_references()
  plain.compute.kernels = "xla"
  return lowered_flops_per_clip(plain, batch_size or config.train.batch_size)


def lowered_flops_per_clip(config, batch_size: int) -> float:
  """FLOPs per clip of the train step as ``config`` builds it (its ``compute.kernels``): XLA's
  cost analysis of the whole step (before it is partitioned over the devices), lowered for
  this alone and not compiled."""
  mesh = sharding.make_mesh(jax.devices()[:1])  # the whole step's count, whatever the devices
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  shapes = gpu_program.clip_batch_shapes(config, batch_size, mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  cost = steps.make_train_step(graphdef, tx, mesh).lower(state, shapes).cost_analysis()
  return float(cost.get("flops", 0.0)) / batch_size if cost else 0.0


def run_work(config) -> dict:
  """What one benchmark run does on EchoNet-Dynamic at the paper's 50 epochs (early stopping
  can only shorten it): train steps (full batches of the train split), BatchNorm
  recalibration batches, and predicted clips and prediction calls (the val split after every
  epoch, then all three splits with the best checkpoint)."""
  batch, eval_batch = config.train.batch_size, config.eval.batch_size
  val = ECHONET_SPLITS["val"]
  calls = MAX_EPOCHS * math.ceil(val / eval_batch) + sum(
    math.ceil(n / eval_batch) for n in ECHONET_SPLITS.values()
  )
  return {
    "train_steps": MAX_EPOCHS * (ECHONET_SPLITS["train"] // batch),
    "recalibration_steps": MAX_EPOCHS * max(config.train.bn_recalibration_batches, 0),
    "predicted_clips": MAX_EPOCHS * val + sum(ECHONET_SPLITS.values()),
    "predict_calls": calls,
  }


def suite(sustained_tflops: float) -> list[dict]:
  """One record per benchmark run and a final total: FLOPs of a full sweep on EchoNet-Dynamic
  (:func:`run_work`). A prediction costs a third of a train step (forward only, of
  forward+backward); the recalibration batches are left out (forward passes without a
  backward, a few percent at most).
  """
  from lvef_jax import experiments  # plain data

  records, total = [], 0.0
  for name in experiments.names(include_aliases=False):
    config = experiments.get_config(name)
    train, work = train_flops_per_clip(config), run_work(config)
    batch = config.train.batch_size
    flops = work["train_steps"] * batch * train + work["predicted_clips"] * train / 3
    total += flops
    records.append(
      {"experiment": name, "train_gflop_per_clip": round(train / 1e9, 2), "pflop": flops / 1e15}
    )
  records.append(
    {
      "experiment": "total",
      "pflop": total / 1e15,
      "sustained_tflops": sustained_tflops,
      "hours": total / (sustained_tflops * 1e12) / 3600,
    }
  )
  return records


def _compute_dtype(config, precision: str | None) -> None:
  if precision:
    config.model.dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]


def gpu_line(config, batch_size: int, target: str, kernel_us: float, members: int = 1) -> dict:
  """The train step of ``config`` compiled for ``target`` (no device needed): one JSON record
  of its memory, FLOPs, bytes, kernels and step-time bounds (``lvef_jax.gpu_program``), with
  the model's FLOPs as the CPU counts them (:func:`train_flops_per_clip`) beside. ``members``
  runs in one program: the figures are of the whole step, ``member_step_bound_ms`` a run's
  share."""
  model_flops = train_flops_per_clip(config, batch_size) * batch_size * members
  figures, seconds = _gpu_figures(
    config, batch_size, target, "train", kernel_us, members=members, model_flops=model_flops
  )
  model_gflop = model_flops / 1e9
  m, data = config.model, config.data
  return {
    "framework": f"jax-{jax.__version__}",
    "target": target,
    "device": gpu_program.load_target(target).device,
    "variant": f"i3d_{m.variant}_conv2_{m.conv2}" if m.name == "i3d" else m.name,
    "model": {k: v for k, v in m.items() if k != "name"},
    "dtype": m.dtype,
    "batch": batch_size,
    "members": members,
    "shape": [data.clip_frames, data.image_size, data.image_size, 1],
    "compile_s": round(seconds, 2),
    "model_gflop": round(model_gflop, 3),
    **_rounded(figures),
    "member_step_bound_ms": _rounded(figures["step_bound_ms"] / members),
  }


def _rounded(value):
  if isinstance(value, float):
    return float(f"{value:.4g}")
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  return value


def _gpu_figures(
  config,
  batch_size: int,
  target: str,
  step: str,
  kernel_us: float,
  members: int = 1,
  model_flops: float | None = None,
) -> tuple[dict, float]:
  """``step`` of ``config`` compiled for ``target``: its figures
  (``gpu_program.program_figures``) and the compile time."""
  compiled, seconds = gpu_program.compile_step(config, batch_size, target, step, members)
  spec = gpu_program.load_target(target)
  figures = gpu_program.program_figures(
    compiled, spec, config.model.dtype, kernel_us, model_flops=model_flops
  )
  return figures, seconds


def gpu_suite(target: str, precision: str | None, kernel_us: float):
  """Yields one record per benchmark run, then the total: the step-time bounds of its compiled
  train, prediction and BatchNorm-recalibration steps on ``target``, times what the run does
  (:func:`run_work`). Runs sharing a model, data shape and batch share the compiled programs.
  A run's ``bound_h`` adds up each step's largest bound: no step can be faster."""
  from lvef_jax import experiments  # plain data

  cache, kinds = {}, ("compute", "memory", "launches", "bound")
  totals = dict.fromkeys(kinds, 0.0)
  for name in experiments.names(include_aliases=False):
    config = experiments.get_config(name)
    _compute_dtype(config, precision)
    work = run_work(config)
    uses = (
      ("train", config.train.batch_size, work["train_steps"]),
      ("predict", config.eval.batch_size, work["predict_calls"]),
      ("batch_stats", config.train.batch_size, work["recalibration_steps"]),
    )
    seconds, figures = dict.fromkeys(kinds, 0.0), {}
    for step, batch, count in uses:
      if not count:
        continue
      key = (config.model.to_json(), config.data.to_json(), step, batch)
      if key not in cache:
        cache[key] = _gpu_figures(config, batch, target, step, kernel_us)[0]
      figures[step] = cache[key]
      bounds = figures[step]["bound_ms"]
      for kind in ("compute", "memory", "launches"):
        seconds[kind] += count * bounds[kind] / 1e3
      seconds["bound"] += count * max(bounds.values()) / 1e3
    for kind in kinds:
      totals[kind] += seconds[kind]
    train = figures["train"]
    yield _rounded(
      {
        "experiment": name,
        "dtype": config.model.dtype,
        "batch": config.train.batch_size,
        "train_step_bound_ms": train["step_bound_ms"],
        "limited_by": train["limited_by"],
        "kernels": train["kernels_total"],
        **{f"{kind}_h": seconds[kind] / 3600 for kind in kinds},
      }
    )
  yield _rounded(
    {
      "experiment": "total",
      "target": target,
      "kernel_us": kernel_us,
      **{f"{kind}_h": totals[kind] / 3600 for kind in kinds},
    }
  )


# make gpu-check: one train step of every model family at its paper batch size (experiment,
# precision), bf16 (the GPU's speed) and I3D-mini in fp32 too (the paper's).
CHECK_ROWS = (
  ("i3d_mini", "table1/mini", "bf16"),
  ("i3d_mini", "table1/mini", "fp32"),
  ("i3d_original", "table1/original", "bf16"),
  ("two_stream", "table5/B1", "bf16"),
  ("fusion_new_combination", "table6/NC-B1", "bf16"),
  ("cnn_rnn_inception_v3", "table8/CNN_RNN-1", "bf16"),
  ("cnn_rnn_lstm", "table9/LSTM-B1", "bf16"),
)
CHECK_COLUMNS = (
  ("model", "{}"),
  ("dtype", "{}"),
  ("batch", "{}"),
  ("memory GB", "{:.2f}"),
  ("GFLOP", "{:.1f}"),
  ("model GFLOP", "{:.1f}"),
  ("GB moved", "{:.2f}"),
  ("kernels", "{}"),
  ("compute ms", "{:.3f}"),
  ("memory ms", "{:.3f}"),
  ("launch ms", "{:.3f}"),
  ("MFU bound", "{:.1%}"),
)


def gpu_check(target: str, kernel_us: float) -> tuple[list[dict], str]:
  """Compiles :data:`CHECK_ROWS` for ``target``; returns their records and a Markdown table.
  Raises LvefError naming the rows that do not fit in the GPU's memory."""
  from lvef_jax import experiments  # plain data

  records, lines = [], []
  header = [title for title, _ in CHECK_COLUMNS]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "|".join("---" for _ in header) + "|")
  for label, experiment, precision in CHECK_ROWS:
    config = experiments.get_config(experiment)
    _compute_dtype(config, precision)
    record = gpu_line(config, config.train.batch_size, target, kernel_us)
    record["label"] = label
    records.append(record)
    bounds = record["bound_ms"]
    cells = (
      label,
      precision,
      record["batch"],
      record["memory_gb"]["needed"],
      record["gflop"],
      record["model_gflop"],
      record["gb_moved"],
      record["kernels_total"],
      bounds["compute"],
      bounds["memory"],
      bounds["launches"],
      record["mfu_bound"],
    )
    lines.append(
      "| " + " | ".join(fmt.format(v) for (_, fmt), v in zip(CHECK_COLUMNS, cells)) + " |"
    )
  too_big = [r["label"] + f" ({r['dtype']})" for r in records if not r["fits"]]
  table = "\n".join(lines)
  if too_big:
    raise LvefError(f"does not fit in the memory of {target}: {', '.join(too_big)}\n{table}")
  return records, table


# Videos and frames per video of the device-resident split that --data=resident synthesises:
# a stand-in with EchoNet-Dynamic's typical length (its train split: 7,465 videos).
RESIDENT_VIDEOS, RESIDENT_FRAMES = 64, 175
# --data=tfdata times the pipeline alone for at least this long.
INPUT_SECONDS = 5.0


def _random_batch(data, batch_size: int, rng: np.random.Generator) -> dict:
  shape = (batch_size, data.clip_frames, data.image_size, data.image_size, 1)
  return {
    "video": rng.integers(0, 256, shape, dtype=np.uint8),
    "ef": rng.uniform(10, 80, batch_size).astype(np.float32),
  }


def _resident_batches(data, batch_size: int, mesh, rng: np.random.Generator):
  """Batches cut on the devices from a synthesised device-resident split, as training with
  ``data.device_resident`` does (random plans; no TensorFlow, no files)."""
  from lvef_jax.data import clips, device_data  # JAX and numpy only

  size, frames = data.image_size, RESIDENT_FRAMES
  videos = device_data.DeviceVideos.put(
    {
      "frames": rng.integers(0, 256, (RESIDENT_VIDEOS * frames, size, size), dtype=np.uint8),
      "first": np.arange(RESIDENT_VIDEOS, dtype=np.int32) * frames,
      "length": np.full(RESIDENT_VIDEOS, frames, np.int32),
      "ef": rng.uniform(10, 80, RESIDENT_VIDEOS).astype(np.float32),
    },
    mesh,
  )
  sampler = device_data.make_clip_sampler(
    mesh, clip_frames=data.clip_frames, period=data.period, pad=data.augment_pad
  )
  top = clips.max_clip_start(frames, data.clip_frames, data.period)
  while True:
    plan = {
      "index": rng.integers(0, RESIDENT_VIDEOS, batch_size, dtype=np.int32),
      "start": rng.integers(0, top + 1, batch_size, dtype=np.int32),
      "offset": rng.integers(0, 2 * data.augment_pad + 1, (batch_size, 2), dtype=np.int32),
    }
    yield sampler(videos, plan)


def _tfdata_batches(config, batch_size: int, mesh, stats: dict):
  """Batches of the tf.data path from the configured (by default synthetic) dataset, put on the
  devices as training does. Imports TensorFlow. Also times the pipeline alone into ``stats``."""
  from lvef_jax.data import pipeline, preparation

  builder = preparation.prepare(config.data)

  def host_batches():
    for epoch in range(1_000_000):  # passes over the split, as training makes
      yield from pipeline.train_batches(builder, config.data, batch_size=batch_size, seed=epoch)

  # The pipeline alone: clips/s it delivers to the host, warm (after its first batches).
  batches, count = host_batches(), 0
  for _ in range(3):
    next(batches)
  start = time.perf_counter()
  while time.perf_counter() - start < INPUT_SECONDS or count < 4:
    next(batches)
    count += 1
  stats["input_clips_per_s"] = round(count * batch_size / (time.perf_counter() - start), 3)
  for _, batch in sharding.device_prefetch(
    host_batches(), mesh, keys=("video", "ef"), size=config.data.prefetch
  ):
    yield batch


def benchmark(
  config,
  batch_size: int,
  num_steps: int,
  peak_tflops: float | None = None,
  data_mode: str = "device",
) -> dict:
  """Compiles and times ``num_steps`` train steps; returns the figures as a dict.

  ``data_mode``: ``device``, one random batch already on the devices, every step (the step
  alone); ``resident``, batches cut on the devices from a synthesised device-resident split
  (the sampler and the step); ``tfdata``, batches from the tf.data pipeline (end to end; the
  line then also has ``input_clips_per_s``, the pipeline alone).
  """
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh, "batch")
  data = config.data
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(graphdef, tx, mesh)
  rng, stats = np.random.default_rng(0), {}
  if data_mode == "device":
    batches = itertools.repeat(sharding.shard_batch(_random_batch(data, batch_size, rng), mesh))
  elif data_mode == "resident":
    batches = _resident_batches(data, batch_size, mesh, rng)
  elif data_mode == "tfdata":
    batches = _tfdata_batches(config, batch_size, mesh, stats)
  else:
    raise LvefError(f"--data={data_mode}: expected device, resident or tfdata")
  batch = next(batches)

  flops_per_clip = train_flops_per_clip(config, batch_size)
  start = time.perf_counter()
  state, out = train_step(state, batch)
  jax.block_until_ready(out)
  first = time.perf_counter() - start
  times, faults = [], hostmem.minor_page_faults()
  for _ in range(num_steps):
    start = time.perf_counter()
    state, out = train_step(state, next(batches))
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  if faults is not None:
    faults = round((hostmem.minor_page_faults() - faults) / num_steps)
  step = float(np.median(times))
  m = config.model
  achieved = flops_per_clip * batch_size / step / 1e12
  device = jax.devices()[0].device_kind
  peak = peak_tflops if peak_tflops else PEAK_TFLOPS.get(device, {}).get(m.dtype)
  return {
    "framework": f"jax-{jax.__version__}",
    "device": device,
    "devices": jax.device_count(),
    "variant": f"i3d_{m.variant}_conv2_{m.conv2}" if m.name == "i3d" else m.name,
    "model": {k: v for k, v in m.items() if k != "name"},
    "norm": m.norm,
    "dtype": m.dtype,
    "kernels": models.ops_for(config.compute.kernels).name,  # the ops the timed step ran
    "batch": batch_size,
    "shape": [data.clip_frames, data.image_size, data.image_size, 1],
    "first_step_s": round(first, 3),
    "step_s": round(step, 4),
    "clips_per_s": round(batch_size / step, 3),
    "gflop_per_clip": round(flops_per_clip / 1e9, 4),
    "tflops": round(achieved, 6),
    "peak_tflops": peak,
    "mfu": round(achieved / (peak * jax.device_count()), 6) if peak else None,
    "data": data_mode,
    "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    # Host page faults a timed step (the input pipeline's included with --data=tfdata), and the
    # malloc settings they depend on (lvef_jax/hostmem.py).
    "page_faults_per_step": faults,
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    **stats,
  }


PEER_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "torch_peer.py"


def torch_peer(config, batch_size: int, num_steps: int, params: int, compile_: bool) -> dict:
  """Times the PyTorch peer of an I3D config in a subprocess (its own threads and memory) and
  returns its JSON line; the peer refuses to run if its parameter count is not ``params``."""
  m, data = config.model, config.data
  if m.name != "i3d" or m.norm != "batch":
    raise LvefError(
      f"--peer=torch implements the I3D family with norm=batch, not {m.name}/{m.norm}"
    )
  if not PEER_SCRIPT.is_file():
    raise LvefError(f"--peer=torch needs {PEER_SCRIPT} (a source checkout of the repository)")
  command = [
    sys.executable,
    str(PEER_SCRIPT),
    "time",
    f"--variant={m.variant}",
    f"--conv2={m.conv2}",
    f"--head={m.head}",
    f"--batch={batch_size}",
    f"--steps={num_steps}",
    f"--shape={data.clip_frames},{data.image_size},{data.image_size},1",
    f"--device={'cuda' if jax.devices()[0].platform == 'gpu' else 'cpu'}",
    f"--expect_params={params}",
    *(["--amp"] if m.dtype == "bfloat16" else []),
    *(["--compile"] if compile_ else []),
  ]
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode != 0:
    raise LvefError(f"the PyTorch peer failed ({' '.join(command[1:])}):\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  cpu_backend.configure()  # before JAX starts its backends
  try:
    _main()
  except LvefError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _main():
  if TARGET.value:
    _main_target()
    return
  if MEMBERS.value != 1 or CHECK.value:
    raise LvefError("--members and --check go with --target (a compiled GPU program)")
  if SUITE.value:
    for record in suite(SUSTAINED.value):
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}))
    return
  config = CONFIG.value
  _compute_dtype(config, PRECISION.value)
  batch = BATCH.value or config.train.batch_size
  hint = hostmem.allocator_hint()
  if hint:
    print(f"note: {hint}", file=sys.stderr)
  ours = benchmark(config, batch, STEPS.value, PEAK.value, DATA.value)
  print(json.dumps(ours), flush=True)
  if PEER.value:
    peer = torch_peer(config, batch, STEPS.value, ours["params"], PEER_COMPILE.value)
    print(json.dumps(peer))
    ratio = ours["clips_per_s"] / peer["clips_per_s"]
    print(
      json.dumps(
        {"ratio": f"{ours['framework']} / {peer['framework']}", "clips_per_s": round(ratio, 3)}
      )
    )


def _main_target():
  """--target: the GPU program, compiled here (JAX's CPU platform only: no device is used)."""
  if PEER.value or DATA.value != "device":
    raise LvefError("--target compiles the step without running it: no --peer or --data")
  if MEMBERS.value > 1 and (CHECK.value or SUITE.value):
    raise LvefError("--members applies to one model's step, not to --check or --suite")
  jax.config.update("jax_platforms", "cpu")
  target, kernel_us = TARGET.value, KERNEL_US.value
  if CHECK.value:
    start = time.perf_counter()
    records, table = gpu_check(target, kernel_us)
    for record in records:
      print(json.dumps(record))
    print(table)
    print(
      f"{len(records)} train steps compiled for {target} in {time.perf_counter() - start:.0f} s"
    )
  elif SUITE.value:
    for record in gpu_suite(target, PRECISION.value, kernel_us):
      print(json.dumps(record), flush=True)
  else:
    config = CONFIG.value
    _compute_dtype(config, PRECISION.value)
    batch = BATCH.value or config.train.batch_size
    print(json.dumps(gpu_line(config, batch, target, kernel_us, MEMBERS.value)))


if __name__ == "__main__":
  app.run(main)
