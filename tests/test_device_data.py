"""The device-resident train split: the same clips as the tf.data path, and the same run."""

import json
import pathlib

import jax
import numpy as np
import pytest

from lvef_jax import sharding
from lvef_jax.data import device_data, pipeline, preparation
from lvef_jax.errors import ConfigError
from lvef_jax.training import trainer
from tests.conftest import load_config, shrink


@pytest.fixture(scope="module")
def prepared(data_cache):
  config = shrink(load_config("quickstart"), data_cache)
  config.data.cache_in_memory = True
  builder = preparation.prepare(config.data)
  mesh = sharding.make_mesh()
  return config, builder, mesh


@pytest.mark.parametrize(
  "settings",
  [
    dict(),  # random starts, pad-and-crop, frames resized 112 -> 16
    dict(train_clip_start="first", augment_pad=0, period=1, clip_frames=12),
    dict(image_size=112, augment_pad=5),  # stored size: no resize
  ],
)
def test_the_device_path_cuts_the_clips_of_the_tf_data_path(prepared, settings):
  config, builder, mesh = prepared
  data = config.data.copy_and_resolve_references()
  data.update(settings)
  videos = device_data.DeviceVideos.put(pipeline.train_videos(builder, data), mesh)
  sampler = device_data.make_clip_sampler(
    mesh, clip_frames=data.clip_frames, period=data.period, pad=data.augment_pad
  )
  for shard_index, num_shards in ((0, 1), (1, 2)):
    kwargs = dict(batch_size=8, seed=11, shard_index=shard_index, num_shards=num_shards)
    expected = list(pipeline.train_batches(builder, data, **kwargs))
    plans = list(pipeline.train_plans(builder, data, **kwargs))
    assert len(plans) == len(expected) > 0
    for plan, batch in zip(plans, expected):
      got = jax.device_get(sampler(videos, plan))
      np.testing.assert_array_equal(got["video"], batch["video"])
      np.testing.assert_array_equal(got["ef"], batch["ef"])


def test_clips_past_a_video_end_are_zero_frames(prepared):
  config, builder, mesh = prepared
  videos = device_data.DeviceVideos.put(pipeline.train_videos(builder, config.data), mesh)
  length = int(videos.length[0])
  clip = device_data.take_clips(
    videos,
    np.array([0]),
    np.array([length - 2]),
    np.zeros((1, 2), np.int32),
    clip_frames=4,
    period=1,
    pad=0,
  )
  frames = np.asarray(videos.frames)
  np.testing.assert_array_equal(clip[0, :2, ..., 0], frames[length - 2 : length])
  assert not np.asarray(clip[0, 2:]).any()


def test_device_resident_modes():
  assert device_data.use_device_videos("off", 10)[0] is False
  assert device_data.use_device_videos("on", 10)[0] is True
  on, why = device_data.use_device_videos("auto", 10)
  assert on is False and "CPU" in why  # these tests run on (fake) CPU devices
  with pytest.raises(ConfigError, match="device_resident must be one of"):
    device_data.use_device_videos("yes", 10)


@pytest.mark.slow
def test_a_device_resident_run_ends_as_the_tf_data_run(prepared, tmp_path, caplog):
  config, _, _ = prepared
  config = shrink(load_config("quickstart"), pathlib.Path(config.data.cache_dir))
  config.data.cache_in_memory = True
  config.train.num_epochs = 1
  caplog.set_level("INFO")
  runs = {}
  for mode in ("off", "on"):
    config.data.device_resident = mode
    runs[mode] = trainer.train_and_evaluate(config, tmp_path / mode)
  assert runs["on"] == runs["off"]
  assert "training clips cut on the devices" in caplog.text
  compiled = [r.getMessage() for r in caplog.records if "train step was compiled" in r.getMessage()]
  assert compiled == ["the train step was compiled once in this process"] * 2
  history = [json.loads((tmp_path / m / "metrics.jsonl").read_text()) for m in ("off", "on")]
  assert history[0]["train_loss"] == history[1]["train_loss"]
