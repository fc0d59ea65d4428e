"""Several processes (GPUs on several machines, or CPU processes) as one JAX program.

JAX's own multi-controller runtime: every process runs the same ``launch.py`` command, one
global mesh spans every process's devices, each process feeds its rows of every global batch,
and only process 0 writes logs, plots and results (Orbax checkpoints are written by all).
"""

from __future__ import annotations

import os

from absl import logging


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None):
  """Joins the processes, from the flags or from SLURM's environment; one process: nothing.

  Must run before JAX touches a device.
  """
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if coordinator is None and not slurm:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError("--num_processes and --process_id need --coordinator_address")
    return
  import jax

  # Collectives between CPU processes (the tests, CPU clusters) go through gloo; GPUs use NCCL.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator is None:
    jax.distributed.initialize()  # SLURM: address, count and index from the environment
  else:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  logging.info(
    "process %d of %d, %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
