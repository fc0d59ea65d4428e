"""The video ResNets (configs/r2plus1d.py) in runs: the input normalisation training computes
and records, and ``--mode=import`` of PyTorch weights followed by ``--mode=predict`` with no
dataset anywhere. (EchoNet-Dynamic's recipe shrunk by --runlocal trains, evaluates and predicts
in tests/test_sweep.py.)"""

import json
import pathlib

import cv2
import numpy as np
import pytest

from lvef_jax import config_base, models
from lvef_jax.data import normalization, preparation
from lvef_jax.evaluation.predictor import predictors_from_run
from lvef_jax.training import trainer
from tests.conftest import PLAIN_OPS, ROOT, child_env, load_config, run_command, shrink

torch = pytest.importorskip("torch")


def _tiny(arch="r2plus1d_18"):
  config = load_config("r2plus1d", f"arch={arch}")
  config.data.update(clip_frames=8, image_size=16)
  return config


def test_training_computes_the_input_normalisation_and_records_it(data_cache, tmp_path):
  config = shrink(_tiny(), data_cache)
  config.train.update(num_epochs=1, steps_per_epoch=1)
  config.eval.update(clips="one", clip_stride=0, splits=("val",))
  assert config.model.input_mean is None and config.model.input_std is None
  trainer.train_and_evaluate(config, tmp_path)
  recorded = json.loads((tmp_path / config_base.RUN_CONFIG_FILE).read_text())["model"]
  builder = preparation.prepare(config.data)
  mean, std = normalization.pixel_statistics(builder, config.data)
  assert recorded["input_mean"] == pytest.approx(mean, abs=1e-3)
  assert recorded["input_std"] == pytest.approx(std, abs=1e-3)
  assert 0 < mean < 255 and 0 < std < 128
  # Every train video's pixels at their stored size: resizing moves the mean only a little.
  frames = np.concatenate([video.reshape(-1) for video in _train_videos(builder)])
  assert mean == pytest.approx(frames.mean(), rel=0.02)
  assert 0.5 * frames.std() < std < frames.std()  # smoothed by resizing to 16x16
  # Rerunning the finished run with the same config (the statistics again not given) adopts
  # the recorded values rather than calling the run another config's.
  again = shrink(_tiny(), data_cache)
  again.train.update(num_epochs=1, steps_per_epoch=1)
  again.eval.update(clips="one", clip_stride=0, splits=("val",))
  trainer.train_and_evaluate(again, tmp_path)
  assert again.model.input_mean == recorded["input_mean"]


def _train_videos(builder):
  decode = preparation.decode_video(builder)
  videos = preparation.read_examples(builder, "train").map(lambda ex: decode(ex["video"]))
  yield from videos.as_numpy_iterator()


def _save_as_echonet_checkpoint(model, path: pathlib.Path) -> dict:
  """``model``'s weights as EchoNet-Dynamic saves its checkpoints (PyTorch layouts, the
  DataParallel prefix, inside a dict with the training progress)."""
  state = {}
  for name, (module, attribute) in model.torch_parameters().items():
    value = np.array(getattr(module, attribute)[...])
    if attribute == "kernel" and value.ndim >= 3:
      value = np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
    elif attribute == "kernel":
      value = value.T
    state[f"module.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
    if name.endswith("running_var"):
      state[f"module.{name[: -len('running_var')]}num_batches_tracked"] = torch.tensor(7)
  torch.save({"epoch": 12, "state_dict": state, "opt_dict": {}, "best_loss": 30.0}, path)
  return state


def _launch(*args, timeout=600):
  return run_command(
    [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "launch.py"), *args, PLAIN_OPS],
    timeout=timeout,
    env=child_env(1),
    cwd=ROOT,
  )


@pytest.mark.slow
def test_import_then_predict_without_any_dataset(tmp_path):
  model = models.create_model(_tiny())
  weights = tmp_path / "echonet_checkpoint.pt"
  state = _save_as_echonet_checkpoint(model, weights)
  cache = tmp_path / "no_data_here"
  workdir = tmp_path / "imported"
  base = [
    "--config=configs/r2plus1d.py",
    "--config.data.clip_frames=8",
    "--config.data.image_size=16",
    f"--config.data.cache_dir={cache}",
  ]
  done = _launch(
    "--mode=import", f"--workdir={workdir}", *base, f"--config.model.init_from={weights}"
  )
  assert done.returncode == 1 and "input normalisation is not given" in done.stderr
  given = ["--config.model.input_mean=31.5", "--config.model.input_std=(48.0, 49.0, 50.0)"]
  args = ["--mode=import", f"--workdir={workdir}", *base, *given]
  done = _launch(*args, f"--config.model.init_from={weights}")
  assert done.returncode == 0, done.stderr[-3000:]
  recorded = json.loads((workdir / config_base.RUN_CONFIG_FILE).read_text())["model"]
  assert recorded["input_mean"] == 31.5 and recorded["input_std"] == [48.0, 49.0, 50.0]
  (predictor,) = predictors_from_run(workdir)
  params, _ = predictor._variables  # the weights the run's predictions use
  conv = np.asarray(params["stages"][1][0]["conv1"]["spatial"]["kernel"])
  expected = state["module.layer2.0.conv1.0.0.weight"].numpy()
  np.testing.assert_array_equal(conv, np.transpose(expected, (2, 3, 4, 1, 0)))
  assert float(np.asarray(params["fc"]["bias"])[0]) == pytest.approx(55.6)
  again = _launch(*args, f"--config.model.init_from={weights}")
  assert again.returncode == 1 and "--overwrite" in again.stderr

  video = tmp_path / "echo.avi"
  writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 64))
  rng = np.random.default_rng(0)
  for _ in range(30):
    writer.write(cv2.cvtColor(rng.integers(0, 255, (64, 64), np.uint8), cv2.COLOR_GRAY2BGR))
  writer.release()
  output = tmp_path / "ef.csv"
  done = _launch(
    "--mode=predict", f"--workdir={workdir}", f"--videos={video}", f"--output={output}"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  row = output.read_text().splitlines()[1].split(",")
  assert row[0].endswith("echo.avi") and np.isfinite(float(row[1]))
  assert not cache.exists()  # no dataset was prepared or generated
