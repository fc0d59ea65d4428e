"""Input normalisation computed on the train split, as EchoNet-Dynamic computes it.

The video ResNets (``configs/r2plus1d.py``) take each channel as ``(pixel - mean) / std`` in
pixel units, with the mean and standard deviation of the train split's pixels
(EchoNet-Dynamic's ``get_mean_and_std``: up to 1,024 training videos, every frame, every
pixel). Training and ``--mode=import`` fill ``model.input_mean`` / ``input_std`` in with
:func:`resolve` when they are not given, and the run's ``config.json`` records them, so
evaluation and prediction never need the data.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from lvef_jax.data import pipeline, preparation
from lvef_jax.errors import ConfigError

MAX_VIDEOS = 1024  # EchoNet-Dynamic's sample


def needs_statistics(model_cfg) -> bool:
  """Whether ``model_cfg`` normalises by train-split statistics it does not have yet."""
  return "input_mean" in model_cfg and (model_cfg.input_mean is None or model_cfg.input_std is None)


def pixel_statistics(builder, data_cfg, max_videos: int = MAX_VIDEOS) -> tuple[float, float]:
  """Mean and standard deviation of the pixels of up to ``max_videos`` train videos (evenly
  spaced through the split, every frame, at ``data.image_size`` as the model sees them)."""
  settings = preparation.DataSettings.from_cfg(data_cfg)
  count = preparation.num_examples(builder, "train")
  if count == 0:
    raise ConfigError(
      "the train split is empty: no pixels to compute model.input_mean and input_std from"
    )
  chosen = set(np.linspace(0, count - 1, min(count, max_videos)).round().astype(int).tolist())
  decode = preparation.decode_video(builder)
  ds = preparation.read_examples(builder, "train").map(
    lambda ex: pipeline.resize_frames(decode(ex["video"]), settings.image_size),
    num_parallel_calls=settings.parallel,
    deterministic=True,
  )
  total = total_sq = pixels = 0.0
  for index, video in enumerate(ds.as_numpy_iterator()):
    if index in chosen:
      values = video.astype(np.float64)
      total += values.sum()
      total_sq += np.square(values).sum()
      pixels += values.size
  mean = total / pixels
  return float(mean), float(np.sqrt(max(total_sq / pixels - mean * mean, 0.0)))


def resolve(config, builder) -> None:
  """Fills ``config.model.input_mean`` / ``input_std`` from the train split where not given."""
  if not needs_statistics(config.model):
    return
  mean, std = pixel_statistics(builder, config.data)
  with config.unlocked():
    if config.model.input_mean is None:
      config.model.input_mean = round(mean, 4)
    if config.model.input_std is None:
      config.model.input_std = round(std, 4)
  logging.info(
    "input normalisation from the train split (up to %d videos): model.input_mean=%s "
    "model.input_std=%s",
    MAX_VIDEOS,
    config.model.input_mean,
    config.model.input_std,
  )
