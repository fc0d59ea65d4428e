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

from lvef_jax.data import echonet, synthetic
from lvef_jax.evaluation import metrics
from lvef_jax.training import trainer
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
  ]
  ef = np.array([float(r["EF"]) for r in rows])
  pred = np.array([float(r["EF_pred"]) for r in rows])
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
  report = json.loads((workdir / "eval" / "test_one.json").read_text())
  assert report["data_root"] == str(external)
  test_names = {r.file_name for r in echonet.read_file_list(external) if r.split == "test"}
  assert {r["FileName"] for r in _rows(workdir / "eval" / "test_one_predictions.csv")} == test_names


def test_eval_without_a_run_is_one_error(tmp_path):
  done = _launch("--mode=eval", f"--workdir={tmp_path}")
  assert done.returncode == 1
  assert "config.json does not exist" in done.stderr and "Traceback" not in done.stderr


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
    "error",
  ]
  assert rows["broken.avi"]["EF_pred"] == "" and "broken.avi" in rows["broken.avi"]["error"]
  for key in ("a.avi", "a.mp4", "big.avi"):
    assert rows[key]["error"] == "" and 0 < float(rows[key]["EF_pred"]) < 100
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
  code = (
    "import sys, lvef_jax.evaluation.commands, lvef_jax.evaluation.evaluator, "
    "lvef_jax.evaluation.predictor; "
    "bad = [m for m in sys.modules if m.startswith('lvef_jax.training')]; "
    "assert not bad, bad"
  )
  done = run_command([sys.executable, "-c", code], cwd=ROOT, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
