"""The real quickstart config, shrunk to a few steps: every file of the run directory, resume."""

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lvef_jax.data import echonet, preparation
from lvef_jax.errors import LvefError
from lvef_jax.training import trainer
from tests.conftest import (
  PLAIN_OPS,
  ROOT,
  child_env,
  launch_command,
  load_config,
  run_command,
  shrink,
)

# launch.py runs, killed and resumed: left out of `make test-fast`.
pytestmark = pytest.mark.slow

REQUIRED_METRICS = {
  "epoch",
  "step",
  "train_loss",
  "val_loss",
  "val_rmse",
  "val_mae",
  "val_r2",
  "lr",
  "clips_per_s",
  "seconds",
}


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_cache):
  config = shrink(load_config("quickstart"), data_cache)
  workdir = tmp_path_factory.mktemp("run")
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results


def test_run_directory_has_every_file(finished_run):
  config, workdir, results = finished_run
  assert json.loads((workdir / "config.json").read_text())["model"]["variant"] == "mini"

  records = _records(workdir)
  assert [r["epoch"] for r in records] == [1, 2]
  assert [r["step"] for r in records] == [2, 4]
  for record in records:
    assert REQUIRED_METRICS <= set(record)
    assert all(np.isfinite(record[k]) for k in REQUIRED_METRICS)
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
  assert (workdir / "checkpoints" / "latest" / "2").is_dir()
  best = json.loads((workdir / "results.json").read_text())
  assert best == json.loads(json.dumps(results))
  assert best["best_epoch"] in (1, 2)
  assert (workdir / "checkpoints" / "best" / str(best["best_epoch"])).is_dir()

  # Every video of every split scored exactly once, at the best checkpoint.
  root = preparation.resolve_root(config.data)
  index = echonet.load_dataset_index(root, check_videos=False)
  for split in ("train", "val", "test"):
    expected = {r.file_name: r.ef for r in index if r.split == split}
    with open(workdir / f"predictions_{split}.csv", newline="") as f:
      rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["FileName", "EF", "EF_pred"]
    assert sorted(r["FileName"] for r in rows) == sorted(expected)
    ef = np.array([float(r["EF"]) for r in rows])
    pred = np.array([float(r["EF_pred"]) for r in rows])
    np.testing.assert_allclose(ef, [expected[r["FileName"]] for r in rows], atol=1e-3)
    scores = best["splits"][split]
    assert set(scores) == {"rmse", "mae", "r2", "n"} and scores["n"] == len(expected)
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((pred - ef) ** 2)), abs=1e-3)
    assert scores["r2"] == pytest.approx(
      1 - np.sum((pred - ef) ** 2) / np.sum((ef - ef.mean()) ** 2), abs=1e-3
    )
    for plot in (f"scatter_{split}.png", f"bland_altman_{split}.png"):
      assert (workdir / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
  assert (workdir / "plots" / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_resumes_and_matches_an_uninterrupted_run(finished_run, tmp_path, caplog):
  config, reference, _ = finished_run
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  config.train.num_epochs = 1
  caplog.set_level("INFO")
  trainer.train_and_evaluate(config, tmp_path)
  assert [r["epoch"] for r in _records(tmp_path)] == [1]
  # As if killed while saving the best checkpoint, after the latest one (the same epoch).
  best = tmp_path / "checkpoints" / "best"
  (best / "1").rename(best / "1.orbax-checkpoint-tmp-1795000000")
  config.train.num_epochs = 2  # the same command with more epochs continues from epoch 1
  results = trainer.train_and_evaluate(config, tmp_path)
  assert "the best checkpoint (epoch 1) was not saved" in caplog.text
  assert results["best_epoch"] == json.loads((reference / "results.json").read_text())["best_epoch"]
  assert sorted(p.name for p in best.iterdir()) == [str(results["best_epoch"])]
  # One compilation of the train step per run, the resumed one (restored state) included.
  compiled = [r.getMessage() for r in caplog.records if "train step was compiled" in r.getMessage()]
  assert compiled == ["the train step was compiled once in this process"] * 2
  resumed, expected = _records(tmp_path), _records(reference)
  assert [r["step"] for r in resumed] == [2, 4]
  for a, b in zip(resumed, expected):
    for key in ("train_loss", "val_loss", "val_rmse", "lr"):
      assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_killed_run_resumes_where_it_stopped(finished_run, tmp_path):
  config, reference, _ = finished_run
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  config.train.num_epochs = 3
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  process = subprocess.Popen(
    launch_command(tmp_path, config),
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  first = tmp_path / "checkpoints" / "latest" / "1"
  deadline = time.time() + 300
  while not first.is_dir() and process.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)  # as a pre-empted job would be: no clean-up at all
  process.wait()
  assert first.is_dir() or (tmp_path / "checkpoints" / "latest" / "2").is_dir()
  assert not (tmp_path / "results.json").exists()

  done = run_command(launch_command(tmp_path, config), cwd=ROOT, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resuming" in done.stderr
  records = _records(tmp_path)
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert [r["step"] for r in records] == [2, 4, 6]
  for a, b in zip(records, _records(reference)):
    assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-4)
  assert "test" in json.loads((tmp_path / "results.json").read_text())["splits"]
  assert "RMSE" in done.stdout  # the final table


def test_bad_dataset_exits_non_zero_naming_the_problem(tmp_path):
  root = tmp_path / "EchoNet"
  (root / "Videos").mkdir(parents=True)
  (root / "FileList.csv").write_text(
    "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n"
    "0XAAAA,55.0,40,90,112,112,50,30,TRAIN\n"
    "0XBBBB,nan,40,90,112,112,50,30,VAL\n"
  )
  done = run_command(
    [
      sys.executable,
      "launch.py",
      "--config=configs/i3d.py",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data.root={root}",
      f"--config.data.cache_dir={tmp_path / 'cache'}",
      "--config.train.batch_size=8",
    ],
    cwd=ROOT,
    timeout=300,
  )
  assert done.returncode == 1
  assert "FileList.csv line 3" in done.stderr and "0XBBBB" in done.stderr
  assert "0XAAAA.avi" in done.stderr  # the missing video is named
  output = done.stdout + done.stderr
  assert output.count("FileList.csv line 3") == 1, output  # said once, not logged and printed
  assert "Traceback" not in output
  # The folder is refused before TFDS starts preparing it, so TFDS has nothing to announce.
  assert "Downloading" not in output
  assert not (tmp_path / "run" / "checkpoints").exists()
  # Nothing was prepared: at most the (empty) lock file of the cache folder.
  cache = tmp_path / "cache"
  assert not cache.exists() or [p.name for p in cache.rglob("*")] == [".prepare.lock"]


def _run_launch(*args, timeout=300):
  return run_command([sys.executable, "launch.py", *args], cwd=ROOT, timeout=timeout)


def test_missing_dataset_folder_is_one_error_message(tmp_path):
  root = tmp_path / "no" / "such" / "folder"
  done = _run_launch(
    "--config=configs/quickstart.py",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.root={root}",
    f"--config.data.cache_dir={tmp_path / 'c'}",
  )
  assert done.returncode == 1
  output = done.stdout + done.stderr
  assert output.count(f"dataset root {root} does not exist") == 1, output
  assert "error: EchoNet-Dynamic folder" in done.stderr
  assert "Traceback" not in output and "Downloading" not in output


def test_bad_config_value_is_one_error_message(tmp_path):
  # batch_size 0 used to pass the check (0 is divisible by any device count) and then divide
  # by zero; it fails before any data is read.
  done = _run_launch(
    "--config=configs/quickstart.py",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.cache_dir={tmp_path / 'c'}",
    "--config.train.batch_size=0",
  )
  assert done.returncode == 1
  output = done.stdout + done.stderr
  assert output.count("train.batch_size must be at least 1, got 0") == 1, output
  assert "error: train.batch_size" in done.stderr and "Traceback" not in output


@pytest.mark.parametrize(
  "override,named,closest",
  [
    ("--config.train.batchsize=8", "train.batchsize", "train.batch_size"),
    ("--config.trian.batch_size=8", "trian.batch_size", "train"),
    ("--config.compute.kernel=xla", "compute.kernel", "compute.kernels"),
  ],
)
def test_a_mistyped_override_is_one_error_line_with_the_closest_keys(
  tmp_path, override, named, closest
):
  done = _run_launch("--config=configs/quickstart.py", f"--workdir={tmp_path / 'run'}", override)
  assert done.returncode == 1
  lines = (done.stdout + done.stderr).strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert f"'{named}' is not a config key" in lines[0] and f"closest: {closest}" in lines[0]
  assert not (tmp_path / "run").exists()


def test_unexpected_exception_keeps_its_traceback(tmp_path):
  """A bug (here: a ValueError from inside training) is no user error: its traceback shows."""
  script = (
    "import sys\n"
    "from absl import app\n"
    "import launch\n"
    "from lvef_jax.training import trainer\n"
    "def train_and_evaluate(config, workdir, **options):\n"
    "  raise ValueError('a bug deep inside')\n"
    "trainer.train_and_evaluate = train_and_evaluate\n"
    "app.run(lambda argv: sys.exit(launch.main(argv)), argv=['launch.py', "
    f"'--config=configs/quickstart.py', '--workdir={tmp_path / 'run'}'])\n"
  )
  done = run_command(
    [sys.executable, "-c", script],
    cwd=ROOT,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  assert done.returncode != 0
  assert "Traceback (most recent call last)" in done.stderr, done.stderr[-3000:]
  assert "in train_and_evaluate" in done.stderr
  assert "ValueError: a bug deep inside" in done.stderr
  assert "error: a bug" not in done.stderr


def test_summary_mode_ends_with_the_parameter_count():
  done = run_command(
    [sys.executable, "launch.py", "--config=configs/i3d.py:variant=mini", "--mode=summary"],
    cwd=ROOT,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == "trainable_params: 1536001"
  assert "stem_conv.kernel" in done.stdout


@pytest.mark.parametrize(
  "arg,count",
  [
    ("two_stream.py:norm=layer", 86710403),
    ("fusion.py:kind=dual_input,conv2=3x3x3", 6058785),
    ("cnn_rnn.py:backbone=inception_v3,rnn=lstm", 133041),
  ],
)
def test_summary_of_every_family(arg, count):
  done = run_command(
    [sys.executable, "launch.py", f"--config=configs/{arg}", "--mode=summary"],
    cwd=ROOT,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == f"trainable_params: {count}"


@pytest.mark.parametrize(
  "arg",
  [
    "model=two_stream,norm=layer",
    "model=fusion,kind=dual_input",
    "model=cnn_rnn,rnn=lstm,norm=mixed",
  ],
)
def test_every_family_trains_into_a_full_run_directory(arg, data_cache, tmp_path):
  config = shrink(load_config("quickstart", arg), data_cache)
  config.train.num_epochs = 1
  results = trainer.train_and_evaluate(config, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == config.model.name
  assert [r["epoch"] for r in _records(tmp_path)] == [1]
  assert set(results["splits"]) == {"train", "val", "test"}
  assert all(np.isfinite(s["rmse"]) for s in results["splits"].values())
  for name in (
    "predictions_test.csv",
    "plots/scatter_test.png",
    "plots/history.png",
    "checkpoints/best/1",
  ):
    assert (tmp_path / name).exists(), name


def test_layer_norm_learns_a_shrunk_quickstart(tmp_path):
  """The paper's LayerNorm trains (no collapse to the mean) on a shrunk demo dataset.

  Fusion New Combination with norm=layer, the quickstart's clips and model at 24x24 (the demo's
  32x32 took a third longer) on 300 synthetic videos for 10 epochs at a constant learning rate,
  on XLA's plain ops. On a 2-core Xeon the best epoch reached train R² 0.45 and val R² 0.41 in
  69 s (at 32x32: 0.49 and 0.50 in 89 s); a model that collapses to the mean scores about 0. It
  runs ``launch.py`` on one CPU device: learning does not depend on the mesh (the other tests
  cover sharding), and eight fake devices on two cores took twice as long (124 s against 70 s).
  """
  command = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--config=configs/quickstart.py:model=fusion,kind=new_combination,norm=layer",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.cache_dir={tmp_path / 'data'}",
    "--config.data.synthetic_num_videos=300",
    "--config.data.image_size=24",
    "--config.data.augment_pad=2",
    "--config.train.num_epochs=10",
    "--config.train.lr_decay_epochs=100",
    "--config.train.early_stopping_patience=10",
    "--config.train.log_every_steps=100",
    PLAIN_OPS,
  ]
  env = child_env(1, PYTHONPATH=str(ROOT))
  done = run_command(command, cwd=ROOT, env=env, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "on 1 devices" in done.stderr
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["splits"]["train"]["r2"] > 0.25, results
  assert results["splits"]["val"]["r2"] > 0.0, results


def test_same_config_and_seed_give_byte_identical_results(finished_run, tmp_path):
  config, reference, _ = finished_run
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  trainer.train_and_evaluate(config, tmp_path)
  for name in ("results.json", "predictions_train.csv", "predictions_val.csv"):
    assert (tmp_path / name).read_bytes() == (reference / name).read_bytes(), name


def test_half_written_checkpoints_are_set_aside_and_the_run_resumes(finished_run, tmp_path):
  """A process killed while saving leaves Orbax's temporary folder (or, on filesystems without
  atomic renames, a step folder without its finished marker): both are ignored, with a warning."""
  config, reference, _ = finished_run
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  (tmp_path / "results.json").unlink()  # as if killed before the final evaluation
  latest = tmp_path / "checkpoints" / "latest"
  (latest / "3.orbax-checkpoint-tmp-1795000000").mkdir()
  (latest / "3.orbax-checkpoint-tmp-1795000000" / "state").mkdir()
  (latest / "4" / "state").mkdir(parents=True)
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  done = run_command(launch_command(tmp_path, config), cwd=ROOT, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr.count("is a half-written checkpoint") == 2
  assert "resuming" in done.stderr
  assert (tmp_path / "checkpoints" / "incomplete" / "latest" / "4").is_dir()
  assert sorted(p.name for p in latest.iterdir()) == ["2"]  # Orbax's folder holds its own alone
  assert (tmp_path / "results.json").read_bytes() == (reference / "results.json").read_bytes()


# Runs launch.py with Orbax's final rename of checkpoint latest/2 held up: the step's files are
# all written but not yet committed when the marker file appears and the test kills the process.
_SAVE_HELD_UP = """
import pathlib, runpy, sys, time
from orbax.checkpoint._src.path import async_path

rename, marker = async_path.rename, pathlib.Path(sys.argv[1])
async def held_up(src, dst):
  dst = pathlib.Path(str(dst))
  if dst.name == "2" and dst.parent.name == "latest":
    marker.write_text(str(src))
    time.sleep(600)
  return await rename(src, dst)
async_path.rename = held_up
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_while_writing_a_checkpoint_resumes_from_the_one_before(finished_run, tmp_path):
  config, reference, _ = finished_run
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  script, marker = tmp_path / "held_up.py", tmp_path / "saving"
  script.write_text(_SAVE_HELD_UP)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  process = subprocess.Popen(
    [sys.executable, str(script), str(marker), *launch_command(tmp_path / "run", config)[1:]],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not marker.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL and marker.exists()
  latest = tmp_path / "run" / "checkpoints" / "latest"
  assert pathlib.Path(marker.read_text()).parent == latest  # its temporary folder, left behind
  assert (latest / "1").is_dir() and not (latest / "2").exists()

  done = run_command(
    launch_command(tmp_path / "run", config),
    cwd=ROOT,
    env=env,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "is a half-written checkpoint" in done.stderr and "resuming" in done.stderr
  assert [r["epoch"] for r in _records(tmp_path / "run")] == [1, 2]
  for name in ("results.json", "predictions_test.csv"):
    assert (tmp_path / "run" / name).read_bytes() == (reference / name).read_bytes(), name


def test_killed_during_the_final_evaluation_ends_with_the_same_results(finished_run, tmp_path):
  config, reference, _ = finished_run
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  log = tmp_path / "log.txt"
  with log.open("w") as out:
    process = subprocess.Popen(
      launch_command(tmp_path / "run", config), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while "evaluating the best checkpoint" not in log.read_text() and time.time() < deadline:
      if process.poll() is not None:
        break
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert process.returncode == -signal.SIGKILL  # killed while evaluating, not finished
  assert not (tmp_path / "run" / "results.json").exists()
  done = run_command(launch_command(tmp_path / "run", config), cwd=ROOT, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ("results.json", "predictions_test.csv"):
    assert (tmp_path / "run" / name).read_bytes() == (reference / name).read_bytes(), name


def test_on_bad_video_skip_leaves_out_missing_and_corrupt_videos(finished_run, tmp_path):
  config, _, _ = finished_run
  source = next(pathlib.Path(config.data.cache_dir).glob("synthetic-n24-*"))
  root = tmp_path / "echonet"
  shutil.copytree(source, root)
  rows = list(csv.DictReader((root / "FileList.csv").open()))
  train = [r["FileName"] for r in rows if r["Split"].lower() == "train"]
  (root / "Videos" / f"{train[0]}.avi").unlink()
  (root / "Videos" / f"{train[1]}.avi").write_bytes(b"not a video")
  config = shrink(load_config("quickstart"), tmp_path / "cache")
  config.data.root = str(root)
  with pytest.raises(LvefError, match="missing from"):  # the default refuses the folder
    trainer.train_and_evaluate(config, tmp_path / "refused")
  config.data.on_bad_video = "skip"
  results = trainer.train_and_evaluate(config, tmp_path / "run")
  skipped = list(csv.DictReader((tmp_path / "run" / "skipped_videos.csv").open()))
  assert {r["FileName"]: r["reason"].split()[0] for r in skipped} == {
    train[0]: "missing",
    train[1]: "cannot",
  }
  assert sum(s["n"] for s in results["splits"].values()) == len(rows) - 2
