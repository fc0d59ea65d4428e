"""Shared fixtures: eight fake CPU devices and a small real (synthetic) dataset."""

import os

# Must happen before JAX initialises its backends: every test sees 8 CPU devices, so the
# sharded code runs as on a multi-GPU machine. `make test` sets the same flags.
# Eight fake devices share two cores here, so a device can reach a collective (the gradient
# all-reduce) long after the others; XLA's default waiting limit then aborts the process
# (it happened once in CI). Let them wait up to 10 minutes instead.
_FLAGS = (
  "--xla_force_host_platform_device_count=8",
  "--xla_cpu_collective_call_terminate_timeout_seconds=600",
)
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent compilation cache for the whole session, shared with every process it starts
# (launch.py runs, pytest-xdist's workers): many tests start launch.py several times on the
# same shrunk config (resume, evaluate, predict), and each start compiled the same train step
# again. It made two of the resume tests 40 % faster (docs/benchmarks.md, "The test suite").
# Entries are keyed by the program, its devices, the XLA flags and the versions, so a hit is
# the same executable. The session that made the folder removes it.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import atexit
  import shutil
  import tempfile

  _CACHE_DIR = tempfile.mkdtemp(prefix="lvef_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

# And the flag the entry points set (lvef_jax/cpu_backend.py), so that tests run what users run.
from lvef_jax import cpu_backend  # noqa: E402

cpu_backend.configure()

import pathlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from lvef_jax import config_base  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment for a child process that sees ``devices`` fake CPU devices
  (with the same collective waiting limit), plus ``extra`` variables. An entry point started
  in it (launch.py) adds the flag of lvef_jax/cpu_backend.py itself."""
  count = "--xla_force_host_platform_device_count"
  flags = [f"{count}={devices}", *(f for f in _FLAGS if not f.startswith(f"{count}="))]
  return dict(os.environ, XLA_FLAGS=" ".join(flags), **extra)


# Every process a test starts inherits this: a child that hangs can then be made to print
# every thread's stack (faulthandler, on SIGABRT) before the test fails (see `run_command`).
os.environ["PYTHONFAULTHANDLER"] = "1"


def communicate_all(processes, *, timeout: float) -> list[tuple]:
  """``communicate()`` with each of ``processes`` (started with pipes), all within ``timeout``
  seconds. If some are still running then, they are sent SIGABRT, so they print every thread's
  stack, and the test fails showing each one's last output."""
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    shown = []
    for index, process in enumerate(processes[len(outputs) :], start=len(outputs)):
      if process.poll() is None:
        process.send_signal(signal.SIGABRT)
      try:
        stdout, stderr = process.communicate(timeout=60)
      except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
      tail = ((stdout or "") + (stderr or ""))[-12000:]
      shown.append(f"--- process {index}: {' '.join(map(str, process.args))}\n{tail}")
    pytest.fail(f"still running after {timeout} s; where their threads were:\n" + "\n".join(shown))
  return outputs


def run_command(command, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
  """``subprocess.run(command, capture_output=True, text=True)``, but a command still running
  after ``timeout`` seconds is not just killed: it prints every thread's stack and the test
  fails showing where it hung (`communicate_all`)."""
  process = subprocess.Popen(
    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
  )
  ((stdout, stderr),) = communicate_all([process], timeout=timeout)
  return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# Tests run XLA's plain convolutions and pooling, the path GPUs run; the CPU's forms of the same
# ops (lvef_jax/kernels) have their own equivalence tests (tests/test_kernels.py). Test commands
# that start launch.py themselves pass this override.
KERNELS = "xla"
PLAIN_OPS = f"--config.compute.kernels={KERNELS}"


def load_config(name: str, arg: str | None = None):
  """Loads ``configs/<name>.py`` the way ``launch.py --config=configs/<name>.py:<arg>`` does,
  on XLA's plain ops (``compute.kernels=xla``)."""
  config = config_base.load_config(name, arg)
  config.compute.kernels = KERNELS
  return config


def launch_command(workdir, config, *extra, config_arg: str = "") -> list[str]:
  """The launch.py command line that runs ``config``, loaded from
  ``configs/quickstart.py[:config_arg]``: that file plus a flag for every key that differs."""
  defaults = config_base.load_config("quickstart", config_arg or None)
  flags = [
    f"--config.{section}.{key}={value}"
    for section in ("model", "data", "train", "eval", "compute")
    for key, value in config[section].items()
    if value != defaults[section][key]
  ]
  spec = "configs/quickstart.py" + (f":{config_arg}" if config_arg else "")
  return [
    sys.executable,
    str(ROOT / "launch.py"),
    f"--config={spec}",
    f"--workdir={workdir}",
    *flags,
    *extra,
  ]


def shrink(config, cache_dir: pathlib.Path):
  """The same config on a 24-video synthetic dataset, 8-frame 16x16 clips, 2 short epochs, on
  XLA's plain ops."""
  config.compute.kernels = KERNELS
  config.data.update(
    cache_dir=str(cache_dir),
    synthetic_num_videos=24,
    synthetic_seed=3,
    synthetic_min_frames=10,
    synthetic_max_frames=40,
    clip_frames=8,
    period=2,
    image_size=16,
    augment_pad=2,
    shuffle_buffer=64,
    prefetch=1,
  )
  config.train.update(
    batch_size=8, num_epochs=2, steps_per_epoch=2, log_every_steps=1, bn_recalibration_batches=2
  )
  config.eval.update(batch_size=8)
  return config


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
  """Each test process (pytest-xdist's workers) runs dozens of test files; JAX keeps every
  compiled program, and glibc keeps freed memory, so a worker grew to 12 GB, beside another
  worker and the runs they start, and the kernel killed it (24 GiB machine). After each file
  the worker drops JAX's compiled programs and hands freed memory back."""
  yield
  import ctypes
  import gc

  import jax

  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> pathlib.Path:
  """One cache folder for the session: the tiny synthetic dataset is generated once."""
  return tmp_path_factory.mktemp("data_cache")


def prepare_in_record_files(data_cfg, files: int):
  """Prepares ``data_cfg``'s copy with every split written to ``files`` record files (TFDS
  picks one file for the tests' small splits; EchoNet-Dynamic's train split takes dozens), so
  that reading a slice of a split meets the files' boundaries (TFDS reads 16 examples of a
  file at a time: a file needs more). Returns the builder; a launch.py run on the same data
  config then uses this copy."""
  import functools

  import tensorflow_datasets as tfds

  from lvef_jax.data import preparation

  config_class = tfds.download.DownloadConfig
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
      tfds.download, "DownloadConfig", functools.partial(config_class, num_shards=files)
    )
    builder = preparation.prepare(data_cfg)
  for split in ("train", "val", "test"):
    assert len(builder.info.splits[split].shard_lengths) == files
  return builder
