r"""Train-step throughput of a model config, JAX only (no TensorFlow, no data on disk).

  python -m lvef_jax.bench --config=configs/i3d.py:variant=mini --batch=4 --steps=5
  python -m lvef_jax.bench --config=configs/quickstart.py --batch=16

Prints one JSON line per run, in the same shape as the PyTorch implementation of the I3D
layers that ``docs/benchmarks.md`` compares with, so the two can be compared on the same
machine. Random uint8 clips are placed on the devices once; what is timed is the jitted,
sharded train step (forward, backward, Adam), the part ``launch.py`` repeats. Record results
in ``docs/benchmarks.md`` with the machine. Every model family works (``--config`` any
``configs/<family>.py``).

  python -m lvef_jax.bench --suite [--sustained_tflops=100]

prints, for every run of the paper's benchmark (``lvef_jax/experiments.py``), the FLOPs of one
train step per clip (XLA's cost analysis of the lowered step at the paper's clip shape and
batch; nothing is compiled or run), and the arithmetic of the whole sweep on EchoNet-Dynamic
with its time at an assumed sustained rate: an estimate until a sweep is timed on a GPU.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lvef_jax import sharding
from lvef_jax.training import state as state_lib, steps

CONFIG = config_flags.DEFINE_config_file("config", "configs/i3d.py", "Model config.")
BATCH = flags.DEFINE_integer(
  "batch", None, "Global batch (default: the config's train.batch_size)."
)
STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the compiling one.")
SUITE = flags.DEFINE_bool("suite", False, "FLOPs of every benchmark run, and the sweep total.")
SUSTAINED = flags.DEFINE_float(
  "sustained_tflops", 100.0, "--suite: assumed sustained TFLOP/s of the accelerator."
)

# EchoNet-Dynamic's splits (FileList.csv), the paper's epoch limit.
ECHONET_SPLITS = {"train": 7465, "val": 1288, "test": 1277}
MAX_EPOCHS = 50


def train_flops_per_clip(config) -> float:
  """FLOPs of one train step per clip, from XLA's cost analysis of the lowered (not compiled)
  step at the config's batch and clip shape."""
  mesh = sharding.make_mesh()
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  step = steps.make_train_step(graphdef, tx, mesh)
  data, batch_size = config.data, config.train.batch_size
  shapes = {
    "video": jax.ShapeDtypeStruct(
      (batch_size, data.clip_frames, data.image_size, data.image_size, 1), np.uint8
    ),
    "ef": jax.ShapeDtypeStruct((batch_size,), np.float32),
  }
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return float(step.lower(state, shapes).cost_analysis()["flops"]) / batch_size


def suite(sustained_tflops: float) -> list[dict]:
  """One record per benchmark run and a final total: FLOPs of a full sweep on EchoNet-Dynamic.

  A run is counted at the paper's 50 epochs (early stopping can only shorten it): every epoch
  trains on the train split and predicts the val split, then the best checkpoint predicts all
  three splits. A prediction costs a third of a train step (forward only, of forward+backward).
  """
  from lvef_jax import experiments  # plain data

  records, total = [], 0.0
  for name in experiments.names(include_aliases=False):
    train = train_flops_per_clip(experiments.get_config(name))
    clips_predicted = MAX_EPOCHS * ECHONET_SPLITS["val"] + sum(ECHONET_SPLITS.values())
    flops = MAX_EPOCHS * ECHONET_SPLITS["train"] * train + clips_predicted * train / 3
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


def benchmark(config, batch_size: int, num_steps: int) -> dict:
  """Compiles and times ``num_steps`` train steps; returns the figures as a dict."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh, "batch")
  data = config.data
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=1000)
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(graphdef, tx, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(
    {
      "video": rng.integers(
        0, 256, (batch_size, data.clip_frames, data.image_size, data.image_size, 1), dtype=np.uint8
      ),
      "ef": rng.uniform(10, 80, batch_size).astype(np.float32),
    },
    mesh,
  )

  start = time.perf_counter()
  state, out = train_step(state, batch)
  jax.block_until_ready(out)
  first = time.perf_counter() - start
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, out = train_step(state, batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  step = float(np.median(times))
  m = config.model
  return {
    "framework": f"jax-{jax.__version__}",
    "device": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "variant": f"i3d_{m.variant}_conv2_{m.conv2}" if m.name == "i3d" else m.name,
    "model": {k: v for k, v in m.items() if k != "name"},
    "norm": m.norm,
    "dtype": m.dtype,
    "batch": batch_size,
    "shape": [data.clip_frames, data.image_size, data.image_size, 1],
    "first_step_s": round(first, 3),
    "step_s": round(step, 4),
    "clips_per_s": round(batch_size / step, 3),
  }


def main(argv):
  del argv
  if SUITE.value:
    for record in suite(SUSTAINED.value):
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}))
    return
  config = CONFIG.value
  print(json.dumps(benchmark(config, BATCH.value or config.train.batch_size, STEPS.value)))


if __name__ == "__main__":
  app.run(main)
