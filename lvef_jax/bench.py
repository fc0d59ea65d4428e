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
  python -m lvef_jax.bench --model=r2plus1d_18 --precision=bf16   # EchoNet-Dynamic's, batch 20

``--data=device`` (the default) times the step on one random batch already on the devices;
``--data=resident`` feeds it batches cut on the devices from a synthesised device-resident
split (``data.device_resident`` in training); ``--data=tfdata`` feeds it from the tf.data
pipeline over the configured dataset (end to end; TensorFlow is imported only then) and also
reports ``input_clips_per_s``, what the pipeline alone delivers.

  python -m lvef_jax.bench --model=i3d_mini --batch=4 --members=1,2,4,8

times K runs trained in one program (``train.seeds=K``: the state as training builds it, on
the members mesh, each member its own random batch ``[K, B, ...]``; ``--data=device`` only),
for each K in the list, in this one process, their steps timed in turns (one of each a round,
so that other jobs on the machine slow all alike): ``clips_per_s`` counts every member's clips,
``clips_per_s_per_member`` one member's, and ``clips_per_s_vs_one`` (with a K of 1 in the list)
is the ratio to one member's clips/s. ``--config.compute.members=vmap|loop`` chooses how the
member axis is mapped (``auto``: the loop on the CPU, vmap elsewhere; docs/benchmarks.md).

``--model`` names a registry model (``MODELS`` below, or an experiment name) instead of a config
file; ``--config.KEY=VALUE`` overrides apply to it. Each line has the FLOPs per clip of the
whole step (XLA's cost analysis of the lowered step, with plain convolutions as on GPUs: the
model's FLOPs, also on the CPU, whose Winograd convolutions do fewer), the achieved TFLOP/s,
and the MFU where the device's peak is known (``PEAK_TFLOPS``, or ``--peak_tflops``).

  python -m lvef_jax.bench --model=i3d_mini --batch=4 --peer=torch [--peer_compile]

``--peer=torch`` then times ``benchmarks/torch_peer.py``, the same I3D model in PyTorch (the
optional ``peer`` extra), in the same call, and prints its line and the ratio of clips/s. The
peer refuses to run unless its parameter count equals ours. It implements the I3D family with
BatchNorm only: any other model is refused before anything is timed.

  python -m lvef_jax.bench --suite [--sustained_tflops=100]

prints, for every run of the benchmark (``lvef_jax/experiments.py``: the paper's 42 and the
``echonet/`` runs), the FLOPs of one train step per clip (XLA's cost analysis of the lowered
step at the run's clip shape and batch; nothing is compiled or run), and the arithmetic of the
whole sweep on EchoNet-Dynamic with its time at an assumed sustained rate.

  python -m lvef_jax.bench --target=h100 --model=i3d_mini --batch=4 --precision=bf16
  python -m lvef_jax.bench --target=h100 --check      # every family (make gpu-check)
  python -m lvef_jax.bench --target=h100 --suite      # the whole benchmark's bounds

compile the train step for a GPU on any machine (JAX's CUDA build, the ``gpu`` extra; no device
is used) and print what the compiled program does per step: its memory, FLOPs, bytes and
kernels, and lower bounds on its time (``lvef_jax.gpu_program``). ``--suite`` adds those bounds
up over the whole benchmark (train, prediction and BatchNorm-recalibration steps).
"""

from __future__ import annotations

import dataclasses
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
  # EchoNet-Dynamic's video ResNets (configs/r2plus1d.py: 32 frames every 2nd, batch 20).
  "r2plus1d_18": ("r2plus1d", "arch=r2plus1d_18"),
  "r3d_18": ("r2plus1d", "arch=r3d_18"),
  "mc3_18": ("r2plus1d", "arch=mc3_18"),
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
MEMBERS = flags.DEFINE_list(
  "members",
  ["1"],
  "This many runs in one train step (train.seeds=K: a leading member axis of the state and "
  "batch, mapped as compute.members says; steps.make_train_step). Timed here (--data=device; "
  "a list, 1,2,4,8, times each in this one process), or with --target (one count) compiled "
  "for a GPU.",
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

# EchoNet-Dynamic's splits (FileList.csv) and a typical video's frames (all-clips evaluation
# counts the clips of a video this long).
ECHONET_SPLITS = {"train": 7465, "val": 1288, "test": 1277}
ECHONET_FRAMES = 175


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


def final_clips_per_video(config) -> int:
  """Clips the final evaluation scores of a video of `ECHONET_FRAMES` frames: 1 for
  ``eval.clips=one``; for ``all``, every start ``eval.clip_stride`` apart."""
  if config.eval.clips != "all":
    return 1
  from lvef_jax.data import clips  # numpy only

  data = config.data
  stride = clips.clip_stride(config.eval.clip_stride, data.clip_frames, data.period)
  return len(clips.clip_starts(ECHONET_FRAMES, data.clip_frames, data.period, stride))


def run_work(config) -> dict:
  """What one benchmark run does on EchoNet-Dynamic at its ``train.num_epochs`` (the paper's
  50; early stopping can only shorten it): train steps (full batches of the train split),
  BatchNorm recalibration batches, and predicted clips and prediction calls (one clip of each
  val video after every epoch, then ``eval.splits`` with the best checkpoint, one clip or all
  clips of each video as ``eval.clips`` says, a video of `ECHONET_FRAMES` frames)."""
  batch, eval_batch = config.train.batch_size, config.eval.batch_size
  epochs, val = config.train.num_epochs, ECHONET_SPLITS["val"]
  per_video = final_clips_per_video(config)
  final = [ECHONET_SPLITS[split] * per_video for split in config.eval.splits]
  calls = epochs * math.ceil(val / eval_batch) + sum(math.ceil(n / eval_batch) for n in final)
  return {
    "train_steps": epochs * (ECHONET_SPLITS["train"] // batch),
    "recalibration_steps": epochs * max(config.train.bn_recalibration_batches, 0),
    "predicted_clips": epochs * val + sum(final),
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
    "variant": _variant(m),
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


def _variant(model_cfg) -> str:
  """The model's short description in a JSON line: the I3D variant and conv2, the video
  ResNet's arch, or the family."""
  if model_cfg.name == "i3d":
    return f"i3d_{model_cfg.variant}_conv2_{model_cfg.conv2}"
  if model_cfg.name == "r2plus1d":
    return model_cfg.arch
  return model_cfg.name


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


# make gpu-check: one train step of every model family at its paper batch size (R(2+1)D-18 at
# EchoNet-Dynamic's; experiment, precision), bf16 (the GPU's speed) and I3D-mini in fp32 too
# (the paper's).
CHECK_ROWS = (
  ("i3d_mini", "table1/mini", "bf16"),
  ("i3d_mini", "table1/mini", "fp32"),
  ("i3d_original", "table1/original", "bf16"),
  ("two_stream", "table5/B1", "bf16"),
  ("fusion_new_combination", "table6/NC-B1", "bf16"),
  ("cnn_rnn_inception_v3", "table8/CNN_RNN-1", "bf16"),
  ("cnn_rnn_lstm", "table9/LSTM-B1", "bf16"),
  ("r2plus1d_18", "echonet/r2plus1d_32_2", "bf16"),
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
RESIDENT_VIDEOS, RESIDENT_FRAMES = 64, ECHONET_FRAMES
# --data=tfdata times the pipeline alone for at least this long.
INPUT_SECONDS = 5.0


def _random_batch(data, batch_size: int, rng: np.random.Generator, members: int = 1) -> dict:
  """Random clips and EFs: ``[B, ...]``, or ``[members, B, ...]`` (each member its own)."""
  lead = (members,) if members > 1 else ()
  shape = (*lead, batch_size, data.clip_frames, data.image_size, data.image_size, 1)
  return {
    "video": rng.integers(0, 256, shape, dtype=np.uint8),
    "ef": rng.uniform(10, 80, (*lead, batch_size)).astype(np.float32),
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


@dataclasses.dataclass
class _Timed:
  """A train step being timed: what it was built from, its state and batches, and its times."""

  config: object  # the run's config (``train.seeds`` = members)
  flops_per_clip: float  # one run's
  mesh: object
  members: int
  batch_size: int
  data_mode: str
  train_step: object
  state: object
  batches: object
  stats: dict
  first: float = 0.0  # the compiling step
  times: list = dataclasses.field(default_factory=list)
  faults: list = dataclasses.field(default_factory=list)


def _prepare(config, batch_size: int, data_mode: str, members: int) -> _Timed:
  """Builds the train step as training does and runs its first, compiling, step."""
  if members < 1:
    raise LvefError(f"--members must be at least 1, got {members}")
  if members > 1 and data_mode != "device":
    raise LvefError(
      f"--members={members} times the step on random batches on the devices: --data=device, "
      f"not {data_mode}"
    )
  solo = config.copy_and_resolve_references()
  solo.train.update(seeds=1, grid="")
  config = solo.copy_and_resolve_references()
  config.train.seeds = members  # the members are seeds: runs of one model
  mesh = sharding.make_mesh(members=members)
  sharding.check_batch_size(batch_size, mesh, "batch")
  data = config.data
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  state = jax.device_put(state, sharding.state_sharding(mesh, members))
  train_step = steps.make_train_step(graphdef, tx, mesh, members, config.compute.members)
  rng, stats = np.random.default_rng(0), {}
  if data_mode == "device":
    batch = _random_batch(data, batch_size, rng, members)
    batches = itertools.repeat(sharding.shard_batch(batch, mesh, members))
  elif data_mode == "resident":
    batches = _resident_batches(data, batch_size, mesh, rng)
  elif data_mode == "tfdata":
    batches = _tfdata_batches(config, batch_size, mesh, stats)
  else:
    raise LvefError(f"--data={data_mode}: expected device, resident or tfdata")
  run = _Timed(
    config=config,
    flops_per_clip=train_flops_per_clip(solo, batch_size),
    mesh=mesh,
    members=members,
    batch_size=batch_size,
    data_mode=data_mode,
    train_step=train_step,
    state=state,
    batches=batches,
    stats=stats,
  )
  batch = next(batches)
  start = time.perf_counter()
  run.state, out = train_step(run.state, batch)
  jax.block_until_ready(out)
  run.first = time.perf_counter() - start
  return run


def _time_step(run: _Timed) -> None:
  """Runs and times one more step of ``run``, and counts its host page faults."""
  batch, faults = next(run.batches), hostmem.minor_page_faults()
  start = time.perf_counter()
  run.state, out = run.train_step(run.state, batch)
  jax.block_until_ready(out)
  run.times.append(time.perf_counter() - start)
  if faults is not None:
    run.faults.append(hostmem.minor_page_faults() - faults)


def _record(run: _Timed, peak_tflops: float | None) -> dict:
  """The JSON line of a timed step: the median of its timed steps."""
  step = float(np.median(run.times))
  config, batch_size, members = run.config, run.batch_size, run.members
  m, data = config.model, config.data
  clips = batch_size * members  # every member's clips of one step
  achieved = run.flops_per_clip * clips / step / 1e12
  device = jax.devices()[0].device_kind
  peak = peak_tflops if peak_tflops else PEAK_TFLOPS.get(device, {}).get(m.dtype)
  platform = run.mesh.devices.flat[0].platform
  return {
    "framework": f"jax-{jax.__version__}",
    "device": device,
    "devices": jax.device_count(),
    "variant": _variant(m),
    "model": {k: v for k, v in m.items() if k != "name"},
    "norm": m.get("norm", "batch"),  # the video ResNets have BatchNorm and no such key
    "dtype": m.dtype,
    "kernels": models.ops_for(config.compute.kernels).name,  # the ops the timed step ran
    "batch": batch_size,
    "members": members,
    # How the step mapped its member axis (compute.members on this platform; "none": one run).
    "member_map": (
      steps.member_map_for(config.compute.members, platform) if members > 1 else "none"
    ),
    "shape": [data.clip_frames, data.image_size, data.image_size, 1],
    "first_step_s": round(run.first, 3),
    "step_s": round(step, 4),
    "clips_per_s": round(clips / step, 3),
    "clips_per_s_per_member": round(batch_size / step, 3),
    "gflop_per_clip": round(run.flops_per_clip / 1e9, 4),
    "tflops": round(achieved, 6),
    "peak_tflops": peak,
    "mfu": round(achieved / (peak * jax.device_count()), 6) if peak else None,
    "data": run.data_mode,
    "params": int(sum(x.size for x in jax.tree.leaves(run.state.params))) // members,  # a run's
    # Host page faults a timed step (the input pipeline's included with --data=tfdata), and the
    # malloc settings they depend on (lvef_jax/hostmem.py).
    "page_faults_per_step": round(float(np.mean(run.faults))) if run.faults else None,
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    **run.stats,
  }


def benchmark(
  config,
  batch_size: int,
  num_steps: int,
  peak_tflops: float | None = None,
  data_mode: str = "device",
  members: int = 1,
) -> dict:
  """Compiles and times ``num_steps`` train steps; returns the figures as a dict.

  ``data_mode``: ``device``, one random batch already on the devices, every step (the step
  alone); ``resident``, batches cut on the devices from a synthesised device-resident split
  (the sampler and the step); ``tfdata``, batches from the tf.data pipeline (end to end; the
  line then also has ``input_clips_per_s``, the pipeline alone).

  ``members > 1`` times that many runs in one train step, built as training builds them
  (``train.seeds=members``: `state_lib.create`'s stacked state on the members mesh, the
  member axis mapped as ``compute.members`` says), each member its own random batch
  (``[members, B, ...]``; ``data_mode`` ``device`` only). ``clips_per_s`` then counts every
  member's clips, ``clips_per_s_per_member`` one member's.
  """
  run = _prepare(config, batch_size, data_mode, members)
  for _ in range(num_steps):
    _time_step(run)
  return _record(run, peak_tflops)


def benchmark_members(
  config, batch_size: int, num_steps: int, counts, peak_tflops: float | None = None
) -> list[dict]:
  """:func:`benchmark` of the step of each member count in ``counts`` (``--data=device``),
  compiled one after another, then timed in turns, one step of each in each of ``num_steps``
  rounds: whatever else the machine runs meanwhile slows them alike, so their ratios hold.
  Where ``counts`` has 1, each line's ``clips_per_s_vs_one`` is its clips/s over one
  member's (at least 1: no slower a clip)."""
  runs = [_prepare(config, batch_size, "device", count) for count in dict.fromkeys(counts)]
  for _ in range(num_steps):
    for run in runs:
      _time_step(run)
  records = [_record(run, peak_tflops) for run in runs]
  one = next((r["clips_per_s"] for r in records if r["members"] == 1), None)
  for record in records:
    record["timed"] = "in turns"
    if one:
      record["clips_per_s_vs_one"] = round(record["clips_per_s"] / one, 3)
  return records


PEER_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "torch_peer.py"


def check_peer(config) -> None:
  """Raises LvefError unless the PyTorch peer implements ``config``'s model (I3D, BatchNorm)."""
  m = config.model
  if m.name != "i3d" or m.get("norm") != "batch":
    described = m.name if m.name != "i3d" else f"{m.name}/{m.norm}"
    raise LvefError(f"--peer=torch implements the I3D family with norm=batch, not {described}")


def torch_peer(config, batch_size: int, num_steps: int, params: int, compile_: bool) -> dict:
  """Times the PyTorch peer of an I3D config in a subprocess (its own threads and memory) and
  returns its JSON line; the peer refuses to run if its parameter count is not ``params``."""
  m, data = config.model, config.data
  check_peer(config)
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


def _member_counts() -> list[int]:
  try:
    counts = [int(count) for count in MEMBERS.value]
  except ValueError:
    raise LvefError(f"--members={','.join(MEMBERS.value)}: expected counts, 1,2,4,8") from None
  if not counts or min(counts) < 1:
    raise LvefError(f"--members={','.join(MEMBERS.value)}: every count must be at least 1")
  return counts


def _main():
  if TARGET.value:
    _main_target()
    return
  if CHECK.value:
    raise LvefError("--check goes with --target (a compiled GPU program)")
  counts = _member_counts()
  if counts != [1] and (SUITE.value or PEER.value):
    raise LvefError("--members times one model's step: not with --suite or --peer")
  if len(counts) > 1 and DATA.value != "device":
    raise LvefError(f"--members={MEMBERS.value[0]},...: --data=device, not {DATA.value}")
  if SUITE.value:
    for record in suite(SUSTAINED.value):
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}))
    return
  config = CONFIG.value
  if PEER.value:
    check_peer(config)  # before our step is compiled and timed
  _compute_dtype(config, PRECISION.value)
  batch = BATCH.value or config.train.batch_size
  hint = hostmem.allocator_hint()
  if hint:
    print(f"note: {hint}", file=sys.stderr)
  if len(counts) > 1:
    for record in benchmark_members(config, batch, STEPS.value, counts, PEAK.value):
      print(json.dumps(record), flush=True)
    return
  ours = benchmark(config, batch, STEPS.value, PEAK.value, DATA.value, counts[0])
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
  counts = _member_counts()
  if len(counts) > 1:
    raise LvefError("--target compiles one step: give one --members count")
  if counts[0] > 1 and (CHECK.value or SUITE.value):
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
    print(json.dumps(gpu_line(config, batch, target, kernel_us, counts[0])))


if __name__ == "__main__":
  app.run(main)
