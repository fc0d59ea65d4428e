"""Tests for `lvef_jax.data.video_io`: reading users' videos and DICOM loops for the models."""

from __future__ import annotations

import pathlib
import sys

import cv2
import numpy as np
import pytest

from lvef_jax.data import echonet, synthetic, video_io
from lvef_jax.data.video_io import VideoReadError


@pytest.fixture(scope="module")
def synthetic_videos(tmp_path_factory) -> list[pathlib.Path]:
  root = synthetic.generate(
    tmp_path_factory.mktemp("syn") / "d", 3, 0, min_frames=20, max_frames=30, workers=1
  )
  return sorted((root / "Videos").glob("*.avi"))


def _frames(t: int, h: int, w: int) -> np.ndarray:
  """A moving bright disc on a gradient: smooth enough for lossy codecs to keep its shape."""
  yy, xx = np.mgrid[0:h, 0:w]
  out = np.empty((t, h, w), np.uint8)
  for i in range(t):
    cy, cx = h / 2 + h / 4 * np.sin(i / 3), w / 2 + w / 4 * np.cos(i / 3)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 5) ** 2) * 160
    out[i] = np.clip(40 + 40 * xx / w + disc, 0, 255).astype(np.uint8)
  return out


def _write(path: pathlib.Path, frames: np.ndarray, fps: float, fourcc: str = "MJPG") -> bool:
  """Writes grey frames as a 3-channel video; False if OpenCV cannot write this codec here."""
  t, h, w = frames.shape
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
  if not writer.isOpened():
    return False
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
  writer.release()
  return path.is_file() and path.stat().st_size > 0


# ------------------------------------------------------------------------------ matches training
def test_read_video_matches_echonet_loader(synthetic_videos):
  assert len(synthetic_videos) == 3
  for path in synthetic_videos:
    frames, fps = video_io.read_video(path)
    expected = echonet.load_video(path)
    assert frames.dtype == np.uint8 and frames.shape == expected.shape
    np.testing.assert_array_equal(frames, expected)
    assert fps > 0
    cap = cv2.VideoCapture(str(path))
    assert fps == pytest.approx(cap.get(cv2.CAP_PROP_FPS))
    cap.release()


def test_load_for_model_at_50fps_is_unchanged(synthetic_videos):
  for path in synthetic_videos:
    frames, fps = video_io.read_video(path)
    if abs(fps - 50.0) > 5.0:
      continue
    out, info = video_io.load_for_model(path, image_size=112)
    np.testing.assert_array_equal(out, echonet.load_video(path))
    assert info == {
      "fps": fps,
      "frames_read": len(frames),
      "frames": len(frames),
      "height": 112,
      "width": 112,
    }
    break
  else:
    pytest.fail("no 50 fps video among the synthetic ones")


def test_resize_matches_input_pipeline(synthetic_videos, tmp_path, monkeypatch):
  tf = pytest.importorskip("tensorflow")
  from lvef_jax.data import pipeline

  frames, _ = video_io.read_video(synthetic_videos[0])
  for size in (32, 112, 160):
    expected = pipeline._resize(tf.constant(frames[..., None]), size).numpy()[..., 0]
    np.testing.assert_array_equal(video_io.resize_frames(frames, size), expected)
  # Chunking the resize (long videos) gives the same pixels as one call.
  big = _frames(10, 224, 224)
  expected = pipeline._resize(tf.constant(big[..., None]), 112).numpy()[..., 0]
  monkeypatch.setattr(video_io, "_RESIZE_CHUNK", 3)
  np.testing.assert_array_equal(video_io.resize_frames(big, 112), expected)


# ---------------------------------------------------------------------------- other sources
def test_mp4_is_read_and_resized(tmp_path):
  path = tmp_path / "clip.mp4"
  if not _write(path, _frames(12, 128, 128), 50, "mp4v"):
    pytest.skip("this OpenCV build cannot write mp4v MP4")
  frames, fps = video_io.read_video(path)
  assert frames.shape == (12, 128, 128) and fps == pytest.approx(50.0)
  out, info = video_io.load_for_model(path, image_size=112)
  assert out.shape == (12, 112, 112) and out.dtype == np.uint8
  assert info["height"] == info["width"] == 128 and info["frames"] == 12


def test_large_avi_is_resized_and_30fps_resampled(tmp_path):
  path = tmp_path / "big.avi"
  assert _write(path, _frames(30, 224, 224), 30)
  frames, fps = video_io.read_video(path)
  assert frames.shape == (30, 224, 224) and fps == pytest.approx(30.0)
  out, info = video_io.load_for_model(path, image_size=112)
  assert out.shape[1:] == (112, 112) and out.dtype == np.uint8
  assert abs(len(out) - 30 * 50 / 30) <= 1
  assert info == {"fps": fps, "frames_read": 30, "frames": len(out), "height": 224, "width": 224}
  kept, _ = video_io.load_for_model(path, image_size=112, target_fps=None)
  assert len(kept) == 30


def test_resample_frames_nearest_frame():
  frames = np.arange(30)
  up = video_io.resample_frames(frames, 30.0, 50.0)
  assert len(up) == 50 and up[0] == 0 and up[-1] == 29
  assert set(np.diff(up)) <= {0, 1}  # frames repeated, none skipped
  down = video_io.resample_frames(np.arange(100), 100.0, 50.0)
  np.testing.assert_array_equal(down, np.arange(0, 100, 2))
  assert video_io.resample_frames(frames, 52.0, 50.0) is frames  # within tolerance
  assert video_io.resample_frames(frames, 0.0, 50.0) is frames  # unknown rate
  assert len(video_io.resample_frames(np.arange(1), 10.0, 50.0)) == 5


def test_non_square_is_centre_cropped(tmp_path):
  # Lossless: bright margins around a dark square centre; the crop keeps only the centre.
  frames = np.full((4, 60, 100), 255, np.uint8)
  frames[:, :, 20:80] = 7
  np.testing.assert_array_equal(video_io.resize_frames(frames, 60), np.full((4, 60, 60), 7))
  tall = np.transpose(frames, (0, 2, 1))
  np.testing.assert_array_equal(video_io.resize_frames(tall, 60), np.full((4, 60, 60), 7))
  # Through a file: 160x120 frames become the central 120x120 before resizing.
  path = tmp_path / "wide.avi"
  assert _write(path, _frames(6, 120, 160), 50)
  read, _ = video_io.read_video(path)
  assert read.shape == (6, 120, 160)
  out, info = video_io.load_for_model(path, image_size=112)
  np.testing.assert_array_equal(out, video_io.resize_frames(read[:, :, 20:140], 112))
  assert (info["height"], info["width"]) == (120, 160)


# ---------------------------------------------------------------------------------- bad files
def test_bad_files_raise_naming_the_file(synthetic_videos, tmp_path):
  rng = np.random.default_rng(0)
  corrupt = tmp_path / "corrupt.avi"
  corrupt.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
  data = synthetic_videos[0].read_bytes()
  truncated = tmp_path / "truncated.avi"
  truncated.write_bytes(data[:2048])
  half = tmp_path / "half.avi"
  half.write_bytes(data[: len(data) // 2])
  empty = tmp_path / "empty.avi"
  empty.write_bytes(b"")
  for path in (corrupt, truncated, half, empty, tmp_path / "missing.avi"):
    with pytest.raises(VideoReadError, match=path.name) as excinfo:
      video_io.read_video(path)
    assert str(path) in str(excinfo.value)
  with pytest.raises(VideoReadError, match="empty"):
    video_io.read_video(empty)
  with pytest.raises(VideoReadError, match="truncated"):
    video_io.read_video(half)


# ------------------------------------------------------------------------------- find_videos
def test_find_videos(tmp_path):
  d = tmp_path / "in"
  (d / "sub").mkdir(parents=True)
  for name in ("a.avi", "a.mp4", "notes.txt", "sub/b.AVI", "sub/c.dcm", "sub/noext"):
    (d / name).write_bytes(b"x")
  found = video_io.find_videos(str(d))
  assert [name for _, name in found] == ["a.avi", "a.mp4", "sub/b.AVI", "sub/c.dcm"]
  assert all(p == d / name for p, name in found)
  # A file is taken as given, whatever its suffix.
  assert video_io.find_videos(str(d / "sub" / "noext")) == [
    (d / "sub" / "noext", str(d / "sub" / "noext"))
  ]
  globbed = video_io.find_videos(str(d / "a.*"))
  assert [name for _, name in globbed] == [str(d / "a.avi"), str(d / "a.mp4")]
  assert [n for _, n in video_io.find_videos(str(d / "**" / "*.dcm"))] == [str(d / "sub/c.dcm")]
  for spec, what in (
    (tmp_path / "nope", "no such file"),
    (d / "*.mkv", "matches no video"),
    (d / "sub" / "*.txt", "matches no video"),
  ):
    with pytest.raises(VideoReadError, match=what) as excinfo:
      video_io.find_videos(str(spec))
    assert str(spec) in str(excinfo.value)
  (tmp_path / "empty").mkdir()
  with pytest.raises(VideoReadError, match="holds no video"):
    video_io.find_videos(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------- DICOM
def _write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> None:
  pydicom = pytest.importorskip("pydicom")
  from pydicom.dataset import FileDataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "US"
  colour = pixels.ndim == 4
  ds.NumberOfFrames = pixels.shape[0]
  ds.Rows, ds.Columns = pixels.shape[1:3]
  ds.SamplesPerPixel = 3 if colour else 1
  if colour:
    ds.PlanarConfiguration = 0
  ds.PhotometricInterpretation = photometric
  bits = pixels.dtype.itemsize * 8
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
  ds.PixelRepresentation = 0
  for key, value in attrs.items():
    setattr(ds, key, value)
  ds.PixelData = np.ascontiguousarray(pixels).tobytes()
  ds.save_as(path, enforce_file_format=True)
  assert pydicom.dcmread(path).NumberOfFrames == pixels.shape[0]


def test_dicom_multiframe(tmp_path):
  pixels = _frames(8, 64, 64)
  path = tmp_path / "loop.dcm"
  _write_dicom(path, pixels, CineRate=30)
  frames, fps = video_io.read_video(path)
  np.testing.assert_array_equal(frames, pixels)
  assert fps == 30.0
  # Recognised by content without a suffix; frame rate from FrameTime (ms).
  bare = tmp_path / "IM0001"
  _write_dicom(bare, pixels, FrameTime=20.0)
  frames, fps = video_io.read_video(bare)
  np.testing.assert_array_equal(frames, pixels)
  assert fps == pytest.approx(50.0)
  out, info = video_io.load_for_model(path, image_size=32)
  assert out.shape[1:] == (32, 32) and info["frames"] == round(8 * 50 / 30)


def test_dicom_colour_and_16bit(tmp_path):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  path = tmp_path / "rgb.dcm"
  _write_dicom(path, rgb, "RGB", RecommendedDisplayFrameRate=25)
  frames, fps = video_io.read_video(path)
  expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])
  np.testing.assert_array_equal(frames, expected)
  assert fps == 25.0
  wide = (np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8) * 7 + 1000).astype(np.uint16)
  path16 = tmp_path / "wide.dcm"
  _write_dicom(path16, wide)
  frames, fps = video_io.read_video(path16)
  assert frames.dtype == np.uint8 and frames.min() == 0 and frames.max() == 255
  assert fps == 0.0
  _write_dicom(path16, wide, "MONOCHROME1")
  inverted, _ = video_io.read_video(path16)
  np.testing.assert_array_equal(inverted, 255 - frames)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / "loop.dcm"
  path.write_bytes(b"\0" * 128 + b"DICM")
  monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
  with pytest.raises(VideoReadError, match=r"pip install lvef-jax\[dicom\]") as excinfo:
    video_io.read_video(path)
  assert "loop.dcm" in str(excinfo.value)
