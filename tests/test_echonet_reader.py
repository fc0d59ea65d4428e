"""Tests for lvef_jax.data.echonet on tiny EchoNet-Dynamic folders written in tmp_path."""

import logging
import os

import cv2
import numpy as np
import pytest

from lvef_jax.data import echonet

FILE_LIST_HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
SIZE = 32
# name, split (mixed case on purpose: the official files use upper case), frames, traced (ES, ED).
VIDEOS = [
  ("0XAAA", "TRAIN", 8, (1, 5)),
  ("0XBBB", "TRAIN", 6, (4, 0)),
  ("0XCCC", "train", 7, None),  # No tracings: allowed.
  ("0XDDD", "VAL", 6, (2, 3)),
  ("0XEEE", "TEST", 9, (7, 2)),
]


def frames_for(index, n_frames):
  """Smooth grey frames (JPEG keeps them close) that differ per video and per frame."""
  ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 2
  return np.stack([(ramp + 20 * index + 8 * t) % 200 + 20 for t in range(n_frames)]).astype(
    np.uint8
  )


def write_video(path, frames):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (SIZE, SIZE))
  assert writer.isOpened()
  for frame in frames:
    writer.write(np.repeat(frame[..., None], 3, axis=-1))  # EchoNet: 3 identical channels.
  writer.release()


def tracing_rows(name, frame, half_width):
  """One long-axis row, then short-axis chords whose width sets the traced area."""
  rows = [f"{name}.avi,16.0,3.0,16.0,27.0,{frame}"]
  for y in range(6, 26, 4):
    rows.append(f"{name}.avi,{16 - half_width}.5,{y}.0,{16 + half_width}.25,{y}.0,{frame}")
  return rows


@pytest.fixture
def root(tmp_path):
  root = tmp_path / "EchoNet-Dynamic"
  (root / "Videos").mkdir(parents=True)
  file_list, tracings = [FILE_LIST_HEADER], ["FileName,X1,Y1,X2,Y2,Frame"]
  for index, (name, split, n_frames, traced) in enumerate(VIDEOS):
    write_video(root / "Videos" / f"{name}.avi", frames_for(index, n_frames))
    file_list.append(f"{name},{40 + 5 * index}.5,30.25,60.0,{SIZE},{SIZE},50.0,{n_frames},{split}")
    if traced:
      es, ed = traced
      tracings += tracing_rows(name, es, 4) + tracing_rows(name, ed, 9)  # ES first.
  (root / "FileList.csv").write_text("\n".join(file_list) + "\n")
  (root / "VolumeTracings.csv").write_text("\n".join(tracings) + "\n")
  return root


def edit_csv(path, line, field, value):
  """Sets one field of one 1-based line of a CSV file."""
  lines = path.read_text().splitlines()
  fields = lines[line - 1].split(",")
  fields[field] = value
  lines[line - 1] = ",".join(fields)
  path.write_text("\n".join(lines) + "\n")


def load_error(root, **kwargs):
  with pytest.raises(echonet.EchoNetFormatError) as info:
    echonet.load_dataset_index(root, **kwargs)
  return str(info.value)


def test_valid_folder_loads(root):
  records = echonet.load_dataset_index(root)
  assert [r.file_name for r in records] == [v[0] for v in VIDEOS]
  assert [r.split for r in records] == ["train", "train", "train", "val", "test"]
  for record, (name, _, n_frames, traced) in zip(records, VIDEOS):
    expected_frames = (traced[1], traced[0]) if traced else (-1, -1)
    assert (record.ed_frame, record.es_frame) == expected_frames
    assert record.num_frames == n_frames
    assert (record.frame_height, record.frame_width, record.fps) == (SIZE, SIZE, 50.0)
    assert record.video_path == os.path.abspath(root / "Videos" / f"{name}.avi")
  assert (records[1].ef, records[1].esv, records[1].edv) == (45.5, 30.25, 60.0)
  assert echonet.read_file_list(root) == [
    echonet.VideoRecord(**{**vars(r), "ed_frame": -1, "es_frame": -1}) for r in records
  ]


def test_load_video_matches_written_frames(root):
  video = echonet.load_video(root / "Videos" / "0XEEE.avi")
  assert video.dtype == np.uint8 and video.shape == (9, SIZE, SIZE)
  assert np.abs(video.astype(int) - frames_for(4, 9)).mean() < 3  # MJPG is lossy.


def test_load_video_errors_name_the_file(root, tmp_path):
  with pytest.raises(echonet.EchoNetFormatError, match="NOPE.avi: no such file"):
    echonet.load_video(tmp_path / "NOPE.avi")
  (tmp_path / "junk.avi").write_bytes(b"garbage" * 100)
  with pytest.raises(echonet.EchoNetFormatError, match="junk.avi"):
    echonet.load_video(tmp_path / "junk.avi")


def test_read_tracings_and_frames(root):
  tracings = echonet.read_tracings(root)
  assert sorted(tracings) == ["0XAAA", "0XBBB", "0XDDD", "0XEEE"]
  chords = tracings["0XAAA"][5]
  assert chords.dtype == np.float32 and chords.shape == (6, 4)
  np.testing.assert_allclose(chords[1], [7.5, 6.0, 25.25, 6.0])
  # Order does not matter: the larger area is ED whichever frame comes first.
  small, large = tracings["0XAAA"][1], tracings["0XAAA"][5]
  assert echonet.tracing_frames({9: large, 3: small}) == (9, 3)
  assert echonet.tracing_frames({3: small, 9: large}) == (9, 3)
  assert echonet.tracing_frames({}) == (-1, -1)


def test_missing_tracings_file_is_allowed(root, caplog):
  (root / "VolumeTracings.csv").unlink()
  with caplog.at_level(logging.WARNING):
    assert echonet.read_tracings(root) == {}
  assert "VolumeTracings.csv is missing" in caplog.text
  assert all(r.ed_frame == r.es_frame == -1 for r in echonet.load_dataset_index(root))


def test_videos_without_tracings_are_one_warning_with_the_count(root, caplog):
  lines = (root / "VolumeTracings.csv").read_text().splitlines()
  kept = [line for line in lines if not line.startswith(("0XBBB.avi", "0XDDD.avi"))]
  (root / "VolumeTracings.csv").write_text("\n".join(kept) + "\n")
  with caplog.at_level(logging.WARNING):
    records = {r.file_name: r for r in echonet.load_dataset_index(root)}
  (warning,) = [r.getMessage() for r in caplog.records if "has no tracings" in r.getMessage()]
  assert "no tracings for 3 listed videos" in warning  # 0XCCC never had any
  assert "0XBBB.avi, 0XCCC.avi, 0XDDD.avi" in warning
  assert records["0XBBB"].ed_frame == -1 and records["0XAAA"].ed_frame >= 0


def test_tracings_for_unlisted_video_only_warn(root, caplog):
  with open(root / "VolumeTracings.csv", "a") as f:
    f.write("\n".join(tracing_rows("0XZZZ", 1, 3)) + "\n")
  with caplog.at_level(logging.WARNING):
    assert len(echonet.load_dataset_index(root)) == len(VIDEOS)
  assert "0XZZZ.avi" in caplog.text


def test_missing_root(tmp_path):
  assert "does not exist" in load_error(tmp_path / "nowhere")
  (tmp_path / "file").write_text("x")
  assert "is not a directory" in load_error(tmp_path / "file")


def test_missing_file_list(root):
  (root / "FileList.csv").unlink()
  assert "FileList.csv is missing" in load_error(root)
  with pytest.raises(echonet.EchoNetFormatError, match="FileList.csv is missing"):
    echonet.read_file_list(root)


def test_missing_videos_folder(root):
  for path in (root / "Videos").iterdir():
    path.unlink()
  (root / "Videos").rmdir()
  assert "Videos/ folder is missing" in load_error(root)


def test_wrong_header(root):
  edit_csv(root / "FileList.csv", 1, 1, "EjectionFraction")
  message = load_error(root)
  assert f"header must be exactly '{FILE_LIST_HEADER}'" in message
  assert "found 'FileName,EjectionFraction,ESV" in message
  assert "1 problem(s)" in message  # Rows are not parsed under a wrong header.


def test_wrong_field_count(root):
  with open(root / "FileList.csv", "a") as f:
    f.write("0XFFF,50,30,60,32,32,50,8\n")
  assert "FileList.csv line 7 (FileName '0XFFF'): has 8 fields, expected 9" in load_error(root)


def test_unknown_split(root):
  edit_csv(root / "FileList.csv", 3, 8, "EXTERNAL")
  assert "line 3 (FileName '0XBBB'): Split 'EXTERNAL' is not one of" in load_error(root)


@pytest.mark.parametrize("value", ["nan", "NaN", ""])
def test_nan_or_empty_ef(root, value):
  edit_csv(root / "FileList.csv", 2, 1, value)
  message = load_error(root)
  assert "line 2 (FileName '0XAAA'): EF" in message and repr(value) in message


@pytest.mark.parametrize("value", ["120", "-1"])
def test_ef_out_of_range(root, value):
  edit_csv(root / "FileList.csv", 4, 1, value)
  assert f"line 4 (FileName '0XCCC'): EF '{value}' is outside [0, 100]" in load_error(root)


def test_bad_volumes_and_sizes(root):
  edit_csv(root / "FileList.csv", 2, 2, "-3")
  edit_csv(root / "FileList.csv", 3, 3, "")
  edit_csv(root / "FileList.csv", 4, 4, "0")
  edit_csv(root / "FileList.csv", 5, 7, "7.5")
  message = load_error(root)
  assert "line 2 (FileName '0XAAA'): ESV '-3' is outside" in message
  assert "line 3 (FileName '0XBBB'): EDV '' is not a number" in message
  assert "line 4 (FileName '0XCCC'): FrameHeight '0' must be > 0" in message
  assert "line 5 (FileName '0XDDD'): NumberOfFrames '7.5' is not a whole number" in message


def test_non_numeric_fps(root):
  edit_csv(root / "FileList.csv", 6, 6, "fast")
  assert "line 6 (FileName '0XEEE'): FPS 'fast' is not a number" in load_error(root)


def test_duplicate_file_name(root):
  edit_csv(root / "FileList.csv", 3, 0, "0XAAA")
  message = load_error(root)
  assert "line 3 (FileName '0XAAA'): duplicate FileName (first listed on line 2)" in message


def test_file_name_with_avi_suffix(root):
  edit_csv(root / "FileList.csv", 2, 0, "0XAAA.avi")
  assert "line 2 (FileName '0XAAA.avi'): FileName must not end in '.avi'" in load_error(root)


def test_missing_videos(root):
  for name in ("0XAAA", "0XDDD"):
    (root / "Videos" / f"{name}.avi").unlink()
  message = load_error(root, check_videos=False)
  assert "2 videos listed in FileList.csv are missing from" in message
  assert "0XAAA.avi, 0XDDD.avi" in message


def test_missing_videos_listing_is_capped(root):
  lines = [FILE_LIST_HEADER] + [f"0XM{i:02d},50,30,60,32,32,50,8,TRAIN" for i in range(25)]
  lines += [f"{n},50,30,60,32,32,50,{f},{s}" for n, s, f, _ in VIDEOS]
  (root / "FileList.csv").write_text("\n".join(lines) + "\n")
  message = load_error(root)
  assert "25 videos listed" in message and "0XM19.avi … and 5 more" in message
  assert "0XM20.avi" not in message


def test_unreadable_video(root):
  (root / "Videos" / "0XBBB.avi").write_bytes(b"\x00garbage" * 64)
  (root / "Videos" / "0XDDD.avi").write_bytes(b"")
  message = load_error(root)
  assert "2 videos in" in message and "cannot be used" in message
  assert "0XBBB.avi cannot be opened by OpenCV, 0XDDD.avi cannot be opened by OpenCV" in message
  assert len(echonet.load_dataset_index(root, check_videos=False)) == len(VIDEOS)


def test_empty_split(root):
  edit_csv(root / "FileList.csv", 5, 8, "TRAIN")
  message = load_error(root)
  assert "FileList.csv: split VAL has no (valid) rows" in message
  assert "split TEST" not in message and "split TRAIN" not in message


def test_bad_tracings_header(root):
  edit_csv(root / "VolumeTracings.csv", 1, 5, "FrameIndex")
  message = load_error(root)
  assert "VolumeTracings.csv: header must be exactly 'FileName,X1,Y1,X2,Y2,Frame'" in message
  with pytest.raises(echonet.EchoNetFormatError, match="found 'FileName,X1,Y1,X2,Y2,FrameIndex'"):
    echonet.read_tracings(root)


def test_traced_frame_out_of_range_only_warns(root, caplog):
  # 0XBBB has 6 frames; its ED tracing (lines 20 to 25, after 6 rows per frame) moves to 6.
  for line in range(20, 26):
    edit_csv(root / "VolumeTracings.csv", line, 5, "6")
  records = {r.file_name: r for r in echonet.load_dataset_index(root)}
  assert (records["0XBBB"].ed_frame, records["0XBBB"].es_frame) == (-1, -1)
  assert records["0XBBB"].ef > 0  # the label is kept
  assert "1 videos have a traced frame outside their NumberOfFrames" in caplog.text
  assert "0XBBB.avi (line 20: frame 6 of 6)" in caplog.text


def test_windows_line_endings_and_byte_order_mark_are_accepted(root):
  expected = echonet.load_dataset_index(root)
  for name in ("FileList.csv", "VolumeTracings.csv"):
    path = root / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
  assert echonet.load_dataset_index(root) == expected


def test_bad_tracing_row(root):
  edit_csv(root / "VolumeTracings.csv", 3, 2, "up")
  edit_csv(root / "VolumeTracings.csv", 4, 5, "-2")
  message = load_error(root)
  assert "VolumeTracings.csv line 3 (FileName '0XAAA.avi'): Y1 'up' is not a number" in message
  assert "line 4 (FileName '0XAAA.avi'): Frame '-2' is outside" in message


def test_several_problems_reported_together(root):
  edit_csv(root / "FileList.csv", 2, 1, "120")
  edit_csv(root / "FileList.csv", 6, 8, "EXTERNAL")
  (root / "Videos" / "0XCCC.avi").unlink()
  (root / "Videos" / "0XDDD.avi").write_bytes(b"garbage")
  edit_csv(root / "VolumeTracings.csv", 14, 5, "99")  # a tracing problem: not an error
  message = load_error(root)
  assert "5 problem(s)" in message and "traced frame 99" not in message
  for expected in [
    "line 2 (FileName '0XAAA'): EF '120'",
    "line 6 (FileName '0XEEE'): Split 'EXTERNAL'",
    "split TEST has no (valid) rows",
    "1 videos listed in FileList.csv are missing from",
    "1 videos in",
    "cannot be used: 0XDDD.avi cannot be opened by OpenCV",
  ]:
    assert expected in message


def test_binary_file_list_is_reported_not_crashed(root):
  (root / "FileList.csv").write_bytes(b"\xff\xfe\x00\x81garbage\n\x00\x9f")
  assert "FileList.csv: header must be exactly" in load_error(root)
