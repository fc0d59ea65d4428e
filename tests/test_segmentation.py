"""The segmentation task: the U-Net learns the synthetic LV masks, a run resumes, and an EF run
evaluated and applied with a segmentation run gives beats, EF from the masks, beat-to-beat
EF and the pictures."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

from lvef_jax import config_base
from lvef_jax.errors import ConfigError
from lvef_jax.evaluation import commands
from lvef_jax.training import tasks, trainer
from tests.conftest import ROOT, launch_command, load_config, run_command, shrink

pytestmark = pytest.mark.slow

# A shrunk demo: 120 videos, 48x48 frames, the U-Net 8 channels wide over 3 levels.
SEG_DATA = dict(
  synthetic_num_videos=120,
  synthetic_seed=5,
  synthetic_min_frames=30,
  synthetic_max_frames=90,
  image_size=48,
  augment_pad=3,
  prefetch=1,
  cache_in_memory=True,
)

# The small U-Net of these tests, as configs/quickstart.py's argument.
SEG_ARG = "model=segmentation,features=8,depth=3"


def _seg_config(cache_dir, **train):
  config = load_config("quickstart", SEG_ARG)
  config.data.update(cache_dir=str(cache_dir), **SEG_DATA)
  config.train.update(
    dict(batch_size=16, num_epochs=8, log_every_steps=5, bn_recalibration_batches=4), **train
  )
  config.eval.update(batch_size=16)
  return config


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory, data_cache):
  config = _seg_config(data_cache)
  workdir = tmp_path_factory.mktemp("segmentation")
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results, time.perf_counter() - start


def test_the_unet_learns_the_traced_masks(seg_run):
  config, workdir, results, seconds = seg_run
  test = results["splits"]["test"]
  assert results["task"] == "segmentation"
  # The demo itself (64x64, 16 channels, 10 epochs) reaches more: docs/segmentation.md.
  assert test["dice"] >= 0.85, (test, f"{seconds:.0f} s")
  assert test["dice_ed"] >= 0.85 and test["dice_es"] >= 0.8, test
  assert test["n"] % 2 == 0 and test["n"] > 0
  rows = list(csv.DictReader((workdir / "segmentation_test.csv").open()))
  assert len(rows) == test["n"]
  assert {r["Phase"] for r in rows} == {"ED", "ES"}
  dice = np.array([float(r["Dice"]) for r in rows])
  assert np.all((dice >= 0) & (dice <= 1)) and dice.mean() > 0.8
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"val_loss", "val_dice", "val_dice_ed", "val_dice_es"} <= set(records[0])
  assert records[-1]["val_loss"] < records[0]["val_loss"]
  assert (workdir / "plots" / "history.png").is_file()
  assert json.loads((workdir / "config.json").read_text())["model"]["input_std"] > 0


def test_a_model_of_another_task_is_refused():
  config = load_config("quickstart")
  config.task = "segmentation"
  with pytest.raises(ConfigError, match="does not learn task"):
    tasks.task_of(config)


def test_a_killed_segmentation_run_resumes_where_it_stopped(data_cache, tmp_path):
  """A run killed mid-way and started again ends as an uninterrupted run. Both are launch.py
  processes: the uninterrupted run trained inside a test process (after that process's other
  tests) once differed from fresh processes by 0.5 % in the first epoch's val loss."""
  config = _seg_config(data_cache, num_epochs=3, steps_per_epoch=3)
  config.eval.splits = ("val",)
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  reference = tmp_path / "reference"
  done = run_command(
    launch_command(reference, config, config_arg=SEG_ARG), cwd=ROOT, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  workdir = tmp_path / "killed"
  process = subprocess.Popen(
    launch_command(workdir, config, config_arg=SEG_ARG),
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  first = workdir / "checkpoints" / "latest" / "1"
  deadline = time.time() + 300
  while not first.is_dir() and process.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)  # mid-epoch 2, or while saving: no clean-up at all
  process.wait()
  assert not (workdir / "results.json").exists()
  done = run_command(
    launch_command(workdir, config, config_arg=SEG_ARG), cwd=ROOT, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resuming" in done.stderr
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  for a, b in zip(records, expected):
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-4)
  assert "Dice" in done.stdout  # the final table


@pytest.fixture(scope="module")
def ef_run(tmp_path_factory, data_cache, seg_run):
  """A tiny EF run on the segmentation run's videos (clips at 16x16, the masks at 48x48)."""
  config = shrink(load_config("quickstart"), data_cache)
  config.data.update(
    {k: SEG_DATA[k] for k in ("synthetic_num_videos", "synthetic_seed", "synthetic_min_frames")}
  )
  config.data.synthetic_max_frames = SEG_DATA["synthetic_max_frames"]
  config.eval.splits = ("test",)
  workdir = tmp_path_factory.mktemp("ef")
  trainer.train_and_evaluate(config, workdir)
  return config_base.load_run_config(workdir), workdir


def test_beat_to_beat_evaluation_writes_every_file(ef_run, seg_run):
  config, workdir = ef_run
  _, segdir, _, _ = seg_run
  reports = commands.evaluate(config, workdir, split="test", clips="beats", segmentation=segdir)
  report = reports["test"]
  assert report["clips"] == "beats" and np.isfinite(report["rmse"]["value"])
  seg = report["segmentation"]
  assert seg["videos"] == report["n"] and seg["beats_per_video"] > 0.5
  out = workdir / "eval"
  for name in ("test_beats.json", "test_beats_predictions.csv", "test_segmentation.csv"):
    assert (out / name).is_file(), name
  rows = list(csv.DictReader((out / "test_segmentation.csv").open()))
  assert len(rows) == report["n"]
  assert all(np.isfinite(float(r["EF_pred_beats"])) for r in rows)
  with_beats = [r for r in rows if int(r["Beats"]) > 0]
  assert len(with_beats) >= 0.8 * len(rows)
  assert all(r["EF_masks"] for r in with_beats)
  assert list((out / "segmentation" / "test").glob("*_area.png"))
  # Beat clips end at the end-systoles: their count is the beats with a whole clip before them.
  assert any(int(r["BeatClips"]) > 1 for r in rows)


def test_beats_without_a_segmentation_run_is_one_clear_error(ef_run):
  config, workdir = ef_run
  with pytest.raises(ConfigError, match="--segmentation"):
    commands.evaluate(config, workdir, split="test", clips="beats")


def test_an_ef_run_is_not_a_segmentation_run(ef_run):
  config, workdir = ef_run
  with pytest.raises(ConfigError, match="not a segmentation run"):
    commands.evaluate(config, workdir, split="test", segmentation=workdir)


def test_predict_with_segmentation_draws_each_file(ef_run, seg_run, tmp_path):
  config, workdir = ef_run
  seg_config, segdir, _, _ = seg_run
  videos = pathlib.Path(seg_config.data.cache_dir)
  folder = next(p for p in videos.glob("synthetic-n120-s5-*") if p.is_dir()) / "Videos"
  chosen = tmp_path / "videos"
  chosen.mkdir()
  for path in sorted(folder.glob("*.avi"))[:2]:
    (chosen / path.name).symlink_to(path)
  output = tmp_path / "ef.csv"
  scored = commands.predict(
    config, workdir, str(chosen), output, clips="beats", segmentation=segdir
  )
  assert scored == 2
  rows = list(csv.DictReader(output.open()))
  assert all(r["n_beats"] and r["ES_frames"] is not None for r in rows)
  pictures = tmp_path / "ef_segmentation"
  for row in rows:
    stem = pathlib.Path(row["FileName"]).stem
    assert (pictures / f"{stem}_area.png").is_file()
    assert (pictures / f"{stem}_overlay.avi").stat().st_size > 0
