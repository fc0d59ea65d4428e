"""Two processes on loopback (JAX's multi-controller runtime, gloo collectives between CPU
processes) train and evaluate to the same results as one process with the same global batch.

One device per process (two for the single process): on a 2-core machine every extra fake
device slows the processes, and Orbax's and JAX's barriers between them have deadlines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from lvef_jax import config_base
from tests.conftest import (
  PLAIN_OPS,
  ROOT,
  child_env,
  communicate_all,
  prepare_in_record_files,
  run_command,
)

# several launch.py processes: left out of `make test-fast`.
pytestmark = pytest.mark.slow

SHRINK = {
  # 100 videos in 2 record files a split: the train split's files then hold more than the 16
  # examples TFDS reads from a file at a time, which a process's slice of a split must survive.
  "data.synthetic_num_videos": 100,
  "data.synthetic_seed": 3,
  "data.synthetic_min_frames": 10,
  "data.synthetic_max_frames": 40,
  "data.clip_frames": 8,
  "data.period": 2,
  "data.image_size": 16,
  "data.augment_pad": 2,
  "data.shuffle_buffer": 64,
  "data.prefetch": 1,
  "train.batch_size": 8,
  "train.num_epochs": 2,
  "train.steps_per_epoch": 2,
  "train.log_every_steps": 1,
  "train.bn_recalibration_batches": 2,
  "eval.batch_size": 8,
}


def _command(workdir, cache, *extra):
  flags = [f"--config.{key}={value}" for key, value in SHRINK.items()]
  return [
    sys.executable,
    "launch.py",
    "--config=configs/i3d.py:variant=stem",
    f"--workdir={workdir}",
    f"--config.data.cache_dir={cache}",
    PLAIN_OPS,
    *flags,
    *extra,
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  cache = tmp_path / "cache"
  config = config_base.load_config("i3d", "variant=stem")
  for key, value in {**SHRINK, "data.cache_dir": str(cache)}.items():
    section, name = key.split(".")
    config[section][name] = value
  prepare_in_record_files(config.data, 2)
  single = run_command(_command(tmp_path / "one", cache), cwd=ROOT, env=child_env(2), timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  processes = [
    subprocess.Popen(
      _command(
        tmp_path / "two",
        cache,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      cwd=ROOT,
      env=child_env(1),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [out for out, _ in communicate_all(processes, timeout=600)]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  one = json.loads((tmp_path / "one" / "results.json").read_text())
  two = json.loads((tmp_path / "two" / "results.json").read_text())
  assert one["best_epoch"] == two["best_epoch"]
  assert sorted(one["splits"]) == ["test", "train", "val"]
  for split, scores in one["splits"].items():
    for key in ("rmse", "mae", "r2"):
      assert two["splits"][split][key] == pytest.approx(scores[key], abs=1e-4), (split, key)
    assert two["splits"][split]["n"] == scores["n"]
  assert "process 1 of 2, 1 local of 2 devices" in outputs[1]
  # Only process 0 printed the final table.
  assert sum("best epoch" in output for output in outputs) == 1
