"""A segmentation run applied to whole videos: LV areas, heartbeats, EF from the masks, and
the EF model's beat-to-beat estimate (``--segmentation=SEGDIR`` of ``--mode=eval/predict``).

EchoNet-Dynamic's published estimate comes from two models: a segmentation network finds the
left ventricle in every frame, the minima of its area mark the end-systoles, and the EF
model's clips that end at each end-systole are averaged per video. Here:

- `Segmenter` segments a video's every frame in fixed-size chunks (one compiled batch, the
  run's ``eval.batch_size`` frames) and keeps per frame only the area and the long-axis length
  (`beats.MaskStats`), writing the overlay video chunk by chunk: memory holds the decoded
  video and one chunk of masks, however long the video.
- `VideoSegmentation` holds what one video gave: the area curve, the detected end-systoles
  (`beats.end_systoles`, distances scaled by the frame rate), the beats, and the area-length
  EF of the masks (`beats.mask_ef`), a second estimate beside the network's.
- `beat_clips` cuts the EF model's clips ending at each end-systole (``--eval_clips=beats``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator

import jax
import numpy as np

from lvef_jax import sharding
from lvef_jax.data import clips as clip_layout
from lvef_jax.errors import ConfigError
from lvef_jax.evaluation import beats
from lvef_jax.evaluation.evaluator import local_rows
from lvef_jax.evaluation.predictor import predictors_from_run


@dataclasses.dataclass
class VideoSegmentation:
  """One video segmented: per-frame ``area`` and ``length`` (pixels at the segmentation
  model's frame size), the end-systolic frames, the beats as (ED, ES) frames, and the EF of the
  masks (``mask_ef``: ``ef``, ``beat_ef``, ``beats``)."""

  area: np.ndarray
  length: np.ndarray
  es_frames: np.ndarray
  beats: list
  mask_ef: dict

  @property
  def num_beats(self) -> int:
    return len(self.beats)


class Segmenter:
  """The segmentation run ``workdir`` (every member's logits averaged) as a function of videos.

  Attributes:
    image_size: the frame size the run was trained at; frames must come at this size.
    batch_size: frames segmented per compiled call (the run's ``eval.batch_size``).
  """

  def __init__(self, workdir, mesh, checkpoint: str = "best"):
    self.workdir = pathlib.Path(workdir)
    self.predictors = predictors_from_run(self.workdir, checkpoint, mesh=mesh)
    config = self.predictors[0].config
    if config.get("task", "ef") != "segmentation":
      raise ConfigError(
        f"--segmentation={workdir} is a run of task {config.get('task', 'ef')!r}, not a "
        "segmentation run (train one with configs/segmentation.py)"
      )
    self.mesh = mesh
    self.image_size = int(config.data.image_size)
    self.batch_size = int(config.eval.batch_size)
    sharding.check_batch_size(self.batch_size, mesh, "eval.batch_size of the segmentation run")
    self.source = ", ".join(p.source for p in self.predictors)

  def masks(self, frames: np.ndarray) -> Iterator[np.ndarray]:
    """Boolean LV masks ``[n, S, S]`` of grey frames ``[T, S, S]``, chunk after chunk."""
    if frames.shape[1:] != (self.image_size, self.image_size):
      raise ValueError(
        f"frames of {frames.shape[1:]} given; the segmentation run takes "
        f"{self.image_size}x{self.image_size}"
      )
    for start in range(0, len(frames), self.batch_size):
      chunk = frames[start : start + self.batch_size]
      padded = np.zeros((self.batch_size, *frames.shape[1:], 1), np.uint8)
      padded[: len(chunk), ..., 0] = chunk
      image = sharding.shard_batch({"image": padded}, self.mesh)["image"]
      logits = sum(local_rows(p(image)) for p in self.predictors) / len(self.predictors)
      yield logits[: len(chunk)] > 0

  def analyse(
    self, frames: np.ndarray, fps: float, overlay: pathlib.Path | None = None
  ) -> VideoSegmentation:
    """Segments every frame of ``frames`` (at ``fps``) and finds its beats; with ``overlay``,
    writes the mask outline over the echo there (an AVI with the detected ED and ES frames
    marked: a second pass over the video once they are known, so no mask is kept)."""
    stats = beats.MaskStats()
    for chunk in self.masks(frames):
      stats.add(chunk)
    area, length = stats.area, stats.length
    es_frames = beats.end_systoles(area, fps)
    found = beats.beats(area, es_frames)
    if overlay is not None:
      from lvef_jax.reporting import segmentation_plots  # OpenCV drawing: only when asked

      size = self.image_size
      with segmentation_plots.OverlayWriter(
        overlay, fps, size, size, es_frames=es_frames, ed_frames=[ed for ed, _ in found]
      ) as writer:
        start = 0
        for chunk in self.masks(frames):
          writer.write(frames[start : start + len(chunk)], chunk)
          start += len(chunk)
    return VideoSegmentation(
      area=area,
      length=length,
      es_frames=es_frames,
      beats=found,
      mask_ef=beats.mask_ef(area, length, found),
    )


def beat_clips(frames: np.ndarray, es_frames: np.ndarray, clip_frames: int, period: int):
  """The EF model's clips (``[n, T, S, S, 1]``) that end at each end-systole, and whether they
  are beat clips: a video without a whole clip before any end-systole gets the clip from
  frame 0 instead (``False``), as the one-clip protocol scores it."""
  starts = beats.beat_clip_starts(es_frames, clip_frames, period)
  fallback = len(starts) == 0
  if fallback:
    starts = np.zeros(1, np.int64)
  clips = np.stack([clip_layout.take_clip(frames, s, clip_frames, period) for s in starts])
  return clips, not fallback


def split_videos(builder, split: str, sizes: tuple[int, ...]) -> Iterator[dict]:
  """Every video of ``split`` in split order, decoded one at a time and resized to each of
  ``sizes``: ``{"index", "fps", "ed_frame", "es_frame", "frames": {size: uint8 [T, S, S]}}``."""
  from lvef_jax.data import pipeline, preparation  # TensorFlow: only where a split is read

  decode = preparation.decode_video(builder)

  def resized(ex):
    video = decode(ex["video"])
    return {
      "fps": ex["fps"],
      "ed_frame": ex["ed_frame"],
      "es_frame": ex["es_frame"],
      **{f"frames_{s}": pipeline.resize_frames(video, s) for s in sizes},
    }

  ds = preparation.read_examples(builder, split).map(resized).prefetch(1)
  for index, ex in enumerate(ds.as_numpy_iterator()):
    yield {
      "index": index,
      "fps": float(ex["fps"]),
      "ed_frame": int(ex["ed_frame"]),
      "es_frame": int(ex["es_frame"]),
      "frames": {s: ex[f"frames_{s}"] for s in sizes},
    }


def only_one_process(what: str) -> None:
  """Segmenting whole videos runs in one process (each video's chunks on every device)."""
  if jax.process_count() > 1:
    raise ConfigError(f"{what} runs in one process; start it without --num_processes")
