"""Checkpoint evaluation (`--mode=eval`) and prediction on new videos (`--mode=predict`)."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
import sys

import cv2
import numpy as np
import pytest
from flax import nnx

from lvef_jax import checkpoints, config_base, models, sharding
from lvef_jax.data import echonet, preparation, synthetic, synthetic_external
from lvef_jax.errors import ConfigError
from lvef_jax.evaluation import commands, evaluator, metrics
from lvef_jax.evaluation.predictor import Predictor, predictors_from_run
from lvef_jax.training import members as members_lib, state as state_lib, trainer
from tests.conftest import PLAIN_OPS, ROOT, load_config, run_command, shrink

# trained runs scored by launch.py: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _launch(*args, timeout=600):
  return run_command(
    [sys.executable, "launch.py", *args, PLAIN_OPS],
    cwd=ROOT,
    timeout=timeout,
  )


def _rows(path: pathlib.Path) -> list[dict]:
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_cache):
  """A trained I3D-stem run on the tiny synthetic dataset (the model has head dropout)."""
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.eval.batch_size = 8
  workdir = tmp_path_factory.mktemp("eval_run")
  results = trainer.train_and_evaluate(config, workdir)
  return config, workdir, results


def test_eval_needs_only_the_run_directory_and_its_metrics_match_the_csv(run):
  _, workdir, _ = run
  done = _launch("--mode=eval", f"--workdir={workdir}", "--eval_split=test", "--eval_clips=all")
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((workdir / "eval" / "test_all.json").read_text())
  rows = _rows(workdir / "eval" / "test_all_predictions.csv")
  assert list(rows[0]) == [
    "FileName",
    "EF",
    "EF_pred",
    "EF_pred_std",
    "EF_low",
    "EF_high",
    "n_clips",
    "out_of_range",
  ]
  ef = np.array([float(r["EF"]) for r in rows])
  pred = np.array([float(r["EF_pred"]) for r in rows])
  outside = [r["FileName"] for r in rows if r["out_of_range"] == "1"]
  assert outside == [r["FileName"] for r, p in zip(rows, pred) if not 0 <= p <= 100]
  assert report["out_of_range"] == len(outside)
  error = pred - ef
  assert report["n"] == len(rows)
  assert report["rmse"]["value"] == pytest.approx(np.sqrt(np.mean(error**2)), abs=1e-3)
  assert report["mae"]["value"] == pytest.approx(np.mean(np.abs(error)), abs=1e-3)
  r2 = 1 - np.sum(error**2) / np.sum((ef - ef.mean()) ** 2)
  assert report["r2"]["value"] == pytest.approx(r2, abs=1e-3)
  lo, hi = report["rmse"]["ci95"]
  assert lo <= report["rmse"]["value"] <= hi
  assert sum(int(r["n_clips"]) for r in rows) == report["clips_scored"] >= len(rows)
  assert set(report["roc_auc"]) == {"35", "40", "45", "50"}
  assert len(report["heart_failure"]["confusion"]) == 3
  assert [r["range"] for r in report["error_by_ef_range"]] == [
    "<30",
    "30-40",
    "40-50",
    "50-70",
    ">=70",
  ]
  # All clips: the spread over each video's clips gives the interval.
  assert report["interval"]["source"] == "clips"
  assert 0.0 <= report["interval_coverage"]["coverage"] <= 1.0
  for kind in ("scatter", "bland_altman", "roc", "calibration"):
    assert (workdir / "eval" / "plots" / f"{kind}_test_all.png").read_bytes()[:4] == b"\x89PNG"
  assert "RMSE" in done.stdout and "95 % bootstrap CI" in done.stdout


def test_one_clip_eval_reproduces_the_training_results(run):
  _, workdir, results = run
  done = _launch("--mode=eval", f"--workdir={workdir}", "--eval_split=all", "--eval_clips=one")
  assert done.returncode == 0, done.stderr[-3000:]
  for split in ("train", "val", "test"):
    report = json.loads((workdir / "eval" / f"{split}_one.json").read_text())
    assert report["rmse"]["value"] == pytest.approx(results["splits"][split]["rmse"], abs=1e-4)
    assert report["interval"]["source"] == "none" and "interval_coverage" not in report


def test_mc_dropout_and_ensemble_give_intervals(run, tmp_path_factory, data_cache):
  config, workdir, _ = run
  other = tmp_path_factory.mktemp("eval_run_seed1")
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.seed = 1
  trainer.train_and_evaluate(config, other)
  done = _launch(
    "--mode=eval",
    f"--workdir={workdir}",
    "--eval_split=test",
    "--eval_clips=one",
    f"--ensemble={other}",
    "--config.eval.mc_dropout_samples=3",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((workdir / "eval" / "test_one.json").read_text())
  assert report["interval"]["source"] == "mc_dropout(3)+ensemble(2)"
  assert len(report["checkpoints"]) == 2 and str(other) in report["checkpoints"][1]
  rows = _rows(workdir / "eval" / "test_one_predictions.csv")
  std = np.array([float(r["EF_pred_std"]) for r in rows])
  assert np.all(std > 0)
  low, high = (np.array([float(r[k]) for r in rows]) for k in ("EF_low", "EF_high"))
  pred = np.array([float(r["EF_pred"]) for r in rows])
  np.testing.assert_allclose(high - pred, pred - low, atol=2e-4)
  np.testing.assert_allclose(high - low, 2 * metrics.central_z(0.9) * std, atol=2e-4)


def test_eval_on_another_echonet_folder(run, tmp_path):
  _, workdir, _ = run
  external = synthetic.generate(
    tmp_path / "external", 6, 11, min_frames=12, max_frames=30, workers=1
  )
  done = _launch(
    "--mode=eval",
    f"--workdir={workdir}",
    "--eval_split=test",
    f"--config.data.root={external}",
    f"--config.data.cache_dir={tmp_path / 'cache'}",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  out = workdir / "eval" / "external" / "echonet-external"
  report = json.loads((out / "test_one.json").read_text())
  assert report["data_root"] == str(external)
  assert (report["data_format"], report["external"], report["dataset"]) == (
    "echonet",
    True,
    "echonet-external",
  )
  test_names = {r.file_name for r in echonet.read_file_list(external) if r.split == "test"}
  assert {r["FileName"] for r in _rows(out / "test_one_predictions.csv")} == test_names
  assert not (out / "all_one.json").exists()  # one split: no combined report


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file under ``folder`` but external evaluations, by relative path."""
  return {
    str(p.relative_to(folder)): p.read_bytes()
    for p in sorted(folder.rglob("*"))
    if p.is_file() and "external" not in p.relative_to(folder).parts
  }


def test_external_eval_of_a_camus_folder_writes_every_file_with_per_stratum_metrics(run, tmp_path):
  """The run scored on a synthetic CAMUS folder (format camus, both views): everything under
  eval/external/<dataset>/, each split and ``all`` of them with per-stratum metrics; the run's
  own eval/ files untouched."""
  _, workdir, _ = run
  before = _snapshot(workdir / "eval")
  source = synthetic.generate(tmp_path / "source", 12, 12, min_frames=12, max_frames=30, workers=1)
  camus_root = synthetic_external.write_camus(source, tmp_path / "CAMUS")
  config = _run_config(workdir)
  config.data.update(
    root=str(camus_root), format="camus", camus_view="both", cache_dir=str(tmp_path / "cache")
  )
  builder = preparation.prepare(config.data)
  truth = {}  # FileName -> image quality, from the prepared copy's strata
  for split in ("train", "val", "test"):
    names = preparation.split_listing(builder, split)["file_name"]
    truth.update(zip(names, preparation.strata(builder, split)["image_quality"]))
  reports = commands.evaluate(config, workdir, split="all", clips="one")
  assert list(reports) == ["train", "val", "test", "all"]
  out = workdir / "eval" / "external" / "camus-CAMUS"
  assert _snapshot(workdir / "eval") == before
  splits = {}
  for name in ("train", "val", "test", "all"):
    report = json.loads((out / f"{name}_one.json").read_text())
    assert report == reports[name]
    assert (report["data_format"], report["external"], report["dataset"]) == (
      "camus",
      True,
      "camus-CAMUS",
    )
    for key in ("rmse", "mae", "r2", "roc_auc", "heart_failure"):
      assert key in report
    rows = _rows(out / f"{name}_one_predictions.csv")
    assert report["n"] == len(rows)
    for kind in ("scatter", "bland_altman", "roc"):
      assert (out / "plots" / f"{kind}_{name}_one.png").is_file()
    splits[name] = rows
    # Each stratum's groups partition the videos; image quality's checked by hand.
    assert set(report["strata"]) == {"image_quality", "view", "sex", "age_group"}
    for stratum in report["strata"]:
      assert sum(g["n"] for g in report["strata"][stratum].values()) == report["n"]
    for value, group in report["strata"]["image_quality"].items():
      error = np.array(
        [float(r["EF_pred"]) - float(r["EF"]) for r in rows if truth[r["FileName"]] == value]
      )
      assert group["n"] == len(error)
      assert group["rmse"]["value"] == pytest.approx(np.sqrt(np.mean(error**2)), abs=1e-3)
      assert group["bias"] == pytest.approx(np.mean(error), abs=1e-3)
      if len(error) < 2:
        assert group["r2"] == {"value": None, "ci95": None}
    strata_rows = _rows(out / f"{name}_one_strata.csv")
    assert list(strata_rows[0]) == list(commands.eval_files.STRATA_COLUMNS)
    assert [(r["stratum"], r["value"]) for r in strata_rows] == [
      (stratum, value) for stratum, groups in report["strata"].items() for value in groups
    ]
  # all: every video of every split, split after split; both views of each patient.
  assert splits["all"] == splits["train"] + splits["val"] + splits["test"]
  assert reports["all"]["n"] == len(truth) and len(truth) % 2 == 0
  assert set(reports["all"]["strata"]["view"]) == {"2CH", "4CH"}


def test_eval_of_the_run_s_own_data_with_strata_stays_in_eval(run, monkeypatch):
  """The run's own data: eval/{split}_{clips}.json as ever, with the strata block when the
  dataset has strata (given here by a stand-in for `preparation.strata`: the session's copy
  of the data is shared, and a strata.csv in it would reach every test)."""
  _, workdir, _ = run

  def strata(builder, split):
    names = preparation.split_listing(builder, split)["file_name"]
    return {"view": np.array(["2CH", "4CH"] * len(names))[: len(names)]}

  monkeypatch.setattr(preparation, "strata", strata)
  reports = commands.evaluate(_run_config(workdir), workdir, split="all", clips="one")
  assert list(reports) == ["train", "val", "test"]  # the run's own splits: no combined report
  report = json.loads((workdir / "eval" / "test_one.json").read_text())
  assert (report["data_format"], report["external"]) == ("echonet", False)
  assert report["dataset"] == "echonet-synthetic"
  assert list(report["strata"]) == ["view"] and list(report["strata"]["view"]) == ["2CH", "4CH"]
  assert _rows(workdir / "eval" / "test_one_strata.csv")[0]["stratum"] == "view"
  assert not (workdir / "eval" / "all_one.json").exists()


def test_the_data_source_is_external_when_its_format_or_root_differs(tmp_path):
  config = load_config("i3d")
  config.data.root = str(tmp_path / "echonet")
  (tmp_path / config_base.RUN_CONFIG_FILE).write_text(config_base.run_config_json(config))
  own = commands._data_source(config, tmp_path)
  assert own == {"data_format": "echonet", "external": False, "dataset": "echonet-echonet"}
  config.data.root = str(tmp_path / "echonet") + "/"  # the same folder, spelled otherwise
  assert commands._data_source(config, tmp_path)["external"] is False
  config.data.root = str(tmp_path / "CAMUS data (nifti)")
  other = commands._data_source(config, tmp_path)
  assert other == {
    "data_format": "echonet",
    "external": True,
    "dataset": "echonet-CAMUS_data__nifti_",
  }
  config.data.root = str(tmp_path / "echonet")
  with config.data.unlocked():
    config.data.format = "camus"
  assert commands._data_source(config, tmp_path) == {
    "data_format": "camus",
    "external": True,
    "dataset": "camus-echonet",
  }


def test_eval_without_a_run_is_one_error(tmp_path):
  done = _launch("--mode=eval", f"--workdir={tmp_path}")
  assert done.returncode == 1
  assert "config.json does not exist" in done.stderr and "Traceback" not in done.stderr


def _saved_run(workdir: pathlib.Path, config, best_epochs: list[int]):
  """A run saved as the trainer saves one, without training: its fresh state as the best
  checkpoint (several members: their states stacked, `state.create_members`, and each one's
  best epoch). Returns the state."""
  _, state, _ = state_lib.create(config, steps_per_epoch=2)
  if len(best_epochs) == 1:
    meta = {"epoch": best_epochs[0], "early_stopping": {"best_epoch": best_epochs[0]}}
  else:
    meta = {
      "epoch": max(best_epochs),
      "early_stopping": [{"best_epoch": e} for e in best_epochs],
      "best_epochs": best_epochs,
    }
  store = checkpoints.Checkpoints(workdir / "checkpoints", writer=True)
  store.save("best", max(best_epochs), state, meta)
  store.wait()
  store.close()
  (workdir / config_base.RUN_CONFIG_FILE).write_text(config_base.run_config_json(config))
  return state


@pytest.fixture(scope="module")
def members_run(tmp_path_factory, data_cache):
  """A run of two members (``train.seeds=2``) of the tiny I3D-stem, untrained: members 0 and 1
  are seeds 0 and 1, with best epochs 2 and 1."""
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.train.seeds = 2
  workdir = tmp_path_factory.mktemp("members_run")
  stacked = _saved_run(workdir, config, best_epochs=[2, 1])
  return workdir, stacked


def _run_config(workdir):
  """The config ``launch.py --mode=eval`` reads: the run's own, on this suite's ops."""
  config = config_base.load_run_config(workdir)
  config.compute.kernels = load_config("i3d").compute.kernels
  return config


def _evaluated(monkeypatch, workdir, **options) -> tuple[dict, evaluator.VideoPredictions]:
  """`commands.evaluate` of the test split, one clip: its report and its predictions (as
  computed, before the CSV rounds them)."""
  seen = []
  write = commands.eval_files.write_evaluation

  def keep(out_dir, name, report, predictions, *args):
    seen.append(predictions)
    return write(out_dir, name, report, predictions, *args)

  monkeypatch.setattr(commands.eval_files, "write_evaluation", keep)
  reports = commands.evaluate(_run_config(workdir), workdir, split="test", clips="one", **options)
  (predictions,) = seen
  return reports["test"], predictions


def test_a_members_run_evaluates_as_the_ensemble_of_its_members(members_run, monkeypatch):
  workdir, stacked = members_run
  report, ensemble = _evaluated(monkeypatch, workdir)
  assert report["interval"]["source"] == "ensemble(2)"
  assert "interval_coverage" in report and np.all(ensemble.ef_pred_std > 0)
  first, second = report["checkpoints"]
  assert first == f"{workdir} (best checkpoint, member 0, seed 0, epoch 2)"
  assert second == f"{workdir} (best checkpoint, member 1, seed 1, epoch 1)"
  assert (workdir / "eval" / "test_one.json").is_file()
  alone = []
  for member in (0, 1):
    member_report, predictions = _evaluated(monkeypatch, workdir, member=member)
    assert member_report["interval"]["source"] == "none"
    assert member_report["checkpoints"] == [report["checkpoints"][member]]
    assert (workdir / "members" / str(member) / "eval" / "test_one.json").is_file()
    alone.append(predictions.ef_pred)
  assert not np.allclose(alone[0], alone[1])  # two seeds: two models
  np.testing.assert_allclose(ensemble.ef_pred, (alone[0] + alone[1]) / 2, atol=1e-5)
  np.testing.assert_allclose(ensemble.ef_pred_std, np.abs(alone[0] - alone[1]) / 2, atol=1e-4)

  # Member 1 is the model of member 1's solo config with its slice of the stacked weights.
  config = _run_config(workdir)
  solo = members_lib.member_config(config, members_lib.members(config)[1])
  graphdef, _, _ = nnx.split(models.create_model(solo, seed=solo.seed), nnx.Param, ...)
  weights = state_lib.member_state(stacked, 1)
  mesh = sharding.make_mesh()
  direct = Predictor(solo, graphdef, weights.params, weights.batch_stats, mesh)
  expected = evaluator.Evaluator("test", batch_size=8).run(
    direct, preparation.prepare(config.data), config.data, mesh
  )
  np.testing.assert_allclose(alone[1], expected.ef_pred, atol=1e-5)

  # The same through launch.py's --member flag (the CSV keeps four decimals).
  done = _launch("--mode=eval", f"--workdir={workdir}", "--eval_split=test", "--member=1")
  assert done.returncode == 0, done.stderr[-3000:]
  rows = _rows(workdir / "members" / "1" / "eval" / "test_one_predictions.csv")
  assert [r["FileName"] for r in rows] == list(expected.file_name)
  pred = np.array([float(r["EF_pred"]) for r in rows])
  np.testing.assert_allclose(pred, expected.ef_pred, atol=2e-4)


def test_a_bad_member_is_one_error(members_run, tmp_path):
  workdir, _ = members_run
  config = _run_config(workdir)
  for member in (2, -1):
    with pytest.raises(ConfigError, match=r"the run has members 0 to 1"):
      predictors_from_run(workdir, config=config, member=member)
  with pytest.raises(ConfigError, match=r"run of 2 members: name one \(member 0 to 1\)"):
    Predictor.from_run(workdir, config=config)
  done = _launch("--mode=eval", f"--workdir={workdir}", "--member=2")
  assert done.returncode == 1
  assert f"error: member 2 of {workdir}: the run has members 0 to 1" in done.stderr
  assert "Traceback" not in done.stderr


def test_a_solo_run_has_only_member_0(tmp_path, data_cache):
  _saved_run(tmp_path, shrink(load_config("i3d", "variant=stem"), data_cache), best_epochs=[3])
  config = _run_config(tmp_path)
  (predictor,) = predictors_from_run(tmp_path, config=config, member=0)
  assert predictor.source == f"{tmp_path} (best checkpoint, epoch 3)"
  assert Predictor.from_run(tmp_path, config=config).source == predictor.source
  with pytest.raises(ConfigError, match=r"member 1 of .*: the run has only member 0"):
    predictors_from_run(tmp_path, config=config, member=1)


def test_each_grid_member_has_its_own_config(tmp_path, data_cache):
  """A member's dropout rate (Monte-Carlo dropout samples with it) is its grid value."""
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.train.grid = "dropout=0.2,0.6"
  _saved_run(tmp_path, config, best_epochs=[1, 2])
  config = _run_config(tmp_path)
  predictors = predictors_from_run(tmp_path, config=config)
  assert [p.config.model.dropout for p in predictors] == [0.2, 0.6]
  assert [p.config.train.seeds for p in predictors] == [1, 1]
  assert [p.epoch for p in predictors] == [1, 2]
  assert "member 1, seed 0, dropout=0.6, epoch 2" in predictors[1].source


def test_predict_with_a_members_run(members_run, tmp_path):
  workdir, _ = members_run
  config = _run_config(workdir)
  paths, _ = _video_files(config)
  video = next(iter(paths.values()))
  ef = []
  for member in (None, 0, 1):
    output = tmp_path / f"{member}.csv"
    assert commands.predict(config, workdir, str(video), output, member=member) == 1
    (row,) = _rows(output)
    ef.append(float(row["EF_pred"]))
  assert ef[0] == pytest.approx((ef[1] + ef[2]) / 2, abs=2e-4)


def _video_files(config) -> dict[str, pathlib.Path]:
  root = pathlib.Path(config.data.cache_dir)
  (folder,) = [p for p in root.glob("synthetic-*") if p.is_dir()]
  return {
    r.file_name: folder / "Videos" / f"{r.file_name}.avi" for r in echonet.read_file_list(folder)
  }, {r.file_name: r for r in echonet.read_file_list(folder)}


def test_predict_folder_with_corrupt_mp4_and_large_videos(run, tmp_path):
  config, workdir, _ = run
  paths, records = _video_files(config)
  name = next(n for n, r in records.items() if r.split == "test" and r.fps == 50)
  source = paths[name]
  folder = tmp_path / "videos"
  folder.mkdir()
  shutil.copy(source, folder / "a.avi")
  frames = echonet.load_video(source)
  for out_name, fourcc, size in (("a.mp4", "mp4v", 112), ("big.avi", "MJPG", 224)):
    writer = cv2.VideoWriter(
      str(folder / out_name), cv2.VideoWriter_fourcc(*fourcc), 50.0, (size, size)
    )
    for frame in frames:
      frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
      writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
  (folder / "broken.avi").write_bytes(b"not a video" * 100)
  output = tmp_path / "predictions.csv"
  done = _launch(
    "--mode=predict", f"--workdir={workdir}", f"--videos={folder}", f"--output={output}"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  rows = {r["FileName"]: r for r in _rows(output)}
  assert list(rows) == ["a.avi", "a.mp4", "big.avi", "broken.avi"]
  assert list(next(iter(rows.values()))) == [
    "FileName",
    "EF_pred",
    "EF_pred_std",
    "EF_low",
    "EF_high",
    "hf_class",
    "n_clips",
    "out_of_range",
    "error",
  ]
  assert rows["broken.avi"]["EF_pred"] == "" and "broken.avi" in rows["broken.avi"]["error"]
  for key in ("a.avi", "a.mp4", "big.avi"):
    assert rows[key]["error"] == "" and 0 < float(rows[key]["EF_pred"]) < 100
    assert rows[key]["out_of_range"] == "0"
    assert rows[key]["hf_class"] in metrics.HF_CLASSES
  # MP4 compression and resizing change the pixels only a little.
  assert float(rows["a.mp4"]["EF_pred"]) == pytest.approx(float(rows["a.avi"]["EF_pred"]), abs=5)
  assert "predicted 3 of 4 videos" in done.stdout

  # Predict and eval see the same clips of the same video: the same EF.
  done = _launch("--mode=eval", f"--workdir={workdir}", "--eval_split=test", "--eval_clips=all")
  assert done.returncode == 0, done.stderr[-3000:]
  evaluated = {r["FileName"]: r for r in _rows(workdir / "eval" / "test_all_predictions.csv")}
  assert float(rows["a.avi"]["EF_pred"]) == pytest.approx(
    float(evaluated[name]["EF_pred"]), abs=1e-3
  )
  assert rows["a.avi"]["n_clips"] == evaluated[name]["n_clips"]


def test_predict_runs_without_tensorflow_at_the_model_size(run, tmp_path):
  """GPU machines may have JAX but no TensorFlow: videos already at the model's frame size
  need no resize, and so no TensorFlow, to be predicted."""
  config, workdir, _ = run
  paths, records = _video_files(config)
  name = next(n for n, r in records.items() if r.split == "test")
  size = config.data.image_size
  writer = cv2.VideoWriter(
    str(tmp_path / "a.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (size,) * 2
  )
  for frame in echonet.load_video(paths[name]):
    small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    writer.write(cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))
  writer.release()
  output = tmp_path / "p.csv"
  argv = ["launch.py", "--mode=predict", f"--workdir={workdir}", f"--videos={tmp_path}"]
  argv.append(f"--output={output}")
  code = (  # A None entry in sys.modules is how Python marks a module as not there.
    "import runpy, sys\n"
    "sys.modules.update(tensorflow=None, tensorflow_datasets=None)\n"
    f"sys.argv = {argv!r}\n"
    "runpy.run_path('launch.py', run_name='__main__')\n"
  )
  done = run_command([sys.executable, "-c", code], cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  (row,) = _rows(output)
  assert row["FileName"] == "a.avi" and row["error"] == "" and 0 < float(row["EF_pred"]) < 100


def test_predict_exits_non_zero_when_nothing_could_be_read(run, tmp_path):
  _, workdir, _ = run
  (tmp_path / "x.avi").write_bytes(b"junk")
  done = _launch(
    "--mode=predict",
    f"--workdir={workdir}",
    f"--videos={tmp_path / 'x.avi'}",
    f"--output={tmp_path / 'p.csv'}",
  )
  assert done.returncode == 1
  assert "could not be read" in done.stdout + done.stderr


def test_predict_reads_a_dicom_cine_loop(run, tmp_path):
  pydicom = pytest.importorskip("pydicom")
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  config, workdir, _ = run
  paths, _ = _video_files(config)
  frames = echonet.load_video(next(iter(paths.values())))
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # ultrasound multi-frame
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(tmp_path / "loop.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = frames.shape[1:]
  ds.NumberOfFrames = len(frames)
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
  ds.CineRate = 50
  ds.PixelData = frames.tobytes()
  ds.save_as(tmp_path / "loop.dcm", enforce_file_format=True)
  del pydicom
  output = tmp_path / "p.csv"
  done = _launch(
    "--mode=predict",
    f"--workdir={workdir}",
    f"--videos={tmp_path / 'loop.dcm'}",
    f"--output={output}",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  (row,) = _rows(output)
  assert row["error"] == "" and 0 < float(row["EF_pred"]) < 100


def test_all_clips_memory_stays_bounded_on_long_videos(tmp_path):
  """Every clip of a 2,000-frame video at stride 1 (about 2,000 clips, 0.7 GB if they were all
  held at once) streams through a fixed batch: peak memory grows by far less."""
  code = f"""
import resource, sys
from lvef_jax.data import pipeline, preparation, synthetic
from tests.conftest import load_config

out = {str(tmp_path / "long")!r}
root = synthetic.generate(out, 3, 0, min_frames=2000, max_frames=2000, workers=1)
config = load_config("i3d")
cache = {str(tmp_path / "cache")!r}
config.data.update(root=str(root), cache_dir=cache, clip_frames=28, image_size=112)
builder = preparation.prepare(config.data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
clips = 0
batches = pipeline.clip_batches(builder, "test", config.data, batch_size=16, clips="all", stride=1)
for batch in batches:
  clips += int(batch["mask"].sum())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(clips, (after - before) // 1024)
"""
  done = run_command([sys.executable, "-c", code], cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  clips, grown_mb = map(int, done.stdout.split()[-2:])
  assert clips == 2000 - 27
  assert grown_mb < 300, f"peak memory grew by {grown_mb} MB over {clips} clips"


def test_evaluation_code_imports_nothing_from_training():
  """Nothing but `lvef_jax.training.members`, plain config logic (each member's config)."""
  code = (
    "import sys, lvef_jax.evaluation.commands, lvef_jax.evaluation.evaluator, "
    "lvef_jax.evaluation.predictor; "
    "allowed = {'lvef_jax.training', 'lvef_jax.training.members'}; "
    "bad = [m for m in sys.modules if m.startswith('lvef_jax.training') and m not in allowed]; "
    "assert not bad, bad"
  )
  done = run_command([sys.executable, "-c", code], cwd=ROOT, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
