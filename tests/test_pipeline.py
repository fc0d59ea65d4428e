"""Tests of the TFDS builder, dataset preparation and the tf.data streams on a small real
synthetic dataset.

Everything runs the real code: `synthetic.generate` writes AVIs, the builder decodes them into
TFDS files (`preparation.prepare`), and the pipeline's batches are checked against frames taken
from the stored videos with plain numpy.
"""

import csv
import io
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lvef_jax.data import clips
from lvef_jax.data import echonet
from lvef_jax.data import pipeline
from lvef_jax.data import preparation
from lvef_jax.data import synthetic
from lvef_jax.data import tfds_builder
from lvef_jax.data import video_io
from tests.conftest import ROOT, communicate_all, prepare_in_record_files

NUM_VIDEOS = 24


def make_cfg(**overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      root="",
      cache_dir="",
      synthetic_num_videos=3,
      synthetic_seed=0,
      synthetic_min_frames=4,
      synthetic_max_frames=6,
      tfds_dir="",
      clip_frames=8,
      period=2,
      image_size=112,
      augment_pad=0,
      train_clip_start="random",
      on_bad_video="error",
      shuffle_buffer=64,
      cache_in_memory=False,
      num_parallel_calls=2,
      prefetch=1,
    )
  )
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  base = tmp_path_factory.mktemp("pipeline")
  # workers=1: a process pool costs more than it saves for 24 short videos.
  root = synthetic.generate(
    base / "echonet", NUM_VIDEOS, 3, min_frames=10, max_frames=40, workers=1
  )
  cfg = make_cfg(root=str(root), cache_dir=str(base / "cache"))
  builder = preparation.prepare(cfg)
  stored = {
    split: {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
    for split in clips.SPLITS
  }
  records = echonet.load_dataset_index(root)
  efs = [r.ef for r in records]
  assert len(set(np.float32(efs))) == len(efs), "EF identifies videos in these tests"
  return dict(root=root, base=base, cfg=cfg, builder=builder, stored=stored, records=records)


def all_batches(iterator):
  return list(iterator)


def by_ef(stored_split):
  return {np.float32(ex["ef"]).item(): ex for ex in stored_split.values()}


def test_clip_indices_and_max_start():
  np.testing.assert_array_equal(clips.clip_indices(10, 2, 5, 2), [2, 4, 6, 8, -1])
  np.testing.assert_array_equal(clips.clip_indices(3, 0, 4, 1), [0, 1, 2, -1])
  assert clips.max_clip_start(10, 5, 2) == 1  # Start 1 uses frames 1..9.
  assert clips.max_clip_start(9, 5, 2) == 0
  assert clips.max_clip_start(3, 5, 2) == 0  # Too short: start 0, padded.
  frames = np.arange(1, 13, dtype=np.uint8).reshape(3, 2, 2)
  clip = clips.take_clip(frames, 1, 3, 1)  # frames 1 and 2, then one zero frame
  assert clip.shape == (3, 2, 2, 1)
  np.testing.assert_array_equal(clip[:2, ..., 0], frames[1:])
  assert not clip[2].any() and frames.all()


def test_builder_round_trips_videos_and_labels(data):
  records = {r.file_name: r for r in data["records"]}
  seen = []
  for split, examples in data["stored"].items():
    assert sorted(examples) == sorted(r.file_name for r in records.values() if r.split == split)
    assert preparation.num_examples(data["builder"], split) == len(examples)
    for name, ex in examples.items():
      r = records[name]
      video = echonet.load_video(r.video_path)
      assert ex["video"].dtype == np.uint8
      np.testing.assert_array_equal(ex["video"], video)
      for key in ("ef", "esv", "edv", "fps"):
        assert ex[key] == np.float32(getattr(r, key)), key
      assert ex["num_frames"] == r.num_frames == len(video)
      assert (ex["ed_frame"], ex["es_frame"]) == (r.ed_frame, r.es_frame)
      seen.append(name)
  assert len(seen) == NUM_VIDEOS


@pytest.mark.parametrize("clip_frames,period", [(8, 2), (12, 4), (3, 1)])
def test_train_clips_are_cut_from_stored_videos(data, clip_frames, period):
  cfg = make_cfg(**{**data["cfg"], "clip_frames": clip_frames, "period": period})
  n = preparation.num_examples(data["builder"], "train")
  batch = 5
  batches = all_batches(pipeline.train_batches(data["builder"], cfg, batch_size=batch, seed=1))
  assert len(batches) == n // batch  # drop_remainder: only full batches
  videos = by_ef(data["stored"]["train"])
  used, padded = [], 0
  for b in batches:
    assert b["video"].shape == (batch, clip_frames, 112, 112, 1) and b["video"].dtype == np.uint8
    assert b["ef"].shape == (batch,) and b["ef"].dtype == np.float32
    for clip, ef in zip(b["video"], b["ef"]):
      video = videos[ef.item()]["video"]
      starts = range(clips.max_clip_start(len(video), clip_frames, period) + 1)
      # The clip must be frames start + period * k of its video, zeros past the end.
      assert any(
        np.array_equal(clip, clips.take_clip(video, s, clip_frames, period)) for s in starts
      )
      if len(video) < (clip_frames - 1) * period + 1:
        padded += 1
        last = (len(video) - 1) // period  # Last clip position still inside the video.
        assert not clip[last + 1 :].any()
      used.append(ef.item())
  assert len(set(used)) == len(used)  # Each example at most once per epoch.
  if clip_frames == 12:
    assert padded > 0  # (12 - 1) * 4 + 1 = 45 > max_frames: every video is padded here.


def test_augmentation_reproducible_and_one_offset_per_clip(data):
  cfg = make_cfg(**{**data["cfg"], "augment_pad": 4, "clip_frames": 4, "period": 3})

  def run(seed):
    return all_batches(pipeline.train_batches(data["builder"], cfg, batch_size=4, seed=seed))

  first, again, other = run(7), run(7), run(8)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["ef"], b["ef"])
  assert first[0]["video"].shape == (4, 4, 112, 112, 1)

  # Another seed re-draws start and crop for the same video, not only the order.
  def clips_by_ef(batches):
    return {ef.item(): c for b in batches for c, ef in zip(b["video"], b["ef"])}

  clips_7, clips_8 = clips_by_ef(first), clips_by_ef(other)
  assert any(not np.array_equal(clips_7[k], clips_8[k]) for k in clips_7.keys() & clips_8)
  # Each augmented clip is its un-augmented clip shifted by ONE offset in [-4, 4]^2 for all
  # frames, with zeros shifted in.
  videos = by_ef(data["stored"]["train"])
  for clip, ef in zip(first[0]["video"], first[0]["ef"]):
    video = videos[ef.item()]["video"]
    padded = [
      np.pad(clips.take_clip(video, s, 4, 3), ((0, 0), (4, 4), (4, 4), (0, 0)))
      for s in range(clips.max_clip_start(len(video), 4, 3) + 1)
    ]
    assert any(
      np.array_equal(clip, p[:, i : i + 112, j : j + 112])
      for p in padded
      for i in range(9)
      for j in range(9)
    )


def check_eval(data, split, batches, batch_size, num_batches, clip_frames, period):
  """Shapes, padding and clip content of one shard's eval batches; returns masked-in names."""
  assert len(batches) == num_batches
  names = []
  stored = data["stored"][split]
  for b in batches:
    assert b["video"].shape == (batch_size, clip_frames, 112, 112, 1)
    assert b["video"].dtype == np.uint8 and b["mask"].dtype == np.float32
    assert b["ef"].shape == b["mask"].shape == b["file_name"].shape == (batch_size,)
    for clip, ef, mask, name in zip(b["video"], b["ef"], b["mask"], b["file_name"]):
      if mask == 0:
        assert name == "" and ef == 0 and not clip.any()
        continue
      assert mask == 1
      ex = stored[name]
      assert ef == ex["ef"]
      np.testing.assert_array_equal(clip, clips.take_clip(ex["video"], 0, clip_frames, period))
      names.append(name)
  return names


def eval_batches(builder, split, cfg, **kwargs):
  """`pipeline.clip_batches` of one clip per video, with each clip's file name and EF."""
  listing = preparation.split_listing(builder, split)
  for batch in pipeline.clip_batches(builder, split, cfg, **kwargs):
    index = np.maximum(batch["video_index"], 0)
    real = batch["video_index"] >= 0
    batch["file_name"] = np.where(real, listing["file_name"][index], "")
    batch["ef"] = np.where(real, listing["ef"][index], 0.0).astype(np.float32)
    yield batch


def test_all_clips_cover_every_start_of_every_video(data):
  cfg = make_cfg(**{**data["cfg"], "clip_frames": 4, "period": 2})
  listing = preparation.split_listing(data["builder"], "val")
  seen = {}
  for batch in pipeline.clip_batches(
    data["builder"], "val", cfg, batch_size=5, clips="all", stride=3
  ):
    assert batch["video"].shape == (5, 4, 112, 112, 1)
    for clip, index, mask in zip(batch["video"], batch["video_index"], batch["mask"]):
      if mask:
        seen.setdefault(int(index), []).append(clip)
      else:
        assert index == -1 and not clip.any()
  assert sorted(seen) == list(range(len(listing["ef"])))
  for index, video_clips in seen.items():
    name = listing["file_name"][index]
    frames = data["stored"]["val"][name]["video"]
    starts = clips.clip_starts(len(frames), 4, 2, 3)
    assert len(video_clips) == len(starts) == len(range(0, max(len(frames) - 7, 0) + 1, 3))
    for clip, start in zip(video_clips, starts):
      np.testing.assert_array_equal(clip, clips.take_clip(frames, start, 4, 2))


@pytest.mark.parametrize("divides", [True, False])
def test_eval_deterministic_and_exactly_once(data, divides):
  split = "train"
  n = preparation.num_examples(data["builder"], split)
  batch = next(b for b in range(3, n + 1) if (n % b == 0) == divides)
  cfg = data["cfg"]
  first = all_batches(eval_batches(data["builder"], split, cfg, batch_size=batch))
  second = all_batches(eval_batches(data["builder"], split, cfg, batch_size=batch))
  for a, b in zip(first, second, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  names = check_eval(data, split, first, batch, math.ceil(n / batch), 8, 2)
  assert sum(b["mask"].sum() for b in first) == n
  assert sorted(names) == sorted(data["stored"][split])  # Every example exactly once.


@pytest.mark.parametrize("split,batch", [("val", 2), ("train", 4), ("test", 5)])
def test_eval_two_shards_cover_split_once_in_step(data, split, batch):
  n = preparation.num_examples(data["builder"], split)
  cfg = make_cfg(**{**data["cfg"], "clip_frames": 5, "period": 3})
  num_batches = math.ceil(math.ceil(n / 2) / batch)
  names = []
  for shard in range(2):
    batches = all_batches(
      eval_batches(data["builder"], split, cfg, batch_size=batch, shard_index=shard, num_shards=2)
    )
    names += check_eval(data, split, batches, batch, num_batches, 5, 3)
  assert sorted(names) == sorted(data["stored"][split])


def test_train_shards_are_the_rows_of_the_single_process_batches(data):
  """Two processes with batch 3 each see exactly the global batches of one process with 6."""
  whole = all_batches(pipeline.train_batches(data["builder"], data["cfg"], batch_size=6, seed=5))
  shards = [
    all_batches(
      pipeline.train_batches(
        data["builder"], data["cfg"], batch_size=3, seed=5, shard_index=shard, num_shards=2
      )
    )
    for shard in range(2)
  ]
  n = preparation.num_examples(data["builder"], "train")
  assert len(whole) == len(shards[0]) == len(shards[1]) == n // 6
  for k, batch in enumerate(whole):
    for key in ("video", "ef"):
      joined = np.concatenate([shards[0][k][key], shards[1][k][key]])
      np.testing.assert_array_equal(joined, batch[key])


def test_resize_to_32(data):
  cfg = make_cfg(**{**data["cfg"], "image_size": 32, "augment_pad": 2})
  train = next(pipeline.train_batches(data["builder"], cfg, batch_size=4, seed=0))
  assert train["video"].shape == (4, 8, 32, 32, 1) and train["video"].dtype == np.uint8
  batch = next(eval_batches(data["builder"], "val", cfg, batch_size=2))
  assert batch["video"].shape == (2, 8, 32, 32, 1)
  for clip, name in zip(batch["video"], batch["file_name"]):
    full = clips.take_clip(data["stored"]["val"][name]["video"], 0, 8, 2).astype(np.float32)
    # Resizing keeps the picture: mean brightness and a coarse 4x4 layout agree.
    assert abs(clip.mean() - full.mean()) < 2.0

    def coarse(x, s):
      return x[..., 0].reshape(8, 4, s // 4, 4, s // 4).mean(axis=(2, 4))

    assert np.abs(coarse(clip.astype(np.float32), 32) - coarse(full, 112)).max() < 12.0


def files_under(path):
  return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def listed_efs(builder):
  """EF by file name, as `preparation.split_listing` lists every split."""
  listings = [preparation.split_listing(builder, split) for split in clips.SPLITS]
  return {name: ef for listing in listings for name, ef in zip(listing["file_name"], listing["ef"])}


def test_prepare_bad_root_leaves_nothing_and_then_works(data, tmp_path, capfd):
  root = tmp_path / "copy"
  shutil.copytree(data["root"], root)
  file_list = root / "FileList.csv"
  good = file_list.read_text()
  lines = good.splitlines()
  lines[1] = lines[1].rsplit(",", 1)[0] + ",HOLDOUT"
  file_list.write_text("\n".join(lines) + "\n")
  cfg = make_cfg(**{**data["cfg"], "root": str(root), "cache_dir": str(tmp_path / "cache")})
  with pytest.raises(echonet.EchoNetFormatError, match="HOLDOUT"):
    preparation.prepare(cfg)
  # Nothing prepared is left; the (empty) lock file of the cache folder may stay.
  assert [p for p in files_under(tmp_path / "cache") if p.name != ".prepare.lock"] == []

  file_list.write_text(good)
  capfd.readouterr()
  builder = preparation.prepare(cfg)
  # TFDS's own "Downloading and preparing dataset Unknown size ..." and "... downloaded and
  # prepared" go straight to stdout; the project logs what it does instead.
  printed = capfd.readouterr().out
  assert "Downloading" not in printed and "downloaded" not in printed
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS
  assert len(listed_efs(builder)) == NUM_VIDEOS
  info = pathlib.Path(builder.data_dir) / "dataset_info.json"
  mtime = info.stat().st_mtime_ns
  assert preparation.prepare(cfg).data_dir == builder.data_dir  # Reused, not rewritten.
  assert info.stat().st_mtime_ns == mtime

  # Once prepared, the folder may go away: training reads only the prepared data.
  moved = tmp_path / "moved"
  root.rename(moved)
  assert preparation.prepare(cfg).data_dir == builder.data_dir
  moved.rename(root)

  # Editing the folder afterwards must not leave stale prepared data in use.
  name, ef = lines[1].split(",")[:2]
  file_list.write_text(good.replace(f"{name},{ef},", f"{name},12.5,", 1))
  rebuilt = preparation.prepare(cfg)
  efs = {
    ex["file_name"].decode(): ex["ef"]
    for s in clips.SPLITS
    for ex in tfds.as_numpy(rebuilt.as_dataset(split=s))
  }
  assert efs[name] == np.float32(12.5)
  assert listed_efs(rebuilt)[name] == 12.5  # the listing of the earlier preparation is gone


def test_prepare_missing_root_raises_format_error(tmp_path):
  cfg = make_cfg(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(echonet.EchoNetFormatError):
    preparation.prepare(cfg)
  # Nothing prepared is left; the (empty) lock file of the cache folder may stay.
  assert [p for p in files_under(tmp_path / "cache") if p.name != ".prepare.lock"] == []


def test_builder_alone_validates_the_folder_itself(tmp_path, capfd):
  """Without preparation.prepare (and so without an index), the builder validates the folder."""

  def prepare(root):
    builder = tfds_builder.EchonetDynamic(data_dir=tmp_path / "tfds")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(root), try_download_gcs=False
      )
    )
    return builder

  with pytest.raises(echonet.EchoNetFormatError, match="does not exist"):
    prepare(tmp_path / "nowhere")
  root = synthetic.generate(tmp_path / "echonet", 3, 0, min_frames=4, max_frames=6, workers=1)
  (root / "Videos" / sorted(os.listdir(root / "Videos"))[0]).write_bytes(b"not a video")
  with pytest.raises(echonet.EchoNetFormatError, match="cannot be opened by OpenCV"):
    prepare(root)
  assert "Downloading" not in capfd.readouterr().out


def test_resolve_root_reuses_and_regenerates(tmp_path):
  cfg = make_cfg(cache_dir=str(tmp_path))
  root = preparation.resolve_root(cfg)
  assert root == tmp_path / "synthetic-n3-s0-f4-6"
  assert len(echonet.load_dataset_index(root)) == 3
  marker = root / ".synthetic.json"
  mtime = marker.stat().st_mtime_ns
  assert preparation.resolve_root(cfg) == root
  assert marker.stat().st_mtime_ns == mtime  # Reused, not regenerated.

  other = preparation.resolve_root(make_cfg(cache_dir=str(tmp_path), synthetic_seed=1))
  assert other == tmp_path / "synthetic-n3-s1-f4-6" and (other / ".synthetic.json").exists()

  # A folder whose marker records other parameters is regenerated.
  params = json.loads(marker.read_text())
  marker.write_text(json.dumps({**params, "seed": 99}))
  assert preparation.resolve_root(cfg) == root
  assert json.loads(marker.read_text())["seed"] == 0
  assert sorted(os.listdir(tmp_path)) == ["synthetic-n3-s0-f4-6", "synthetic-n3-s1-f4-6"]


def test_tfds_dir_depends_on_root_path(tmp_path):
  a, b = tmp_path / "x" / "EchoNet", tmp_path / "y" / "EchoNet"
  dirs = {
    preparation._tfds_dir(
      preparation.DataSettings.from_cfg(make_cfg(root=str(r), cache_dir="c")), r
    )
    for r in (a, b)
  }
  assert len(dirs) == 2 and all(d.name.startswith("EchoNet-") for d in dirs)


def test_cache_in_memory_gives_same_batches(data):
  cfg = make_cfg(**{**data["cfg"], "cache_in_memory": True, "augment_pad": 3})
  plain = make_cfg(**{**data["cfg"], "augment_pad": 3})
  for _ in range(2):  # The second pass reads from the memory cache.
    cached = all_batches(eval_batches(data["builder"], "val", cfg, batch_size=2))
    reference = all_batches(eval_batches(data["builder"], "val", plain, batch_size=2))
    for a, b in zip(cached, reference, strict=True):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    runs = [
      all_batches(pipeline.train_batches(data["builder"], cfg, batch_size=4, seed=3))
      for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
      np.testing.assert_array_equal(a["video"], b["video"])


def _copy_of(data, tmp_path, **overrides):
  """A copy of the module's dataset folder and a config that prepares it into tmp_path."""
  root = tmp_path / "copy"
  shutil.copytree(data["root"], root)
  cfg = make_cfg(**{**data["cfg"], "root": str(root), "cache_dir": str(tmp_path / "cache")})
  cfg.update(overrides)
  return root, cfg


def _longest_train_video(data, root) -> pathlib.Path:
  record = max((r for r in data["records"] if r.split == "train"), key=lambda r: r.num_frames)
  return root / "Videos" / f"{record.file_name}.avi"


def _zero_bytes(path: pathlib.Path, low: float, high: float) -> None:
  """Overwrites the file's bytes between the two fractions of its length with zeros."""
  content = bytearray(path.read_bytes())
  a, b = int(len(content) * low), int(len(content) * high)
  content[a:b] = bytes(b - a)
  path.write_bytes(bytes(content))


def _prepared_leftovers(cache: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in files_under(cache) if p.name != ".prepare.lock"]


def test_a_video_cut_short_is_refused_before_anything_is_prepared(data, tmp_path):
  root, cfg = _copy_of(data, tmp_path)
  video = _longest_train_video(data, root)
  video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # an interrupted copy
  with pytest.raises(echonet.EchoNetFormatError, match=f"{video.name} is truncated"):
    preparation.prepare(cfg)
  assert _prepared_leftovers(tmp_path / "cache") == []

  cfg.on_bad_video = "skip"
  builder = preparation.prepare(cfg)
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS - 1
  skipped = preparation.skipped_videos_csv(builder).splitlines()
  assert len(skipped) == 2 and skipped[1].startswith(f"{video.stem},is truncated")


def test_a_video_damaged_in_the_middle_stops_preparation_naming_it(data, tmp_path):
  root, cfg = _copy_of(data, tmp_path)
  video = _longest_train_video(data, root)
  _zero_bytes(video, 0.45, 0.55)
  # Both ends still decode, so validation passes it: only the full decode finds the damage.
  assert video_io.probe_video(video) is None
  with pytest.raises(echonet.EchoNetFormatError) as error:
    preparation.prepare(cfg)
  assert "1 videos of split train cannot be decoded in full" in str(error.value)
  assert f"{video}: only" in str(error.value) and "truncated or corrupt" in str(error.value)
  assert _prepared_leftovers(tmp_path / "cache") == []

  cfg.on_bad_video = "skip"
  builder = preparation.prepare(cfg)
  assert (
    preparation.num_examples(builder, "train")
    == sum(r.split == "train" for r in data["records"]) - 1
  )
  rows = list(csv.DictReader(io.StringIO(preparation.skipped_videos_csv(builder))))
  assert [r["FileName"] for r in rows] == [video.stem]
  assert "frames listed by the container could be decoded" in rows[0]["reason"]


def test_file_list_metadata_that_disagrees_with_the_videos_is_one_warning_per_kind(
  data, tmp_path, caplog
):
  root, cfg = _copy_of(data, tmp_path)
  lines = (root / "FileList.csv").read_text().splitlines()
  header = lines[0].split(",")
  train_rows = [i for i, line in enumerate(lines) if line.endswith(",TRAIN")]
  for i in train_rows[:3]:  # three stale NumberOfFrames, one stale FrameHeight
    fields = lines[i].split(",")
    fields[header.index("NumberOfFrames")] = "999"
    if i == train_rows[0]:
      fields[header.index("FrameHeight")] = "600"
    lines[i] = ",".join(fields)
  (root / "FileList.csv").write_text("\n".join(lines) + "\n")
  caplog.set_level("WARNING")
  builder = preparation.prepare(cfg)
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS
  warnings = [
    r.getMessage() for r in caplog.records if "disagrees with the decoded" in r.getMessage()
  ]
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith("3 videos of split train: FileList.csv's NumberOfFrames")
  assert "999 listed" in warnings[0]
  assert warnings[1].startswith("1 videos of split train: FileList.csv's FrameHeight/FrameWidth")


_SLOW_PREPARE = """
import json, sys, time
import ml_collections
from absl import logging
from lvef_jax.data import preparation, tfds_builder
logging.set_verbosity(logging.INFO)
decode = tfds_builder._decode
def slow(record):  # a slow disk: the kill surely lands while TFDS is writing
  time.sleep(0.5)
  return decode(record)
tfds_builder._decode = slow
preparation.prepare(ml_collections.ConfigDict(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_preparation_killed_midway_is_cleaned_up_and_redone(data, tmp_path, caplog):
  root, cfg = _copy_of(data, tmp_path)
  script = tmp_path / "slow_prepare.py"
  script.write_text(_SLOW_PREPARE)
  cache = tmp_path / "cache"
  process = subprocess.Popen(
    [sys.executable, str(script), json.dumps(cfg.to_dict())],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 120
  while not list(cache.glob("tfds/*/echonet_dynamic/incomplete.*")) and time.time() < deadline:
    assert process.poll() is None, "the preparation ended before it could be killed"
    time.sleep(0.05)
  time.sleep(1.0)  # a few videos into the writing
  process.send_signal(signal.SIGKILL)
  process.wait()
  (data_dir,) = cache.glob("tfds/*")
  assert (data_dir / ".preparing").exists()
  assert list(data_dir.glob("echonet_dynamic/incomplete.*"))  # what TFDS could not clean up

  caplog.set_level("WARNING")
  builder = preparation.prepare(cfg)
  assert any("was interrupted" in r.getMessage() for r in caplog.records)
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS
  assert not list(data_dir.glob("echonet_dynamic/incomplete.*"))
  assert not (data_dir / ".preparing").exists()
  assert (data_dir / "source.json").is_file()

  # Killed after TFDS's final rename but before the source record: prepared again, not trusted.
  (data_dir / ".preparing").write_text("pid 1\n")
  info = pathlib.Path(builder.data_dir) / "dataset_info.json"
  before = info.stat().st_mtime_ns
  builder = preparation.prepare(cfg)
  assert info.stat().st_mtime_ns != before
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS


@pytest.mark.slow
def test_processes_preparing_at_once_prepare_once_and_all_use_it(data, tmp_path):
  _, cfg = _copy_of(data, tmp_path)
  script = tmp_path / "slow_prepare.py"
  script.write_text(_SLOW_PREPARE)
  processes = [
    subprocess.Popen(
      [sys.executable, str(script), json.dumps(cfg.to_dict())],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  logs = [err for _, err in communicate_all(processes, timeout=300)]
  assert [p.returncode for p in processes] == [0, 0], [log[-2000:] for log in logs]
  assert sum("preparing the dataset copy" in log for log in logs) == 1
  assert sum("Reusing prepared data" in log for log in logs) == 1
  builder = preparation.prepare(cfg)
  assert sum(preparation.num_examples(builder, s) for s in clips.SPLITS) == NUM_VIDEOS


def test_a_process_share_of_a_split_in_several_files_is_that_slice_of_the_split(tmp_path):
  """Each process scores its slice of a split; the slices must be the split's order, also when
  the split spans several record files (before, TFDS interleaved the files 16 examples at a
  time, so a two-process run scored other videos of the train split under their indices)."""
  root = synthetic.generate(tmp_path / "echonet", 120, 4, min_frames=8, max_frames=12, workers=1)
  cfg = make_cfg(root=str(root), cache_dir=str(tmp_path / "cache"), image_size=16)
  builder = prepare_in_record_files(cfg, 3)
  stored = [ex["file_name"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train"))]
  listing = preparation.split_listing(builder, "train")
  names = lambda batches: [  # noqa: E731
    listing["file_name"][i] for b in batches for i, m in zip(b["video_index"], b["mask"]) if m
  ]
  whole = list(pipeline.clip_batches(builder, "train", cfg, batch_size=4))
  shards = [
    list(pipeline.clip_batches(builder, "train", cfg, batch_size=2, shard_index=s, num_shards=2))
    for s in range(2)
  ]
  clips_of = lambda batches: {  # noqa: E731
    int(i): v.tobytes()
    for b in batches
    for v, i, m in zip(b["video"], b["video_index"], b["mask"])
    if m
  }
  assert sorted(names(whole)) == sorted(stored)
  assert clips_of(shards[0]) | clips_of(shards[1]) == clips_of(whole)
