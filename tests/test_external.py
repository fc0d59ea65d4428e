"""The external datasets' readers (CAMUS, EchoNet-Pediatric) on synthetic folders in their
released layouts (lvef_jax.data.synthetic_external): write, validate, prepare, count, read
back the same frames and labels; and each kind of bad input refused with one clear message,
nothing prepared."""

import logging
import pathlib

import numpy as np
import pytest

from lvef_jax import config_base
from lvef_jax.data import (
  camus,
  echonet,
  formats,
  masks,
  preparation,
  synthetic,
  synthetic_external,
)
from lvef_jax.errors import ConfigError

NUM_VIDEOS = 20  # two patients a fold
CLIP_FRAMES, PERIOD = 8, 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A synthetic EchoNet-Dynamic folder, the external folders' content."""
  out = tmp_path_factory.mktemp("external") / "source"
  return synthetic.generate(out, NUM_VIDEOS, 5, min_frames=20, max_frames=50, workers=1)


@pytest.fixture(scope="module")
def source_records(source):
  return {r.file_name: r for r in echonet.load_dataset_index(source)}


def data_cfg(root, fmt, cache, **extra):
  cfg = config_base.base_config().data
  cfg.update(
    root=str(root),
    format=fmt,
    cache_dir=str(cache),
    clip_frames=CLIP_FRAMES,
    period=PERIOD,
    **extra,
  )
  return cfg


def examples(builder, split):
  decode = preparation.decode_video(builder)
  out = {}
  for ex in preparation.read_examples(builder, split).as_numpy_iterator():
    ex["video"] = decode(ex["video"]).numpy()
    out[ex["file_name"].decode()] = ex
  return out


def source_of(patient_name, source_records):
  """The source record a synthetic CAMUS patient was written from."""
  number = int(patient_name[len("patient") : len("patient") + 4])
  for i, record in enumerate(r for r in source_records.values() if r.ed_chords is not None):
    if synthetic_external.patient_number(i) == number:
      return record
  raise KeyError(patient_name)


# ----------------------------------------------------------------------------- CAMUS
@pytest.mark.parametrize("layout", ["nifti", "mhd"])
def test_camus_round_trip_gives_back_the_half_cycle_and_its_expert_masks(
  source, source_records, tmp_path, layout
):
  # Square pixels at the source's rate and size: the prepared video is the traced half
  # cycle itself, forward then backward (data.half_cycle's default, "mirror").
  root = synthetic_external.write_camus(
    source, tmp_path / "CAMUS", layout=layout, scale=(1.0, 1.0), frame_every=1
  )
  cfg = data_cfg(root, "camus", tmp_path / "cache", camus_view="both")
  records = formats.load_index(root, cfg)
  assert len(records) == 2 * NUM_VIDEOS
  assert {r.split for r in records} == {"train", "val", "test"}
  # Folds by patient number: both views of a patient are in one split.
  by_patient = {}
  for r in records:
    by_patient.setdefault(r.file_name[:11], set()).add(r.split)
  assert all(len(splits) == 1 for splits in by_patient.values())
  builder = preparation.prepare(cfg)
  counts = {s: preparation.num_examples(builder, s) for s in ("train", "val", "test")}
  assert counts == {s: sum(r.split == s for r in records) for s in counts}
  reversed_seen = 0
  for split in ("train", "val", "test"):
    strata = preparation.strata(builder, split)
    listing = preparation.split_listing(builder, split)
    assert set(strata) == {"image_quality", "view", "sex", "age_group"}
    for name, view in zip(listing["file_name"], strata["view"]):
      assert name.endswith(view)
    for name, ex in examples(builder, split).items():
      record = source_of(name, source_records)
      frames = echonet.load_video(record.video_path)
      ed, es = record.ed_frame, record.es_frame
      reversed_seen += es < ed
      half = frames[ed : es + 1] if ed < es else frames[es : ed + 1][::-1]
      lv = [masks.mask_from_chords(c, 112, 112) for c in (record.ed_chords, record.es_chords)]
      if name.endswith("2CH"):  # written mirrored left to right
        half, lv = half[:, :, ::-1], [m[:, ::-1] for m in lv]
      expected = camus.half_cycle_video(half, cfg.half_cycle, CLIP_FRAMES * PERIOD)
      np.testing.assert_array_equal(ex["video"], expected)
      assert (ex["ed_frame"], ex["es_frame"]) == (0, len(half) - 1)
      assert ex["has_masks"]
      np.testing.assert_array_equal(ex["ed_mask"], lv[0])
      np.testing.assert_array_equal(ex["es_mask"], lv[1])
      assert ex["ef"] == pytest.approx(round(record.ef, 1), abs=1e-4)
      if layout == "nifti":
        assert ex["fps"] == 50.0
  assert reversed_seen  # some sequences are stored from ES to ED, and were turned round


def test_camus_pixels_made_square_and_frame_rate_restored(source, source_records, tmp_path):
  # Pixels twice as tall and 1.5 times as wide as the source's, every other frame (25 fps).
  root = synthetic_external.write_camus(source, tmp_path / "CAMUS")
  cfg = data_cfg(root, "camus", tmp_path / "cache", half_cycle="once")
  builder = preparation.prepare(cfg)
  dice = []
  for name, ex in examples(builder, "train").items():
    record = source_of(name, source_records)
    span = abs(record.es_frame - record.ed_frame)
    # Back at 50 fps: about the source's number of frames from ED to ES.
    assert abs(len(ex["video"]) - (span + 1)) <= 2
    assert ex["video"].shape[1:] == (112, 112)
    for mask, chords in ((ex["ed_mask"], record.ed_chords), (ex["es_mask"], record.es_chords)):
      truth = masks.mask_from_chords(chords, 112, 112)
      dice.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    first = echonet.load_video(record.video_path)[record.ed_frame].astype(float)
    assert np.abs(ex["video"][0] - first).mean() < 6  # grey levels, after two resizes
  assert min(dice) > 0.9


def test_half_cycle_video_modes():
  half = np.arange(4)  # ED=0 ... ES=3
  assert camus.half_cycle_video(half, "once", 16).tolist() == [0, 1, 2, 3]
  assert camus.half_cycle_video(half, "mirror", 16).tolist() == [0, 1, 2, 3, 2, 1, 0]
  looped = camus.half_cycle_video(half, "loop", 16)
  assert looped.tolist() == [0, 1, 2, 3, 2, 1] * 3 + [0]
  assert len(looped) >= 16


def test_camus_without_frame_rate_is_not_resampled_and_warned(source, tmp_path, caplog):
  root = synthetic_external.write_camus(source, tmp_path / "CAMUS", layout="mhd")
  with caplog.at_level(logging.WARNING):
    records = formats.load_index(root, data_cfg(root, "camus", tmp_path / "cache"))
  assert all(r.fps == 0 for r in records)
  assert f"{NUM_VIDEOS} CAMUS sequences have no FrameRate" in caplog.text


def _camus_problem(source, tmp_path, edit):
  """The message of preparing a synthetic CAMUS folder after ``edit(root)``; checks that
  nothing was prepared."""
  root = synthetic_external.write_camus(source, tmp_path / "CAMUS", scale=(1.0, 1.0))
  edit(root / "database_nifti")
  cache = tmp_path / "cache"
  with pytest.raises(echonet.EchoNetFormatError) as error:
    preparation.prepare(data_cfg(root, "camus", cache))
  assert not (cache / "tfds").exists() or not any((cache / "tfds").iterdir())
  return str(error.value)


def _edit_info(patient_dir, key, value):
  info = patient_dir / "Info_4CH.cfg"
  lines = [ln for ln in info.read_text().splitlines() if not ln.startswith(f"{key}:")]
  if value is not None:
    lines.append(f"{key}: {value}")
  info.write_text("\n".join(lines) + "\n")
  return info


def test_camus_missing_cfg_key(source, tmp_path):
  message = _camus_problem(
    source, tmp_path, lambda base: _edit_info(base / "patient0001", "LVef", None)
  )
  assert message.startswith("CAMUS folder")
  assert "patient0001/Info_4CH.cfg: missing key(s) LVef" in message
  assert message.count("\n  - ") == 1


def test_camus_nan_ef(source, tmp_path):
  message = _camus_problem(
    source, tmp_path, lambda base: _edit_info(base / "patient0051", "LVef", "nan")
  )
  assert "patient0051/Info_4CH.cfg line 10: LVef is 'nan', expected a finite number" in message
  assert message.count("\n  - ") == 1


def test_camus_missing_nifti_file(source, tmp_path):
  def remove(base):
    (base / "patient0101" / "patient0101_4CH_half_sequence.nii.gz").unlink()

  message = _camus_problem(source, tmp_path, remove)
  assert "1 files are missing:" in message
  assert "patient0101_4CH_half_sequence.nii.gz" in message
  assert message.count("\n  - ") == 1


def test_camus_frame_count_unlike_the_cfg_stops_the_preparation(source, tmp_path):
  message = _camus_problem(
    source, tmp_path, lambda base: _edit_info(base / "patient0002", "NbFrame", "40")
  )
  # Found when the sequence is read; ED or ES past NbFrame would be found at once.
  assert "patient0002_4CH_half_sequence.nii.gz" in message
  assert "NbFrame 40" in message


def test_camus_bad_quality_and_sex_named_with_their_lines(source, tmp_path):
  def edit(base):
    _edit_info(base / "patient0001", "ImageQuality", "Excellent")
    _edit_info(base / "patient0001", "Sex", "X")

  message = _camus_problem(source, tmp_path, edit)
  assert "Info_4CH.cfg line 9: ImageQuality 'Excellent' is not one of Good, Medium, Poor" in message
  assert "Info_4CH.cfg line 10: Sex 'X' is not M or F" in message


# ----------------------------------------------------------------------------- Pediatric
def test_pediatric_round_trip_gives_back_the_videos_and_masks(source, source_records, tmp_path):
  root = synthetic_external.write_pediatric(source, tmp_path / "pediatric" / "A4C")
  cfg = data_cfg(root, "echonet_pediatric", tmp_path / "cache", val_folds="3,4", test_folds="0")
  records = formats.load_index(root, cfg)
  assert len(records) == NUM_VIDEOS
  assert all(not r.file_name.endswith(".avi") for r in records)  # half are listed with it
  builder = preparation.prepare(cfg)
  counts = {s: preparation.num_examples(builder, s) for s in ("train", "val", "test")}
  assert counts == {"train": 14, "val": 4, "test": 2}  # fold = video index % 10
  for split in counts:
    strata = preparation.strata(builder, split)
    assert set(strata) == {"view", "sex", "age_group"} and set(strata["view"]) == {"A4C"}
    for name, ex in examples(builder, split).items():
      record = source_records[name]
      np.testing.assert_array_equal(ex["video"], echonet.load_video(record.video_path))
      assert (ex["ed_frame"], ex["es_frame"]) == (record.ed_frame, record.es_frame)
      assert ex["has_masks"]
      # The outline's points give the pixels the chords give.
      np.testing.assert_array_equal(
        ex["ed_mask"], masks.mask_from_chords(record.ed_chords, 112, 112)
      )
      np.testing.assert_array_equal(
        ex["es_mask"], masks.mask_from_chords(record.es_chords, 112, 112)
      )
      assert ex["ef"] == pytest.approx(round(record.ef, 2), abs=1e-4)
      assert ex["fps"] == pytest.approx(record.fps, rel=1e-3)  # from the video


def test_pediatric_fold_outside_0_to_9(source, tmp_path):
  root = synthetic_external.write_pediatric(source, tmp_path / "A4C")
  lines = (root / "FileList.csv").read_text().splitlines()
  lines[3] = lines[3].rsplit(",", 1)[0] + ",12"
  (root / "FileList.csv").write_text("\n".join(lines) + "\n")
  cache = tmp_path / "cache"
  with pytest.raises(echonet.EchoNetFormatError) as error:
    preparation.prepare(data_cfg(root, "echonet_pediatric", cache))
  message = str(error.value)
  assert message.startswith("EchoNet-Pediatric folder")
  assert "FileList.csv line 4 (FileName" in message
  assert "Split '12' is not a fold number 0-9" in message
  assert message.count("\n  - ") == 1
  assert not (cache / "tfds").exists()


def test_pediatric_nan_ef_and_missing_column(source, tmp_path):
  root = synthetic_external.write_pediatric(source, tmp_path / "A4C")
  lines = (root / "FileList.csv").read_text().splitlines()
  fields = lines[2].split(",")
  fields[1] = "NaN"
  lines[2] = ",".join(fields)
  (root / "FileList.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(echonet.EchoNetFormatError, match=r"line 3 \(FileName .*EF is 'NaN'"):
    formats.load_index(root, data_cfg(root, "echonet_pediatric", tmp_path / "cache"))
  (root / "FileList.csv").write_text(
    "\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n"
  )  # no Split column
  with pytest.raises(echonet.EchoNetFormatError, match=r"FileList.csv: no column\(s\) Split"):
    formats.load_index(root, data_cfg(root, "echonet_pediatric", tmp_path / "cache"))


def test_pediatric_root_holding_both_views_says_which_to_pick(source, tmp_path):
  synthetic_external.write_pediatric(source, tmp_path / "Pediatric" / "A4C")
  (tmp_path / "Pediatric" / "PSAX").mkdir()
  with pytest.raises(echonet.EchoNetFormatError, match="set data.root to one of them"):
    formats.load_index(
      tmp_path / "Pediatric", data_cfg(tmp_path / "Pediatric", "echonet_pediatric", tmp_path)
    )


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
  "update, message",
  [
    ({"format": "camus2"}, "data.format='camus2'"),
    ({"format": "camus", "val_folds": "9"}, "share fold(s) [9]"),
    ({"format": "camus", "test_folds": "10"}, "data.test_folds='10': expected fold numbers 0-9"),
    ({"format": "camus", "camus_view": "3CH"}, "data.camus_view='3CH'"),
    ({"format": "camus", "half_cycle": "bounce"}, "data.half_cycle='bounce'"),
    ({"format": "camus", "val_folds": ""}, "must each name at least one fold"),
  ],
)
def test_bad_format_settings(update, message, tmp_path):
  cfg = data_cfg(tmp_path, "echonet", tmp_path)
  cfg.update(update)
  with pytest.raises(ConfigError) as error:
    formats.FormatSettings.from_cfg(cfg)
  assert message in str(error.value)


def test_prepared_copies_of_other_folds_do_not_mix(source, tmp_path):
  root = synthetic_external.write_pediatric(source, tmp_path / "A4C")
  first = preparation.prepare(data_cfg(root, "echonet_pediatric", tmp_path / "cache"))
  other = preparation.prepare(
    data_cfg(root, "echonet_pediatric", tmp_path / "cache", test_folds="1")
  )
  assert pathlib.Path(first.data_dir) != pathlib.Path(other.data_dir)
  assert preparation.num_examples(first, "test") == preparation.num_examples(other, "test") == 2
  first_test = set(preparation.split_listing(first, "test")["file_name"])
  assert first_test.isdisjoint(preparation.split_listing(other, "test")["file_name"])
