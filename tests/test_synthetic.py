"""Tests for lvef_jax.data.synthetic: layout, determinism, labels, tracings and the pixels."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from lvef_jax.data import synthetic
from lvef_jax.errors import ConfigError

FILELIST_HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
TRACINGS_HEADER = "FileName,X1,Y1,X2,Y2,Frame"
NUM_VIDEOS = 20
PARAMS = dict(num_videos=NUM_VIDEOS, seed=7, min_frames=12, max_frames=40)


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _read_video(path):
  capture = cv2.VideoCapture(str(path))
  # The official echonet loader allocates CAP_PROP_FRAME_COUNT frames and fails on a short read.
  count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    frames.append(frame)
  fps = capture.get(cv2.CAP_PROP_FPS)
  capture.release()
  assert len(frames) == count
  return np.stack(frames), fps


def _tracings(root):
  """{FileName: [(frame, rows as (21, 4) float array)] in file order}."""
  out = {}
  for row in _read_csv(root / "VolumeTracings.csv"):
    frames = out.setdefault(row["FileName"][: -len(".avi")], [])
    if not frames or frames[-1][0] != int(row["Frame"]):
      frames.append((int(row["Frame"]), []))
    frames[-1][1].append([float(row[k]) for k in ("X1", "Y1", "X2", "Y2")])
  return {name: [(frame, np.array(rows)) for frame, rows in frames] for name, frames in out.items()}


def _disc_volume(rows):
  # Method of discs, as EchoNet computes it: long axis length / 20 per disc, chord = diameter.
  length = np.hypot(rows[0, 2] - rows[0, 0], rows[0, 3] - rows[0, 1])
  chords = np.hypot(rows[1:, 2] - rows[1:, 0], rows[1:, 3] - rows[1:, 1])
  return np.pi / 4 * np.sum(chords**2) * length / len(chords)


def _polygon_mask(rows, grow=0):
  # The official echonet loader's outline: X1 side down, X2 side back up (long axis excluded).
  x = np.concatenate([rows[1:, 0], rows[:0:-1, 2]])
  y = np.concatenate([rows[1:, 1], rows[:0:-1, 3]])
  mask = np.zeros((112, 112), np.uint8)
  cv2.fillPoly(mask, [np.round(np.stack([x, y], 1) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
  if grow:
    mask = cv2.dilate(mask, np.ones((2 * grow + 1,) * 2, np.uint8))
  return mask.astype(bool)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "a", workers=2, **PARAMS)


@pytest.fixture(scope="module")
def filelist(dataset):
  return _read_csv(dataset / "FileList.csv")


def test_layout_and_headers(dataset, filelist):
  assert (dataset / "FileList.csv").read_text().splitlines()[0] == FILELIST_HEADER
  assert (dataset / "VolumeTracings.csv").read_text().splitlines()[0] == TRACINGS_HEADER
  assert len(filelist) == NUM_VIDEOS
  names = [row["FileName"] for row in filelist]
  assert len(set(names)) == NUM_VIDEOS
  for name in names:
    assert len(name) == 18 and name.startswith("0X") and int(name[2:], 16) >= 0
    assert name[2:] == name[2:].upper()
  splits = [row["Split"] for row in filelist]
  assert set(splits) == {"TRAIN", "VAL", "TEST"}
  assert splits.count("TRAIN") > max(splits.count("VAL"), splits.count("TEST"))
  assert sorted(p.name for p in (dataset / "Videos").iterdir()) == sorted(n + ".avi" for n in names)
  marker = json.loads((dataset / ".synthetic.json").read_text())
  assert {k: marker[k] for k in PARAMS} == PARAMS and marker["generator"] == synthetic.VERSION
  assert not list(dataset.parent.glob("a.tmp-*"))


def test_videos_read_back(dataset, filelist):
  for row in filelist:
    frames, fps = _read_video(dataset / "Videos" / (row["FileName"] + ".avi"))
    assert frames.shape == (int(row["NumberOfFrames"]), 112, 112, 3)
    assert int(row["FrameHeight"]) == int(row["FrameWidth"]) == 112
    assert float(row["FPS"]) == int(row["FPS"]) and abs(fps - int(row["FPS"])) < 1e-3
    assert 30 <= int(row["FPS"]) <= 60
    assert PARAMS["min_frames"] <= int(row["NumberOfFrames"]) <= PARAMS["max_frames"]
    # Grey: the three channels agree up to JPEG rounding.
    assert np.abs(frames.astype(int) - frames[..., :1]).max() <= 2
    assert frames.mean() > 10 and frames[:, :3, :3].max() < 5  # outside the sector is black


def test_labels_consistent(filelist):
  ef = np.array([float(row["EF"]) for row in filelist])
  esv = np.array([float(row["ESV"]) for row in filelist])
  edv = np.array([float(row["EDV"]) for row in filelist])
  np.testing.assert_allclose(esv, edv * (1 - ef / 100), atol=2e-5)
  assert ef.min() >= 5 and ef.max() <= 95
  assert edv.min() >= 20 and edv.max() <= 400 and np.all(esv < edv)


def test_label_distribution_resembles_echonet():
  # Sampling only (no rendering): cheap enough to look at many videos.
  draws = [synthetic._sample_video(np.random.default_rng(i), 20, 160) for i in range(3000)]
  ef = np.array([d["ef"] for d in draws])
  edv = np.array([d["edv"] for d in draws])
  frames = np.array([d["frames"] for d in draws])
  assert abs(ef.mean() - 55.7) < 1.5 and abs(ef.std() - 12.4) < 1.5
  assert ef.min() < 12 and 0.05 < np.mean(ef < 40) < 0.2
  assert 85 < edv.mean() < 110
  assert np.corrcoef(ef, edv)[0, 1] < -0.1  # dilated hearts pump less
  assert 0.03 < np.mean(frames < 28) < 0.08  # a few videos shorter than a clip
  assert 0.01 < np.mean([not d["traced"] for d in draws]) < 0.06


def test_splits_proportional_and_non_empty():
  for n in (3, 4, 10, 1000):
    splits = synthetic.assign_splits(n, seed=0)
    assert len(splits) == n and set(splits) == {"TRAIN", "VAL", "TEST"}
  splits = synthetic.assign_splits(10030, seed=0)
  assert [splits.count(s) for s in ("TRAIN", "VAL", "TEST")] == [7465, 1288, 1277]


def test_tracings_match_labels(dataset, filelist):
  tracings = _tracings(dataset)
  assert len(tracings) >= NUM_VIDEOS - 3
  for row in filelist:
    if row["FileName"] not in tracings:
      continue
    (es_frame, es), (ed_frame, ed) = tracings[row["FileName"]]  # ES listed first
    assert es.shape == ed.shape == (21, 4)
    assert 0 <= min(es_frame, ed_frame) and max(es_frame, ed_frame) < int(row["NumberOfFrames"])
    assert _disc_volume(ed) > _disc_volume(es)
    ef = 100 * (1 - _disc_volume(es) / _disc_volume(ed))
    assert abs(ef - float(row["EF"])) < 3, (row["FileName"], ef, row["EF"])
    for rows in (es, ed):
      axis = rows[0, 2:] - rows[0, :2]
      chords = rows[1:, 2:] - rows[1:, :2]
      cosines = chords @ axis / np.linalg.norm(axis) / np.linalg.norm(chords, axis=1)
      assert np.all(np.abs(cosines) < 1e-3)  # chords perpendicular to the long axis
      assert axis[1] > 0  # apex at the top, base below


def test_pixels_show_the_ejection_fraction(dataset, filelist):
  tracings = _tracings(dataset)
  label, measured = [], []
  for row in filelist:
    if row["FileName"] not in tracings:
      continue
    (es_frame, es), (ed_frame, ed) = tracings[row["FileName"]]
    frames, _ = _read_video(dataset / "Videos" / (row["FileName"] + ".avi"))
    grey = np.stack([cv2.GaussianBlur(f[..., 0].astype(np.float32), (0, 0), 1.5) for f in frames])
    es_mask, ed_mask = _polygon_mask(es), _polygon_mask(ed)
    blood = np.median(grey[es_frame][cv2.erode(es_mask.astype(np.uint8), np.ones((5, 5))) > 0])
    ring = _polygon_mask(ed, grow=6) & ~_polygon_mask(ed, grow=2)
    tissue = np.median(grey[ed_frame][ring])
    assert tissue > 2 * blood, (row["FileName"], blood, tissue)
    dark = grey < (blood + tissue) / 2
    # The traced outline is the dark cavity: dark inside, mostly bright wall just outside (the
    # ring also crosses the mitral plane into the dark left atrium).
    inner_ed, inner_es = (
      cv2.erode(m.astype(np.uint8), np.ones((5, 5))) > 0 for m in (ed_mask, es_mask)
    )
    assert dark[ed_frame][inner_ed].mean() > 0.95 and dark[es_frame][inner_es].mean() > 0.95
    assert dark[ed_frame][ring].mean() < 0.5
    # Dark area inside the ED outline, above the ES mitral plane (the left atrium lies below the
    # moving base), in every frame: the LV cavity alone.
    apex, axis = ed[0, :2], (ed[0, 2:] - ed[0, :2]) / np.linalg.norm(ed[0, 2:] - ed[0, :2])
    yy, xx = np.mgrid[0:112, 0:112]
    along = (xx - apex[0]) * axis[0] + (yy - apex[1]) * axis[1]
    region = _polygon_mask(ed, grow=1) & (along <= np.hypot(*(es[0, 2:] - es[0, :2])))
    areas = (dark & region).sum(axis=(1, 2)).astype(float)
    assert areas[ed_frame] >= areas.max() - 0.03 * areas[ed_frame]
    assert areas[es_frame] <= areas.min() + 0.03 * areas[ed_frame]
    label.append(float(row["EF"]))
    measured.append(100 * (1 - (areas[es_frame] / areas[ed_frame]) ** 1.5))
  assert np.corrcoef(label, measured)[0, 1] > 0.8


def test_deterministic_across_runs_and_workers(tmp_path, dataset):
  again = synthetic.generate(tmp_path / "b", workers=1, **PARAMS)
  for name in ("FileList.csv", "VolumeTracings.csv", ".synthetic.json"):
    assert (again / name).read_bytes() == (dataset / name).read_bytes()
  for video in sorted((dataset / "Videos").iterdir()):
    np.testing.assert_array_equal(
      _read_video(again / "Videos" / video.name)[0], _read_video(video)[0]
    )
  other = synthetic.generate(tmp_path / "c", workers=1, **{**PARAMS, "seed": 8})
  assert (other / "FileList.csv").read_bytes() != (dataset / "FileList.csv").read_bytes()


def test_video_depends_only_on_seed_and_index(tmp_path, filelist):
  small = synthetic.generate(tmp_path / "d", workers=1, **{**PARAMS, "num_videos": 3})
  rows = _read_csv(small / "FileList.csv")
  assert [{k: v for k, v in row.items() if k != "Split"} for row in rows] == [
    {k: v for k, v in row.items() if k != "Split"} for row in filelist[:3]
  ]


def test_short_videos(tmp_path):
  root = synthetic.generate(tmp_path / "s", 8, seed=1, min_frames=10, max_frames=27, workers=1)
  tracings = _tracings(root)
  for row in _read_csv(root / "FileList.csv"):
    frames, _ = _read_video(root / "Videos" / (row["FileName"] + ".avi"))
    assert 10 <= len(frames) == int(row["NumberOfFrames"]) <= 27
    for frame, rows in tracings.get(row["FileName"], []):
      assert 0 <= frame < len(frames)
  assert tracings  # a fast enough heart fits ED and ES into ~20 frames


@pytest.mark.parametrize(
  "change, message",
  [
    ({"num_videos": 2}, "num_videos"),
    ({"min_frames": 0}, "min_frames"),
    ({"min_frames": 30, "max_frames": 20}, "max_frames"),
  ],
)
def test_bad_arguments(tmp_path, change, message):
  with pytest.raises(ConfigError, match=message):
    synthetic.generate(
      tmp_path / "x", **{"num_videos": 3, "seed": 0, "min_frames": 5, "max_frames": 8, **change}
    )
  assert not list(tmp_path.iterdir())


def test_existing_output(tmp_path):
  out = tmp_path / "x"
  out.mkdir()
  synthetic.generate(out, 3, seed=0, min_frames=5, max_frames=8, workers=1)  # empty: fine
  with pytest.raises(FileExistsError, match=str(out)):
    synthetic.generate(out, 3, seed=1, min_frames=5, max_frames=8, workers=1)
  assert json.loads((out / ".synthetic.json").read_text())["seed"] == 0
  synthetic.generate(out, 4, seed=1, min_frames=5, max_frames=8, workers=1, overwrite=True)
  assert len(_read_csv(out / "FileList.csv")) == 4 and len(list((out / "Videos").iterdir())) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
  out = tmp_path / "x"
  synthetic.generate(out, 3, seed=0, min_frames=5, max_frames=8, workers=1)
  before = (out / "FileList.csv").read_bytes()

  def broken(*args):
    raise RuntimeError("render failed")

  monkeypatch.setattr(synthetic, "render", broken)
  for target, overwrite in ((tmp_path / "y", False), (out, True)):
    with pytest.raises(RuntimeError, match="render failed"):
      synthetic.generate(
        target, 3, seed=1, min_frames=5, max_frames=8, workers=1, overwrite=overwrite
      )
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
  assert (out / "FileList.csv").read_bytes() == before  # the old dataset survives a failed rewrite


@pytest.mark.slow
def test_command_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
  command = [
    sys.executable,
    "-m",
    "lvef_jax.data.synthetic",
    "--out",
    str(tmp_path / "x"),
    "--seed",
    "0",
    "--min_frames",
    "5",
    "--max_frames",
    "8",
    "--workers",
    "2",
  ]
  done = subprocess.run(command + ["--num_videos", "4"], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "4 videos" in done.stdout and "TRAIN 2, VAL 1, TEST 1" in done.stdout
  failed = subprocess.run(
    command + ["--num_videos", "2", "--overwrite"], env=env, capture_output=True, text=True
  )
  assert failed.returncode != 0 and "num_videos must be >= 3" in failed.stderr
