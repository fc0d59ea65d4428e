"""TensorFlow-Datasets builder for a folder in the EchoNet-Dynamic layout.

The user's copy of EchoNet-Dynamic (or a synthetic folder in the same layout) is the builder's
`manual_dir`. Preparation decodes every AVI exactly once and stores its grey frames as a
raw uint8 tensor, so training never touches the AVIs again: decoding MJPG/XVID costs far more
than copying bytes, and tf.data cannot decode AVIs in-graph at all. The LV masks of the traced
ED and ES frames are drawn from VolumeTracings.csv here too (`lvef_jax.data.masks`), once.

Usage without `preparation.py`::

    builder = EchonetDynamic(data_dir="data/tfds/echonet")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/path/to/EchoNet-Dynamic", try_download_gcs=False))
    ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Iterable, Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from lvef_jax.data import echonet
from lvef_jax.data import masks
from lvef_jax.data.clips import SPLITS

# Storage encoding of the video tensor: BYTES, the raw frames, uncompressed. Measured on 200
# synthetic videos (2-core CPU) against ZLIB: BYTES prepares ~3x faster (with ZLIB, TFDS
# compresses at level 6 in its single writer thread) and costs ~2x less CPU per training clip,
# because ZLIB must inflate the WHOLE video to cut one clip; ZLIB would only halve the disk
# footprint (1.9x; real EchoNet ~22 GB raw). The feeding CPU is the scarcer resource next to a
# GPU, so BYTES. Changing this needs a new VERSION: already prepared data would otherwise be
# decoded with the wrong encoding.
VIDEO_ENCODING = tfds.features.Encoding.BYTES
# Decoding an AVI is the slow part of preparation. OpenCV releases the GIL while decoding, so
# a few threads decode ahead of the (single-threaded) TFDS writer.
_DECODE_THREADS = min(8, os.cpu_count() or 1)
_LOG_EVERY = 500
# What the current VERSION stores that the previous one did not: the reason a copy of an older
# version is prepared again (preparation.prepare's log line).
NEW_IN_VERSION = "this version stores LV masks"


def split_counts(records: list[echonet.VideoRecord]) -> str:
  """``"N videos: a train, b val, c test"``, for log lines."""
  counts = ", ".join(
    f"{sum(record.split == split for record in records)} {split}" for split in SPLITS
  )
  return f"{len(records)} videos: {counts}"


def _decode(record: echonet.VideoRecord):
  """The video's frames, or the error that names why it cannot be decoded.

  A record with its own `VideoRecord.load` (CAMUS) gives ``(frames, masks, (ed, es))``.
  """
  try:
    return record.load() if record.load is not None else echonet.load_video(record.video_path)
  except echonet.EchoNetFormatError as e:
    return e


def _decode_in_order(
  records: Iterable[echonet.VideoRecord], window: int
) -> Iterator[tuple[echonet.VideoRecord, np.ndarray | echonet.EchoNetFormatError]]:
  """Yields (record, frames or decoding error) in input order, decoding up to `window` videos
  ahead in threads.

  The window bounds memory: at most `window` decoded videos wait for the writer.
  """
  with concurrent.futures.ThreadPoolExecutor(max(1, _DECODE_THREADS)) as pool:
    pending = collections.deque()
    for record in records:
      pending.append((record, pool.submit(_decode, record)))
      if len(pending) >= window:
        record_, future = pending.popleft()
        yield record_, future.result()
    while pending:
      record_, future = pending.popleft()
      yield record_, future.result()


def _lv_masks(
  record: echonet.VideoRecord, frames: np.ndarray
) -> tuple[np.ndarray | None, str | None]:
  """The ED and ES masks of a decoded video, uint8 [2, H, W], or None and why not.

  Both are drawn, or neither: not without tracings (no reason then: the reader has warned
  about those), nor when a traced frame is not among the decoded ones or its tracing cannot
  form a mask (`masks.mask_problem`; the reason, for the warning).
  """
  num_frames, height, width = frames.shape
  if record.ed_chords is None or record.es_chords is None:
    return None, None
  problems = []
  for phase, frame, chords in (
    ("ED", record.ed_frame, record.ed_chords),
    ("ES", record.es_frame, record.es_chords),
  ):
    if not 0 <= frame < num_frames:
      problems.append(f"{phase}: traced frame {frame} is not among the {num_frames} decoded")
    elif (problem := masks.mask_problem(chords, height, width)) is not None:
      problems.append(f"{phase}: {problem}")
  if problems:
    return None, "; ".join(problems)
  drawn = [masks.mask_from_chords(c, height, width) for c in (record.ed_chords, record.es_chords)]
  return np.stack(drawn), None


class EchonetDynamic(tfds.core.GeneratorBasedBuilder):
  """EchoNet-Dynamic echocardiogram videos with EF / ESV / EDV labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Grey uint8 frames (raw bytes), labels from FileList.csv, ED/ES frames.",
    "1.1.0": "Added the LV masks of the traced ED and ES frames, drawn from the tracings "
    "(ed_mask, es_mask, has_masks).",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Obtain EchoNet-Dynamic from https://echonet.github.io/dynamic/ (a research-use agreement is
  required) and pass the unpacked folder as `manual_dir`. It must contain:
    FileList.csv        FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split
    VolumeTracings.csv  FileName,X1,Y1,X2,Y2,Frame   (optional)
    Videos/<FileName>.avi
  Any folder in this layout works, e.g. one written by lvef_jax.data.synthetic.generate.
  """

  def __init__(
    self,
    *,
    index: list[echonet.VideoRecord] | None = None,
    skipped: dict[str, str] | None = None,
    **kwargs,
  ):
    """Builder over the folder later passed as `manual_dir`.

    Args:
      index: `echonet.load_dataset_index` of that folder, if the caller has validated it
        already: preparation then uses it instead of validating the folder a second time
        (every video opened again, every warning about the folder logged twice).
      skipped: ``data.on_bad_video=skip``: a video that fails to decode in full (damaged in
        the middle: validation decodes only its ends) is left out and recorded here
        (FileName -> reason). Without it, such videos stop the preparation with one error that
        lists every one of them in the split, and nothing prepared is kept.
      **kwargs: As for `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...).
    """
    super().__init__(**kwargs)
    self._validated_index = index
    self._skipped = skipped

  def _log_download_bytes(self) -> None:
    # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout here, bypassing
    # logging. Nothing is downloaded, and the sizes are unknown: the caller's log says what
    # happens instead (preparation.prepare's "preparing the dataset copy of ...").
    pass

  def _log_download_done(self) -> None:
    # Likewise TFDS's printed "Dataset ... downloaded and prepared to ..."; see above.
    pass

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's default resolves this through `importlib_resources`, a package it only
    # requires on Python < 3.9, so on 3.11 preparing any out-of-tree builder fails with
    # ModuleNotFoundError unless that backport happens to be installed.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built directly (not dataset_info_from_configs) because this package ships
    # no README/CITATIONS metadata files next to the builder.
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "EchoNet-Dynamic apical-4-chamber echocardiogram videos (grey frames) "
        "with ejection fraction and volumes."
      ),
      features=tfds.features.FeaturesDict(
        {
          # (frames, height, width): every dimension varies between videos in principle.
          "video": tfds.features.Tensor(
            shape=(None, None, None), dtype=np.uint8, encoding=VIDEO_ENCODING
          ),
          "file_name": tfds.features.Text(),
          "ef": tfds.features.Scalar(dtype=np.float32, doc="Ejection fraction, percent."),
          "esv": tfds.features.Scalar(dtype=np.float32, doc="End-systolic volume, mL."),
          "edv": tfds.features.Scalar(dtype=np.float32, doc="End-diastolic volume, mL."),
          "fps": tfds.features.Scalar(dtype=np.float32),
          "num_frames": tfds.features.Scalar(
            dtype=np.int32, doc="Frames actually stored (decoded), == video.shape[0]."
          ),
          "ed_frame": tfds.features.Scalar(dtype=np.int32, doc="Traced ED frame, -1 if none."),
          "es_frame": tfds.features.Scalar(dtype=np.int32, doc="Traced ES frame, -1 if none."),
          # (height, width) of the decoded frames; 0/1, raw bytes like the video.
          "ed_mask": tfds.features.Tensor(
            shape=(None, None), dtype=np.uint8, encoding=VIDEO_ENCODING
          ),
          "es_mask": tfds.features.Tensor(
            shape=(None, None), dtype=np.uint8, encoding=VIDEO_ENCODING
          ),
          "has_masks": tfds.features.Scalar(
            dtype=np.bool_,
            doc="Both masks drawn from the tracings; False: untraced, or a tracing that "
            "cannot form a mask (both masks all zero).",
          ),
        }
      ),
      supervised_keys=("video", "ef"),
      homepage="https://echonet.github.io/dynamic/",
      citation="""@article{ouyang2020video,
  title={Video-based AI for beat-to-beat assessment of cardiac function},
  author={Ouyang, David and others}, journal={Nature}, volume={580}, pages={252--256},
  year={2020}}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    records = self._validated_index
    if records is None:
      try:
        root = dl_manager.manual_dir
      except AssertionError as e:  # TFDS's "missing or empty manual dir" error.
        raise echonet.EchoNetFormatError(str(e)) from e
      # Validate the whole folder (every video opened) before TFDS writes anything, so a bad
      # folder fails in seconds instead of after hours of writing, and leaves nothing behind.
      records = echonet.load_dataset_index(os.fspath(root))
      logging.info("EchoNet folder %s: %s.", root, split_counts(records))
    by_split = {split: [record for record in records if record.split == split] for split in SPLITS}
    return {split: self._generate_examples(rows) for split, rows in by_split.items()}

  def _generate_examples(self, records: list[echonet.VideoRecord]):
    """Yields (file_name, example); file names are unique, as load_dataset_index checks."""
    failed, frame_counts, sizes, no_masks, written = [], [], [], [], 0
    for i, (record, frames) in enumerate(_decode_in_order(records, 4 * _DECODE_THREADS)):
      if (i + 1) % _LOG_EVERY == 0:
        logging.info("Prepared %d/%d videos of split %s.", i + 1, len(records), record.split)
      if isinstance(frames, echonet.EchoNetFormatError):
        failed.append((record.file_name, str(frames)))
        continue
      ed_frame, es_frame = record.ed_frame, record.es_frame
      if record.load is not None:  # Converted by its reader (CAMUS): masks and ED/ES with it.
        frames, lv_masks, (ed_frame, es_frame) = frames
      else:
        # The stored frames are the truth the pipeline samples from; FileList's metadata
        # columns disagreeing with them is worth knowing about but not fatal (the official
        # loader ignores them too), and is summarised below rather than logged per video.
        if frames.shape[0] != record.num_frames:
          frame_counts.append(
            f"{record.file_name} ({record.num_frames} listed, {frames.shape[0]} decoded)"
          )
        if frames.shape[1:] != (record.frame_height, record.frame_width):
          sizes.append(
            f"{record.file_name} ({record.frame_height}x{record.frame_width} listed, "
            f"{frames.shape[1]}x{frames.shape[2]} decoded)"
          )
        lv_masks, problem = _lv_masks(record, frames)
        if problem is not None:
          no_masks.append(f"{record.file_name} ({problem})")
      has_masks = lv_masks is not None
      if not has_masks:  # Still an EF example; its masks are all zero.
        lv_masks = np.zeros((2, *frames.shape[1:]), np.uint8)
      written += 1
      yield (
        record.file_name,
        {
          "video": frames,
          "file_name": record.file_name,
          "ef": np.float32(record.ef),
          "esv": np.float32(record.esv),
          "edv": np.float32(record.edv),
          "fps": np.float32(record.fps),
          "num_frames": np.int32(frames.shape[0]),
          "ed_frame": np.int32(ed_frame),
          "es_frame": np.int32(es_frame),
          "ed_mask": lv_masks[0],
          "es_mask": lv_masks[1],
          "has_masks": has_masks,
        },
      )
    split = records[0].split if records else "?"
    for what, rows in (("NumberOfFrames", frame_counts), ("FrameHeight/FrameWidth", sizes)):
      if rows:
        logging.warning(
          "%d videos of split %s: FileList.csv's %s disagrees with the decoded "
          "video (the decoded frames are stored): %s",
          len(rows),
          split,
          what,
          echonet.name_list(rows),
        )
    if no_masks:
      logging.warning(
        "%d videos of split %s have a tracing that cannot form an LV mask (their EF labels are "
        "used; they have no masks): %s",
        len(no_masks),
        split,
        echonet.name_list(no_masks),
      )
    if failed and self._skipped is None:
      raise echonet.EchoNetFormatError(
        f"{len(failed)} videos of split {split} cannot be decoded in full (nothing was "
        "prepared; data.on_bad_video=skip leaves such videos out): "
        + echonet.name_list([message for _, message in failed])
      )
    if failed:
      self._skipped.update(failed)
      logging.warning(
        "data.on_bad_video=skip: %d videos of split %s fail to decode and are left out: %s",
        len(failed),
        split,
        echonet.name_list([name for name, _ in failed]),
      )
    if not written:
      raise echonet.EchoNetFormatError(f"split {split} has no video that decodes")
