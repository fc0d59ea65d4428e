"""Tests of the LV masks drawn from the tracings: the polygon fill, what preparation stores, and
the traced-frame batches of `pipeline.frame_batches`, on a small real synthetic dataset whose
tracings follow the rendered cavity."""

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lvef_jax import config_base
from lvef_jax.data import clips
from lvef_jax.data import echonet
from lvef_jax.data import masks
from lvef_jax.data import pipeline
from lvef_jax.data import preparation
from lvef_jax.data import synthetic
from lvef_jax.data import tfds_builder
from lvef_jax.errors import ConfigError

# 8-16 frames: the shorter videos are too short to hold both ED and ES, so are untraced.
NUM_VIDEOS, SEED, MIN_FRAMES, MAX_FRAMES = 12, 2, 8, 16
SIZE = synthetic.SIZE


def data_cfg(**overrides):
  """The default data config (configs/ use it), on the given folder, without augmentation."""
  cfg = config_base.base_config().data
  cfg.update(augment_pad=0, num_parallel_calls=2, prefetch=1, shuffle_buffer=64)
  cfg.update(overrides)
  return cfg


def chords(*rows):
  """A traced frame: a long-axis row (not on the outline), then the given chords."""
  return np.array([(0.0, 0.0, 0.0, 9.0), *rows], np.float32)


def pixels(mask) -> set[tuple[int, int]]:
  return {(int(r), int(c)) for r, c in np.argwhere(mask)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  base = tmp_path_factory.mktemp("masks")
  root = synthetic.generate(
    base / "echonet", NUM_VIDEOS, SEED, min_frames=MIN_FRAMES, max_frames=MAX_FRAMES, workers=1
  )
  cfg = data_cfg(root=str(root), cache_dir=str(base / "cache"))
  builder = preparation.prepare(cfg)
  stored = {
    ex["file_name"].decode(): ex
    for split in clips.SPLITS
    for ex in tfds.as_numpy(builder.as_dataset(split=split))
  }
  records = {r.file_name: r for r in echonet.load_dataset_index(root)}
  untraced = [name for name, r in records.items() if r.ed_frame < 0]
  assert untraced and len(untraced) < NUM_VIDEOS - 4, "the dataset has both kinds of video"
  return dict(root=root, base=base, cfg=cfg, builder=builder, stored=stored, records=records)


# ----------------------------------------------------------------------------- drawing
def test_rectangle_is_the_rows_and_columns_between_its_chords_border_included():
  # End points are rounded to whole pixels first, halves to even: y 2.5 and 1.5 are both 2.
  rectangle = chords(
    (3.4, 2.5, 6.6, 1.5), (2.6, 3.2, 7.4, 3.0), (3.0, 4.0, 7.0, 4.4), (3.49, 5.4, 7.49, 4.6)
  )
  mask = masks.mask_from_chords(rectangle, 8, 10)
  assert mask.dtype == np.uint8 and mask.shape == (8, 10) and set(np.unique(mask)) == {0, 1}
  assert pixels(mask) == {(r, c) for r in range(2, 6) for c in range(3, 8)}
  x, y = masks.outline(rectangle)
  np.testing.assert_array_equal(x, [3, 3, 3, 3, 7, 7, 7, 7])  # X1 down, then X2 back up
  np.testing.assert_array_equal(y, [2, 3, 4, 5, 5, 4, 3, 2])


def test_triangle_and_notched_outlines_are_the_hand_counted_pixels():
  # Vertices (0, 0), (0, 4), (4, 4) (x, y): the hypotenuse's pixels are on an edge, so inside.
  triangle = masks.mask_from_chords(chords((0, 0, 0, 0), (0, 4, 4, 4)), 6, 6)
  assert pixels(triangle) == {(r, c) for r in range(5) for c in range(r + 1)}
  # A square with a V cut into its top: (4, 4), (0, 0), (0, 8), (8, 8), (8, 0). The rows above
  # the notch's tip hold two runs of pixels, so the fill must count crossings, not span rows.
  notched = masks.mask_from_chords(chords((4, 4, 4, 4), (0, 0, 8, 0), (0, 8, 8, 8)), 10, 10)
  expected = {(r, c) for r in range(4) for c in [*range(r + 1), *range(8 - r, 9)]}
  expected |= {(r, c) for r in range(4, 9) for c in range(9)}
  assert pixels(notched) == expected and len(expected) == 65
  picture = "\n".join("".join(".#"[v] for v in row) for row in notched[:5, :9])
  assert picture == "#.......#\n##.....##\n###...###\n####.####\n#########"


def test_outline_is_clipped_to_the_frame():
  rectangle = chords((-3, -2, 4, -2), (-3, 3, 4, 3))
  assert pixels(masks.mask_from_chords(rectangle, 6, 6)) == {
    (r, c) for r in range(4) for c in range(5)
  }
  big = chords((-20, -20, 50, -20), (-20, 50, 50, 50))
  assert masks.mask_from_chords(big, 5, 7).all()
  assert not masks.mask_from_chords(chords((10, 10, 14, 10), (10, 14, 14, 14)), 5, 7).any()


def _reference_fill(x, y, height, width):
  """scikit-image's ``polygon``, pixel by pixel: its bounding box, O'Rourke's crossing test."""
  mask = np.zeros((height, width), np.uint8)
  for r in range(int(max(0, y.min())), min(height - 1, int(np.ceil(y.max()))) + 1):
    for c in range(int(max(0, x.min())), min(width - 1, int(np.ceil(x.max()))) + 1):
      right = left = 0
      x1, y1 = x[-1] - c, y[-1] - r
      on_vertex = False
      for xi, yi in zip(x, y):
        x0, y0 = xi - c, yi - r
        if x0 == 0 and y0 == 0:
          on_vertex = True
          break
        if (y0 > 0) != (y1 > 0) and (x0 * y1 - x1 * y0) / (y1 - y0) > 0:
          right += 1
        if (y0 < 0) != (y1 < 0) and (x0 * y1 - x1 * y0) / (y1 - y0) < 0:
          left += 1
        x1, y1 = x0, y0
      mask[r, c] = on_vertex or right % 2 == 1 or left % 2 == 1
  return mask


def test_fill_is_the_pixel_by_pixel_crossing_test_on_random_outlines():
  rng = np.random.default_rng(0)
  for trial in range(60):
    height, width = rng.integers(4, 20, 2)
    rows = rng.integers(-4, 24, (int(rng.integers(2, 9)), 4)) + rng.choice([0, 0.5, 0.3], (1, 4))
    x, y = masks.outline(rows)
    np.testing.assert_array_equal(
      masks.mask_from_chords(rows, height, width),
      _reference_fill(x, y, height, width),
      err_msg=f"trial {trial}",
    )


def test_mask_problem_says_why_a_tracing_cannot_form_a_mask():
  good = chords((2, 2, 6, 2), (2, 5, 6, 5))
  assert masks.mask_problem(good, 8, 8) is None
  cases = {
    "1 short-axis chords, fewer than the 2": chords((2, 2, 6, 2)),
    "0 short-axis chords": chords(),
    "fewer than 3 distinct vertices": chords((2, 2, 2.2, 2), (2.4, 1.6, 2, 2)),
    "encloses no area": chords((1, 1, 5, 5), (2, 2, 3, 3)),  # every vertex on y = x
    "lies outside the 8x8 frame": chords((20, 2, 26, 2), (20, 5, 26, 5)),
    "not finite": chords((2, 2, np.nan, 2), (2, 5, 6, 5)),
    "shape (4,)": np.zeros(4),
  }
  for reason, rows in cases.items():
    problem = masks.mask_problem(rows, 8, 8)
    assert problem is not None and reason in problem, (reason, problem)
  with pytest.raises(ValueError, match=r"\[rows, 4\]"):
    masks.mask_from_chords(np.zeros((3, 3)), 8, 8)


# ----------------------------------------------------------------------------- preparation
def test_records_carry_the_chords_of_their_traced_frames(data):
  tracings = echonet.read_tracings(data["root"])
  for name, record in data["records"].items():
    if record.ed_frame < 0:
      assert record.ed_chords is None and record.es_chords is None
      continue
    np.testing.assert_array_equal(record.ed_chords, tracings[name][record.ed_frame])
    np.testing.assert_array_equal(record.es_chords, tracings[name][record.es_frame])
    # Equality and repr are those of the record without its chords.
    bare = dataclasses.replace(record, ed_chords=None, es_chords=None)
    assert record == bare and repr(record) == repr(bare) and hash(record) == hash(bare)


def test_prepared_masks_are_drawn_from_the_tracings(data):
  builder = data["builder"]
  assert str(builder.version) == "1.1.0" and "1.1.0" in builder.RELEASE_NOTES
  tracings = echonet.read_tracings(data["root"])
  for name, ex in data["stored"].items():
    record = data["records"][name]
    assert ex["ed_mask"].dtype == ex["es_mask"].dtype == np.uint8
    assert ex["ed_mask"].shape == ex["es_mask"].shape == ex["video"].shape[1:]
    if record.ed_frame < 0:
      assert not ex["has_masks"] and not ex["ed_mask"].any() and not ex["es_mask"].any()
      continue
    assert ex["has_masks"]
    for key, frame in (("ed_mask", record.ed_frame), ("es_mask", record.es_frame)):
      np.testing.assert_array_equal(
        ex[key], masks.mask_from_chords(tracings[name][frame], SIZE, SIZE), err_msg=name
      )
    assert ex["ed_mask"].sum() > ex["es_mask"].sum() > 50  # ED: the fullest ventricle
  for split in clips.SPLITS:
    listing = preparation.split_listing(builder, split)
    traced = [data["records"][name].ed_frame >= 0 for name in listing["file_name"]]
    np.testing.assert_array_equal(listing["has_masks"], traced)
    assert pipeline.num_frame_examples(builder, split) == 2 * sum(traced)


def _ring(mask, inner, outer):
  """The pixels between `inner` and `outer` px outside the mask."""
  grow = lambda px: cv2.dilate(mask, np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0  # noqa: E731
  return grow(outer) & ~grow(inner)


def test_masks_cover_the_dark_cavity_not_the_wall_around_it(data):
  def contrast(frame, mask):
    """Mean grey inside the mask over the mean of a ring 2-6 px outside it."""
    return frame[mask > 0].mean() / frame[_ring(mask, 2, 6)].mean()

  ratios, transposed = [], []
  for name, ex in data["stored"].items():
    if not ex["has_masks"]:
      continue
    record = data["records"][name]
    for key, frame in (("ed_mask", record.ed_frame), ("es_mask", record.es_frame)):
      image = ex["video"][frame].astype(np.float64)
      ratios.append(contrast(image, ex[key]))
      transposed.append(contrast(image, np.ascontiguousarray(ex[key].T)))
  # Blood is dark, the myocardium bright: a mask off the cavity (here its mirror image across the
  # diagonal) has no such contrast.
  assert max(ratios) < 0.35, ratios
  assert min(transposed) > 0.5, transposed


def _copy_of(data, tmp_path):
  root = tmp_path / "copy"
  shutil.copytree(data["root"], root)
  return root, data_cfg(root=str(root), cache_dir=str(tmp_path / "cache"))


def test_a_tracing_that_cannot_form_a_mask_is_one_warning_and_keeps_its_ef_example(
  data, tmp_path, caplog
):
  root, cfg = _copy_of(data, tmp_path)
  traced = [name for name, r in data["records"].items() if r.split == "train" and r.ed_frame >= 0]
  flat, away = traced[:2]
  lines = (root / "VolumeTracings.csv").read_text().splitlines()
  for i, line in enumerate(lines):
    fields = line.split(",")
    name, frame = fields[0][:-4], fields[-1]
    if name == flat and int(frame) == data["records"][flat].es_frame:
      fields[3:5] = fields[1:3]  # every chord a point: the ES outline encloses nothing
    elif name == away:
      fields[1:5] = [f"{float(v) + 500:.4f}" for v in fields[1:5]]  # both frames off the video
    lines[i] = ",".join(fields)
  (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
  caplog.set_level("WARNING")
  builder = preparation.prepare(cfg)
  (warning,) = [
    r.getMessage() for r in caplog.records if "cannot form an LV mask" in r.getMessage()
  ]
  assert warning.startswith("2 videos of split train have a tracing that cannot form an LV mask")
  assert f"{flat} (ES: its outline encloses no area" in warning
  assert f"{away} (ED: its outline lies outside the 112x112 frame; ES: its outline lies" in warning
  assert preparation.num_examples(builder, "train") == preparation.num_examples(
    data["builder"], "train"
  )
  stored = {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
  for name in (flat, away):
    ex = stored[name]
    assert not ex["has_masks"] and not ex["ed_mask"].any() and not ex["es_mask"].any()
    assert ex["ef"] == np.float32(data["records"][name].ef)  # still an EF example
  listing = preparation.split_listing(builder, "train")
  batches = pipeline.frame_batches(builder, "train", cfg, batch_size=2, train=False)
  shown = {listing["file_name"][i] for i, _ in _rows(batches)}
  assert shown == set(traced) - {flat, away}


def test_a_copy_of_the_older_version_is_prepared_again_then_removed(data, tmp_path, caplog):
  _, cfg = _copy_of(data, tmp_path)
  builder = preparation.prepare(cfg)
  current = builder.data_path
  # What a copy of 1.0.0 looks like: the same files, in a folder named by its version.
  old = current.parent / "1.0.0"
  current.rename(old)
  info = json.loads((old / "dataset_info.json").read_text())
  (old / "dataset_info.json").write_text(json.dumps({**info, "version": "1.0.0"}))
  newer = current.parent / "9.0.0"  # a newer checkout's copy: not ours to remove
  newer.mkdir()
  (newer / "dataset_info.json").write_text("{}")
  caplog.set_level("INFO")
  builder = preparation.prepare(cfg)
  lines = [r.getMessage() for r in caplog.records if "older version" in r.getMessage()]
  assert lines == [
    f"The dataset copy at {old} is of an older version (1.0.0) and is prepared again because "
    "this version stores LV masks."
  ]
  assert tfds_builder.NEW_IN_VERSION == "this version stores LV masks"
  assert not old.exists() and newer.is_dir() and current.is_dir()
  assert preparation.split_listing(builder, "train")["has_masks"].any()
  caplog.clear()
  preparation.prepare(cfg)
  assert any("Reusing prepared data" in r.getMessage() for r in caplog.records)
  assert not any("older version" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- frame batches
def _traced_frames(data, split):
  """(video index, phase) of every traced frame of the split, in split order."""
  listing = preparation.split_listing(data["builder"], split)
  return [(i, p) for i, ok in enumerate(listing["has_masks"]) if ok for p in (0, 1)]


def _rows(batches):
  return [(int(i), int(p)) for b in batches for i, p, v in zip(*_keys(b)) if v]


def _keys(batch):
  return batch["video_index"], batch["phase"], batch["valid"]


@pytest.mark.parametrize("split", clips.SPLITS)
def test_eval_frames_are_the_stored_traced_frames_once_in_order_then_padding(data, split):
  listing = preparation.split_listing(data["builder"], split)
  batches = list(
    pipeline.frame_batches(data["builder"], split, data["cfg"], batch_size=3, train=False)
  )
  count = pipeline.num_frame_examples(data["builder"], split)
  assert len(batches) == -(-count // 3)
  for b in batches:
    assert b["image"].dtype == np.uint8 and b["image"].shape == (3, SIZE, SIZE, 1)
    assert b["mask"].dtype == np.float32 and b["mask"].shape == (3, SIZE, SIZE)
    assert {b[k].dtype for k in ("video_index", "phase")} == {np.dtype(np.int32)}
    assert b["valid"].dtype == np.float32 and set(np.unique(b["mask"])) <= {0.0, 1.0}
    for image, mask, index, phase, valid in zip(b["image"], b["mask"], *_keys(b)):
      if not valid:
        assert index == -1 and not image.any() and not mask.any()
        continue
      ex = data["stored"][listing["file_name"][index]]
      frame = (ex["ed_frame"], ex["es_frame"])[phase]
      np.testing.assert_array_equal(image[..., 0], ex["video"][frame])
      np.testing.assert_array_equal(mask, (ex["ed_mask"], ex["es_mask"])[phase])
  assert _rows(batches) == _traced_frames(data, split)
  assert sum(b["valid"].sum() for b in batches) == count


def test_eval_shards_cover_the_frames_once_in_step_and_the_memory_cache_changes_nothing(data):
  shards = [
    list(
      pipeline.frame_batches(
        data["builder"],
        "train",
        data["cfg"],
        batch_size=2,
        train=False,
        shard_index=s,
        num_shards=2,
      )
    )
    for s in range(2)
  ]
  assert len(shards[0]) == len(shards[1])
  assert sorted(_rows(shards[0]) + _rows(shards[1])) == _traced_frames(data, "train")
  cached = data_cfg(**{**data["cfg"], "cache_in_memory": True})
  plain = list(
    pipeline.frame_batches(data["builder"], "val", data["cfg"], batch_size=2, train=False)
  )
  for _ in range(2):  # The second pass reads the memory cache.
    again = list(pipeline.frame_batches(data["builder"], "val", cached, batch_size=2, train=False))
    for a, b in zip(plain, again, strict=True):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_frames_and_masks_are_resized_alike(data):
  cfg = data_cfg(**{**data["cfg"], "image_size": 56})
  listing = preparation.split_listing(data["builder"], "train")
  for b in pipeline.frame_batches(data["builder"], "train", cfg, batch_size=4, train=False):
    assert b["image"].shape == (4, 56, 56, 1) and b["mask"].shape == (4, 56, 56)
    for image, mask, index, phase, valid in zip(b["image"], b["mask"], *_keys(b)):
      if not valid:
        continue
      ex = data["stored"][listing["file_name"][index]]
      frame = ex["video"][(ex["ed_frame"], ex["es_frame"])[phase]]
      np.testing.assert_array_equal(
        image, pipeline.resize_frames(frame[None], 56).numpy()[0, ..., None]
      )
      full = (ex["ed_mask"], ex["es_mask"])[phase]
      halved = full.reshape(56, 2, 56, 2).mean(axis=(1, 3))  # 2x2 blocks, 0..1
      assert set(np.unique(mask)) == {0.0, 1.0}
      np.testing.assert_array_equal(mask[halved == 1], 1.0)  # inside stays inside
      np.testing.assert_array_equal(mask[halved == 0], 0.0)


def _shift(image, pad, dy, dx):
  """`image` (H, W[, C]) zero-padded by `pad` and cropped back at (dy, dx)."""
  h, w = image.shape[:2]
  widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (image.ndim - 2)
  return np.pad(image, widths)[dy : dy + h, dx : dx + w]


def test_train_frames_one_shuffled_pass_with_the_mask_cropped_as_its_frame(data):
  builder, pad = data["builder"], 4
  frames = _traced_frames(data, "train")
  plain = list(
    pipeline.frame_batches(builder, "train", data["cfg"], batch_size=4, train=True, seed=5)
  )
  assert len(frames) % 4 == 0 and len(plain) == len(frames) // 4
  assert all(b["valid"].all() for b in plain)
  assert sorted(_rows(plain)) == frames and _rows(plain) != frames  # each once, shuffled
  cfg = data_cfg(**{**data["cfg"], "augment_pad": pad})
  runs = [
    list(pipeline.frame_batches(builder, "train", cfg, batch_size=4, train=True, seed=5))
    for _ in range(2)
  ]
  for a, b in zip(*runs, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = list(pipeline.frame_batches(builder, "train", cfg, batch_size=4, train=True, seed=6))
  assert _rows(other) != _rows(runs[0])
  unaugmented = {
    (int(i), int(p)): (image, mask)
    for b in plain
    for image, mask, i, p in zip(b["image"], b["mask"], b["video_index"], b["phase"])
  }
  offsets = set()
  for b in runs[0]:
    for image, mask, i, p in zip(b["image"], b["mask"], b["video_index"], b["phase"]):
      source, source_mask = unaugmented[(int(i), int(p))]
      # The crop of the frame, found from its pixels; the mask must be cropped the same.
      (offset,) = [
        (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        if np.array_equal(image, _shift(source, pad, dy, dx))
      ]
      np.testing.assert_array_equal(mask, _shift(source_mask, pad, *offset))
      offsets.add(offset)
  assert len(offsets) > 3  # crops differ between frames


def test_train_shards_yield_the_same_number_of_whole_batches(data):
  listing = preparation.split_listing(data["builder"], "train")
  counts = [2 * int(part.sum()) for part in np.array_split(listing["has_masks"], 2)]
  shards = [
    list(
      pipeline.frame_batches(
        data["builder"], "train", data["cfg"], batch_size=2, train=True, shard_index=s, num_shards=2
      )
    )
    for s in range(2)
  ]
  assert [len(s) for s in shards] == [min(counts) // 2] * 2
  assert not set(_rows(shards[0])) & set(_rows(shards[1]))
  with pytest.raises(ConfigError, match="fewer than one batch"):
    next(pipeline.frame_batches(data["builder"], "val", data["cfg"], batch_size=64, train=True))
