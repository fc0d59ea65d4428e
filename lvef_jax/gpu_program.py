"""The train step compiled for a GPU this machine need not have, and what its program does.

XLA compiles for a GPU from a description of it ("deviceless" ahead-of-time compilation): with
the CUDA build of jaxlib installed (the ``gpu`` extra), :func:`compile_step` builds a one-GPU
mesh from a target description, traces the same jitted, sharded train step ``launch.py``
runs, and compiles it for that GPU on any machine. :func:`program_figures` reads the compiled
program:
its memory (``memory_analysis()``), and from its optimized HLO (``lvef_jax.hlo_cost``) the
FLOPs, bytes and kernels of one step, and three lower bounds on the step time:

- compute: FLOPs / the GPU's dense tensor-core peak in the step's compute dtype;
- memory: bytes / the GPU's memory bandwidth;
- launches: kernels × an assumed cost per kernel (``KERNEL_US``, a stated assumption until a
  GPU measures it).

The step cannot run faster than the largest of the three; the MFU bound is the model's FLOPs
over the peak at that time. These are bounds from the compiled program, not measurements.

The target descriptions are XLA's own GPU specs (``lvef_jax/gpu_targets/*.txtpb``, each naming
its source). Two settings make the compile work without a device: fields this jaxlib cannot
parse are dropped from the spec (``UNPARSED_FIELDS``), and Triton's GEMM emitter is off
(``COMPILER_OPTIONS``): without a device XLA cannot autotune its tiles, and the untuned
default fails on the pointwise convolutions' matmuls, which then go to cuBLAS.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
import re
import time

import jax
import numpy as np
from jax.sharding import Mesh

from lvef_jax import hlo_cost, sharding
from lvef_jax.errors import LvefError
from lvef_jax.training import state as state_lib, steps

SPEC_DIR = pathlib.Path(__file__).resolve().parent / "gpu_targets"
# --target name: (spec file, dense tensor-core peak FLOP/s by compute dtype where the spec does
# not describe its matrix units; vendor figures without sparsity, float32 matmuls as TF32).
TARGETS = {
  "h100": ("h100_sxm.txtpb", None),
  "h200": ("h200.txtpb", None),
  "a100": ("a100_sxm_80.txtpb", {"bfloat16": 312e12, "float32": 156e12}),
}
# Fields of the specs that jaxlib 0.10.2's GpuTargetConfig parser does not know.
UNPARSED_FIELDS = ("collective_memory_granularity",)
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
# Assumed cost of one kernel launch on the GPU, in microseconds (a kernel's launch and its
# minimum run time back to back; CUDA graphs lower it). Replace with a measured figure.
KERNEL_US = 3.0
# XLA's element type of a compute dtype, as the specs key their matrix units (PrimitiveType).
_PRIMITIVE_TYPE = {"float32": 11, "bfloat16": 16, "float16": 10}


@dataclasses.dataclass(frozen=True)
class Target:
  """A GPU to compile for: XLA's description of it and the figures the bounds use."""

  name: str
  device: str  # the device kind XLA reports, e.g. "NVIDIA H100 80GB HBM3"
  spec: str  # the GpuTargetConfig text jaxlib parses
  source: pathlib.Path
  memory_bytes: int
  bandwidth: float  # bytes/s
  peak_flops: dict  # compute dtype -> dense tensor-core FLOP/s


def load_target(name: str) -> Target:
  """The target ``name`` (a key of :data:`TARGETS`), read from its spec file."""
  if name not in TARGETS:
    raise LvefError(f"--target={name}: expected one of {', '.join(TARGETS)}")
  file, fallback = TARGETS[name]
  path = SPEC_DIR / file
  text = path.read_text()
  for field in UNPARSED_FIELDS:
    text = re.sub(rf"^\s*{field}:.*$\n?", "", text, flags=re.M)

  def number(field):
    match = re.search(rf"^\s*{field}:\s*([\d.e+]+)\s*$", text, flags=re.M)
    if not match:
      raise LvefError(f"{path}: no {field}")
    return float(match.group(1))

  cores = number("core_count")
  peaks = dict(fallback or {})
  matrix = re.search(r"matrix_unit_description\s*\{(.*?)\n  \}", text, flags=re.S)
  if matrix:
    for key, clock, units, ops in re.findall(
      r"key:\s*(\d+)\s*value\s*\{\s*clock_rate_ghz:\s*([\d.]+)\s*units_per_core:\s*(\d+)\s*"
      r"ops_per_clock:\s*(\d+)",
      matrix.group(1),
    ):
      for dtype, primitive in _PRIMITIVE_TYPE.items():
        if int(key) == primitive:  # a multiply-add per op: 2 FLOPs
          peaks[dtype] = 2 * cores * int(units) * int(ops) * float(clock) * 1e9
  device = re.search(r'device_description_str:\s*"([^"]+)"', text)
  return Target(
    name=name,
    device=device.group(1) if device else name,
    spec=text,
    source=path,
    memory_bytes=int(number("device_memory_size")),
    bandwidth=number("memory_bandwidth"),
    peak_flops=peaks,
  )


def cuda_build_installed() -> bool:
  """Whether the CUDA build of jaxlib (its PJRT plugin) is importable here."""
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # no jax_plugins package at all
    return False


@functools.cache
def target_mesh(name: str) -> Mesh:
  """A one-GPU mesh of the target's topology (no device needed), axis ``data``."""
  if not cuda_build_installed():
    raise LvefError(
      "compiling for a GPU needs the CUDA build of jaxlib: `make gpu-check` makes .venv-gpu "
      "with it, or pip install -e '.[gpu]' in an environment of its own"
    )
  from jax.experimental import topologies

  topology = topologies.get_topology_desc(
    platform="cuda", target_config=load_target(name).spec, topology="1x1x1"
  )
  return Mesh(np.asarray(topology.devices).reshape(-1), (sharding.DATA_AXIS,))


def _shapes(tree, mesh_sharding, members: int = 1):
  lead = (members,) if members > 1 else ()
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype, sharding=mesh_sharding), tree
  )


def clip_batch_shapes(config, batch_size: int, mesh: Mesh, members: int = 1) -> dict:
  """The shapes of a train batch on ``mesh`` (``[members, B, ...]`` for several members)."""
  data = config.data
  lead = (members,) if members > 1 else ()
  batch = sharding.batch_sharding(mesh, members)
  video = (*lead, batch_size, data.clip_frames, data.image_size, data.image_size, 1)
  return {
    "video": jax.ShapeDtypeStruct(video, np.uint8, sharding=batch),
    "ef": jax.ShapeDtypeStruct((*lead, batch_size), np.float32, sharding=batch),
  }


STEPS = ("train", "predict", "batch_stats")


def compile_step(config, batch_size: int, target: str, step: str = "train", members: int = 1):
  """Compiles one of the trainer's steps (``train``, ``predict`` or ``batch_stats``) of
  ``config`` at ``batch_size`` for ``target``; ``members`` runs in one train step
  (``steps.make_train_step``). Returns ``(compiled, seconds)``."""
  config = config.copy_and_resolve_references()
  config.compute.kernels = "xla"  # the GPU's ops, whatever this machine would choose
  mesh = target_mesh(target)
  sharding.check_batch_size(batch_size, mesh, "batch")
  if members < 1 or (members > 1 and step != "train"):
    raise LvefError(f"members={members}: the train step takes 1 or more, the others 1")
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  state = _shapes(state, sharding.replicated(mesh), members)
  if step == "train":
    fn = steps.make_train_step(graphdef, tx, mesh, members=members)
  elif step == "predict":
    fn = steps.make_predict_step(graphdef, mesh)
  elif step == "batch_stats":
    fn = steps.make_batch_stats_step(graphdef, mesh)
  else:
    raise LvefError(f"step {step!r}: expected one of {', '.join(STEPS)}")
  start = time.perf_counter()
  compiled = (
    fn.trace(state, clip_batch_shapes(config, batch_size, mesh, members))
    .lower()
    .compile(compiler_options=COMPILER_OPTIONS)
  )
  return compiled, time.perf_counter() - start


def program_figures(
  compiled,
  target: Target,
  dtype: str,
  kernel_us: float = KERNEL_US,
  model_flops: float | None = None,
) -> dict:
  """Memory, work, kernels and step-time bounds of a compiled GPU program (one execution).

  The MFU bound is ``model_flops`` (the model's own arithmetic; default: the program's) over
  the peak at the step-time bound."""
  memory = compiled.memory_analysis()
  cost = hlo_cost.Program(compiled.as_text()).cost()
  peak = target.peak_flops.get(dtype)
  if peak is None:
    raise LvefError(f"no peak FLOP/s of {target.device} for {dtype} ({target.source})")
  needed = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  bounds = {
    "compute": cost.flops / peak,
    "memory": cost.bytes / target.bandwidth,
    "launches": cost.total_kernels * kernel_us * 1e-6,
  }
  limit = max(bounds, key=bounds.get)
  return {
    "memory_gb": {
      "arguments": memory.argument_size_in_bytes / 1e9,
      "outputs": memory.output_size_in_bytes / 1e9,
      "aliased": memory.alias_size_in_bytes / 1e9,
      "temporaries": memory.temp_size_in_bytes / 1e9,
      "needed": needed / 1e9,
      "device": target.memory_bytes / 1e9,
    },
    "fits": needed <= target.memory_bytes,
    "gflop": cost.flops / 1e9,
    "matmul_gflop": cost.matmul_flops / 1e9,
    "gb_moved": cost.bytes / 1e9,
    "flop_per_byte": cost.flops / cost.bytes if cost.bytes else None,
    "kernels": {k: int(v) for k, v in sorted(cost.kernels.items())},
    "kernels_total": int(cost.total_kernels),
    "unknown_trip_counts": cost.unknown_trip_counts,
    "kernel_us": kernel_us,
    "bound_ms": {k: v * 1e3 for k, v in bounds.items()},
    "limited_by": limit,
    "step_bound_ms": bounds[limit] * 1e3,
    "mfu_bound": (model_flops or cost.flops) / peak / bounds[limit] if bounds[limit] else None,
    "peak_tflops": peak / 1e12,
    "bandwidth_tb_s": target.bandwidth / 1e12,
  }
