"""Reading a user's own echo videos (any common container, or DICOM cine loops) for the models.

The training data are EchoNet-Dynamic AVIs (112x112 grey, about 50 fps), decoded by
`lvef_jax.data.echonet.load_video` and resized inside tf.data by `pipeline._resize`. A video
from elsewhere is brought to the same form here, with the same decoder, the same colour-to-grey
conversion and the same TensorFlow resize, so that a prediction on an EchoNet video read through
this module sees exactly the pixels that evaluation on that video sees:

* `find_videos` turns a file, a folder or a glob into the list of files to read;
* `read_video` decodes one file to uint8 grey frames `[T, H, W]` and its frame rate;
* `resample_frames` brings the frame rate to the training rate (nearest frame in time);
* `resize_frames` centre-crops to a square and resizes exactly as the input pipeline does;
* `load_for_model` does all three for one file.

Only numpy and cv2 are imported here; TensorFlow and pydicom (the optional ``dicom`` extra,
``pip install lvef-jax[dicom]``) are imported by the functions that need them.
"""

from __future__ import annotations

import glob
import math
import os
import pathlib

import cv2
import numpy as np

from lvef_jax.errors import LvefError

# Containers OpenCV's FFmpeg backend reads. Folder scans pick up only these and DICOM_SUFFIXES
# (case-insensitive); any other file can still be named explicitly.
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".wmv", ".mpg", ".mpeg")
# DICOM files often have no suffix at all: those are not picked up by folder scans or globs, but
# `read_video` recognises them by content when named explicitly.
DICOM_SUFFIXES = (".dcm", ".dicom")
# Frames resized per TensorFlow call: bounds the float32 copy for long, large videos. Resizing is
# per image, so the result does not depend on it.
_RESIZE_CHUNK = 64
# A decoded video may fall short of the container's frame count by this many frames (or this
# share of it, if more) before it counts as truncated: some containers only estimate the count.
_MISSING_FRAMES_ALLOWED = 2
_MISSING_SHARE_ALLOWED = 0.02


class VideoReadError(LvefError, ValueError):
  """A video (or DICOM) file that cannot be found, opened or decoded; the message names it."""


def _is_glob(spec: str) -> bool:
  return any(c in spec for c in "*?[")


def _known_suffix(path: pathlib.Path) -> bool:
  return path.suffix.lower() in VIDEO_SUFFIXES + DICOM_SUFFIXES


def find_videos(spec: str) -> list[tuple[pathlib.Path, str]]:
  """Lists the video files a command-line argument stands for.

  Args:
    spec: a file (read whatever its suffix); a folder, searched recursively for files whose
      suffix is in `VIDEO_SUFFIXES` or `DICOM_SUFFIXES` (case-insensitive); or a glob pattern
      (containing ``*``, ``?`` or ``[``; ``**`` matches any depth) whose matching files with
      such a suffix are taken.

  Returns:
    (path, display name) pairs. The display name is `spec` itself for a file, the POSIX path
    relative to the folder (suffix kept, so ``a.avi`` and ``a.mp4`` stay distinct) for a folder,
    and the matched path for a glob. Folder and glob results are sorted by display name.

  Raises:
    VideoReadError: nothing matches `spec`, or the folder holds no video files.
  """
  spec = os.fspath(spec)
  path = pathlib.Path(spec)
  if path.is_file():
    return [(path, spec)]
  if path.is_dir():
    found = sorted(
      (p.relative_to(path).as_posix(), p)
      for p in path.rglob("*")
      if p.is_file() and _known_suffix(p)
    )
    if not found:
      raise VideoReadError(
        f"folder {spec} holds no video files (looked for {', '.join(_all_suffixes())})"
      )
    return [(p, name) for name, p in found]
  if _is_glob(spec):
    found = sorted(
      m
      for m in glob.glob(spec, recursive=True)
      if os.path.isfile(m) and _known_suffix(pathlib.Path(m))
    )
    if not found:
      raise VideoReadError(
        f"pattern {spec} matches no video files (looked for {', '.join(_all_suffixes())})"
      )
    return [(pathlib.Path(m), m) for m in found]
  raise VideoReadError(f"{spec}: no such file or folder")


def _all_suffixes() -> tuple[str, ...]:
  return VIDEO_SUFFIXES + DICOM_SUFFIXES


def _is_dicom(path: pathlib.Path) -> bool:
  """True for a DICOM suffix, or for a file with the "DICM" marker after its 128-byte preamble."""
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:] == b"DICM"


def read_video(path) -> tuple[np.ndarray, float]:
  """Decodes a whole video or DICOM cine loop to grey frames.

  Videos are decoded with OpenCV exactly as `echonet.load_video` decodes the training data
  (3-channel frames through ``cv2.COLOR_BGR2GRAY``). DICOM files (by suffix or by content)
  are read with pydicom: see `_read_dicom`.

  Args:
    path: the file.

  Returns:
    (frames, fps): uint8 frames `[T, H, W]` with T >= 1, and the frame rate the file states
    (0.0 if it states none).

  Raises:
    VideoReadError: the file is missing or empty, cannot be opened, has no frames, or is
      truncated or corrupt (fewer frames decode than its container lists); or it is DICOM and
      pydicom is not installed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise VideoReadError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise VideoReadError(f"{path}: the file is empty")
  if _is_dicom(path):
    return _read_dicom(path)
  return _read_opencv(path)


def _to_grey(frame: np.ndarray) -> np.ndarray:
  """One decoded OpenCV frame to grey, as `echonet.load_video` converts it."""
  # load_video fails on these two (rare) layouts; 3-channel and 2-D frames are its cases.
  if frame.ndim == 3 and frame.shape[2] == 4:
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
  if frame.ndim == 3 and frame.shape[2] == 1:
    return frame[..., 0]
  return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame


def _read_opencv(path: pathlib.Path) -> tuple[np.ndarray, float]:
  frames = []
  try:
    cap = cv2.VideoCapture(os.fspath(path))
  except cv2.error as e:
    raise VideoReadError(f"{path}: cannot be opened by OpenCV ({e})") from None
  try:
    if not cap.isOpened():
      raise VideoReadError(
        f"{path}: cannot be opened by OpenCV (not a video format its FFmpeg backend reads, "
        "or the file is corrupt or truncated)"
      )
    listed = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = cap.get(cv2.CAP_PROP_FPS)
    try:
      ok, frame = cap.read()
      while ok:
        frames.append(_to_grey(frame))
        ok, frame = cap.read()
    except cv2.error as e:
      raise VideoReadError(
        f"{path}: decoding failed after {len(frames)} frame(s) ({e}); the file is corrupt"
      ) from None
  finally:
    cap.release()
  if not frames:
    raise VideoReadError(f"{path}: no frame could be decoded (the file is corrupt or truncated)")
  if math.isfinite(listed) and listed > 0:
    if len(frames) < _fewest_frames(listed):
      raise VideoReadError(
        f"{path}: only {len(frames)} of the {int(listed)} frames listed by the container "
        "could be decoded; the file is truncated or corrupt"
      )
  if len({f.shape for f in frames}) > 1:
    raise VideoReadError(f"{path}: frames of different sizes ({sorted({f.shape for f in frames})})")
  fps = float(fps) if math.isfinite(fps) and fps > 0 else 0.0
  return np.stack(frames).astype(np.uint8, copy=False), fps


def _fewest_frames(listed: float) -> int:
  """The fewest frames a video whose container lists `listed` frames may decode to."""
  return int(listed) - max(_MISSING_FRAMES_ALLOWED, math.ceil(_MISSING_SHARE_ALLOWED * listed))


def probe_video(path) -> str | None:
  """Checks cheaply that a video opens and that both its ends decode.

  Decodes the first frame and the last frame a complete file must have (by the container's
  frame count, with the tolerance `read_video` allows), seeking there: a few milliseconds a
  video, against tens for a full decode, and it catches the common damage, a file cut short by
  an interrupted download or copy. Damage in the middle is found when the video is decoded.

  Returns:
    None if the video looks whole, else the reason, e.g. "cannot be opened by OpenCV".
  """
  try:
    cap = cv2.VideoCapture(os.fspath(path))
  except cv2.error:
    return "cannot be opened by OpenCV"
  try:
    if not cap.isOpened():
      return "cannot be opened by OpenCV"
    if not cap.read()[0]:
      return "has no readable frames"
    listed = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    last = _fewest_frames(listed) - 1 if math.isfinite(listed) else 0
    if last > 0 and not (cap.set(cv2.CAP_PROP_POS_FRAMES, last) and cap.read()[0]):
      return f"is truncated (frame {last + 1} of the {int(listed)} it lists does not decode)"
    return None
  except cv2.error as e:
    return f"cannot be decoded by OpenCV ({e})"
  finally:
    cap.release()


def video_properties(path) -> tuple[int, float, int, int]:
  """(frames, frames per second, height, width) as a video's container lists them, nothing
  decoded; zeros for what OpenCV cannot open."""
  cap = cv2.VideoCapture(os.fspath(path))
  try:
    if not cap.isOpened():
      return 0, 0.0, 0, 0
    props = [
      cap.get(p)
      for p in (
        cv2.CAP_PROP_FRAME_COUNT,
        cv2.CAP_PROP_FPS,
        cv2.CAP_PROP_FRAME_HEIGHT,
        cv2.CAP_PROP_FRAME_WIDTH,
      )
    ]
    count, fps, height, width = (x if math.isfinite(x) else 0 for x in props)
    return int(count), float(fps), int(height), int(width)
  finally:
    cap.release()


def to_uint8(arr: np.ndarray) -> np.ndarray:
  """Scales any numeric array to uint8 by its own min and max (the whole loop, not per frame).

  uint8 data are returned unchanged; a constant loop becomes all zeros.
  """
  if arr.dtype == np.uint8:
    return arr
  arr = arr.astype(np.float32)
  finite = np.isfinite(arr)
  if not finite.all():
    arr = np.where(finite, arr, 0.0)
  lo, hi = float(arr.min()), float(arr.max())
  if hi <= lo:
    return np.zeros(arr.shape, np.uint8)
  out = (arr - lo) * np.float32(255.0 / (hi - lo))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _dicom_fps(ds) -> float:
  """Frame rate from CineRate, RecommendedDisplayFrameRate or FrameTime (ms); 0.0 if none."""
  for keyword, to_fps in (
    ("CineRate", float),
    ("RecommendedDisplayFrameRate", float),
    ("FrameTime", lambda ms: 1000.0 / float(ms)),
  ):
    value = ds.get(keyword)
    if value is None or value == "":
      continue
    try:
      fps = to_fps(value)
    except (TypeError, ValueError, ZeroDivisionError):
      continue
    if math.isfinite(fps) and fps > 0:
      return fps
  return 0.0


def _read_dicom(path: pathlib.Path) -> tuple[np.ndarray, float]:
  """Reads a (multi-frame) DICOM file to grey uint8 `[T, H, W]` and its frame rate.

  The pixel data (any transfer syntax pydicom and its installed plugins decode; pydicom
  returns colour as RGB) become grey as follows: palette colour through its lookup table;
  RGB with the weights of ``cv2.COLOR_RGB2GRAY`` (0.299 R + 0.587 G + 0.114 B, OpenCV's own
  rounding); non-uint8 data scaled to 0-255 by the loop's min and max; MONOCHROME1 inverted so
  that bright is always high. A single frame is a loop of one.
  """
  try:
    import pydicom
  except ImportError:
    raise VideoReadError(
      f"{path}: reading DICOM needs pydicom: pip install lvef-jax[dicom]"
    ) from None
  try:
    ds = pydicom.dcmread(path)
  except Exception as e:  # InvalidDicomError, or whatever a truncated file makes the parser raise
    raise VideoReadError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
  if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
    raise VideoReadError(f"{path}: the DICOM file has no pixel data")
  try:
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
      from pydicom.pixels import apply_color_lut

      arr = apply_color_lut(arr, ds)
  except Exception as e:  # pydicom and its decoding plugins raise many types
    raise VideoReadError(
      f"{path}: cannot decode the DICOM pixel data ({type(e).__name__}: {e})"
    ) from None
  colour = photometric == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1) or 1) > 1
  if arr.ndim == (3 if colour else 2):
    arr = arr[None]
  if arr.ndim != (4 if colour else 3) or (colour and arr.shape[-1] != 3) or arr.size == 0:
    raise VideoReadError(
      f"{path}: unexpected DICOM pixel array shape {arr.shape} "
      f"(expected [frames, rows, columns{', 3' if colour else ''}])"
    )
  arr = to_uint8(np.asarray(arr))
  if colour:
    t, h, w, _ = arr.shape
    grey = cv2.cvtColor(np.ascontiguousarray(arr).reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY)
    arr = grey.reshape(t, h, w)
  elif photometric == "MONOCHROME1":
    arr = 255 - arr
  return np.ascontiguousarray(arr, dtype=np.uint8), _dicom_fps(ds)


def resample_frames(
  frames: np.ndarray, fps: float, target_fps: float | None, tolerance: float = 0.1
) -> np.ndarray:
  """Brings a video to `target_fps` by taking, for each output time, the nearest input frame.

  Output frame j (at time j / target_fps) is input frame round(j * fps / target_fps) (halves
  rounded up, capped at the last frame), and there are max(1, round(T * target_fps / fps)) of
  them, so the duration is kept: slower videos repeat frames, faster ones drop frames. Nothing
  is interpolated, so every output frame is a frame of the input.

  Args:
    frames: `[T, ...]` array.
    fps: the video's frame rate; 0 (unknown) leaves the frames as they are.
    target_fps: the rate wanted; None leaves the frames as they are.
    tolerance: relative difference |fps - target_fps| / target_fps up to which the frames are
      left as they are (0.1: 45-55 fps pass unchanged for a 50 fps target).

  Returns:
    `frames` itself when unchanged, else a new `[T', ...]` array.
  """
  if not target_fps or not fps or fps <= 0 or not math.isfinite(fps) or len(frames) == 0:
    return frames
  if abs(fps - target_fps) <= tolerance * target_fps:
    return frames
  n = len(frames)
  n_out = max(1, int(math.floor(n * target_fps / fps + 0.5)))
  idx = np.floor(np.arange(n_out) * (fps / target_fps) + 0.5).astype(np.int64)
  return frames[np.minimum(idx, n - 1)]


def centre_crop(frames: np.ndarray) -> np.ndarray:
  """Crops `[T, H, W]` frames to the central `[T, S, S]` square, S = min(H, W).

  When the excess is odd, the extra row or column is dropped at the bottom or right.
  """
  h, w = frames.shape[1:3]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return frames[:, top : top + s, left : left + s]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square, then resizes exactly as the training input pipeline does.

  Non-square frames lose their longer side's margins (`centre_crop`); EchoNet frames are
  square, and stretching would distort the heart's shape. The resize is
  `lvef_jax.data.pipeline._resize`: ``tf.image.resize`` of the float32 frames, bilinear with
  antialiasing, then rounded and clipped to uint8, and skipped when the frames already are
  `size` x `size`.

  Args:
    frames: uint8 `[T, H, W]`.
    size: output side in pixels.

  Returns:
    uint8 `[T, size, size]`.
  """
  frames = np.asarray(frames)
  if frames.ndim != 3:
    raise ValueError(f"resize_frames expects [T, H, W] frames, got shape {frames.shape}")
  frames = centre_crop(frames)
  if frames.shape[1] == size and frames.shape[2] == size:
    return np.ascontiguousarray(frames, dtype=np.uint8)
  import tensorflow as tf

  out = []
  for start in range(0, len(frames), _RESIZE_CHUNK):
    clip = tf.constant(np.ascontiguousarray(frames[start : start + _RESIZE_CHUNK])[..., None])
    resized = tf.image.resize(
      tf.cast(clip, tf.float32), (size, size), method="bilinear", antialias=True
    )
    out.append(tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8).numpy()[..., 0])
  if not out:
    return np.zeros((0, size, size), np.uint8)
  return np.concatenate(out)


def load_for_model(
  path, *, image_size: int, target_fps: float | None = 50.0, other_sizes: tuple[int, ...] = ()
) -> tuple[np.ndarray, dict]:
  """Reads a video and brings it to the models' input form: `read_video`, then
  `resample_frames` to `target_fps`, then `resize_frames` to `image_size`.

  Args:
    path: the video or DICOM file.
    image_size: the model's input side in pixels.
    other_sizes: more sides the same frames are resized to (a segmentation model's beside the
      EF model's), in ``info["resized"][size]``: the video is decoded once.
    target_fps: frame rate the model was trained at (EchoNet-Dynamic: about 50); None keeps the
      video's own rate. Note that the training and evaluation pipelines never resample, so an
      EchoNet video outside the tolerance (45-55 fps) is seen differently here unless None.

  Returns:
    (frames, info): uint8 `[T, image_size, image_size]`, and a dict with "fps" (the file's
    rate, 0.0 if unknown), "frames_read" (T as decoded), "frames" (T after resampling),
    "height" and "width" (the decoded frame size, before cropping and resizing).

  Raises:
    VideoReadError: see `read_video`.
  """
  frames, fps = read_video(path)
  resampled = resample_frames(frames, fps, target_fps)
  out = resize_frames(resampled, image_size)
  info = {
    "fps": fps,
    "frames_read": int(frames.shape[0]),
    "frames": int(out.shape[0]),
    "height": int(frames.shape[1]),
    "width": int(frames.shape[2]),
  }
  if other_sizes:
    info["resized"] = {size: resize_frames(resampled, size) for size in other_sizes}
  return out, info
