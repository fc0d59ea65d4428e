"""Scores of a segmentation model on a split's traced frames: Dice overall, at ED and at ES.

Every traced end-diastolic and end-systolic frame of the split (`pipeline.frame_batches`) is
segmented (a pixel is the LV where its logit is positive) and compared with the mask drawn
from its tracing. Dice is EchoNet-Dynamic's: ``2 * intersection / (predicted + traced)``
summed over the frames (overall, ED frames, ES frames), so a large ventricle weighs more
than a small one; each frame's own Dice goes into the split's CSV. The loss is the binary
cross-entropy per pixel, the value the best epoch is chosen by.

Nothing here imports the trainer: training hands over its current weights as a prediction
function (``[B, H, W]`` logits, or ``[members, B, H, W]`` for a several-member run), and
``launch.py --mode=eval`` a restored `Predictor`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lvef_jax import sharding
from lvef_jax.evaluation.evaluator import local_rows
from lvef_jax.reporting import files

PHASES = ("ED", "ES")
SCORE_KEYS = ("dice", "dice_ed", "dice_es", "loss", "n")


def pixel_loss(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Binary cross-entropy of each frame's logits, summed over its pixels: ``[..., B]``."""
  return optax.sigmoid_binary_cross_entropy(logits, mask).sum(axis=(-2, -1))


@jax.jit
def _frame_sums(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Per frame: intersection, predicted and traced pixel counts, summed BCE: ``[..., B, 4]``."""
  predicted = logits > 0
  traced = mask > 0.5
  return jnp.stack(
    [
      jnp.sum(predicted & traced, axis=(-2, -1)).astype(jnp.float32),
      jnp.sum(predicted, axis=(-2, -1)).astype(jnp.float32),
      jnp.sum(traced, axis=(-2, -1)).astype(jnp.float32),
      pixel_loss(logits, mask),
    ],
    axis=-1,
  )


@dataclasses.dataclass
class FrameScores:
  """One row per traced frame of a split (ED and ES of every video with usable tracings)."""

  video_index: np.ndarray  # position in `preparation.split_listing`
  phase: np.ndarray  # 0 ED, 1 ES
  intersection: np.ndarray  # pixels both predicted and traced
  predicted: np.ndarray  # pixels predicted LV
  traced: np.ndarray  # pixels of the tracing's mask
  loss: np.ndarray  # binary cross-entropy summed over the frame's pixels
  pixels: int  # pixels a frame

  def dice(self) -> np.ndarray:
    """Each frame's Dice (1 where neither the prediction nor the tracing has a pixel)."""
    total = self.predicted + self.traced
    return np.where(total > 0, 2 * self.intersection / np.maximum(total, 1), 1.0)

  def summary(self) -> dict:
    """``dice`` (every frame pooled), ``dice_ed``, ``dice_es``, per-pixel ``loss``, ``n``."""

    def pooled(keep):
      total = self.predicted[keep].sum() + self.traced[keep].sum()
      return float(2 * self.intersection[keep].sum() / total) if total > 0 else float("nan")

    every = np.ones(len(self.phase), bool)
    return {
      "dice": pooled(every),
      "dice_ed": pooled(self.phase == 0),
      "dice_es": pooled(self.phase == 1),
      "loss": float(self.loss.sum() / max(1, len(self.loss) * self.pixels)),
      "n": int(len(self.phase)),
    }


def score_frames(
  predict_fn, builder, split: str, data_cfg, mesh, *, batch_size: int, members: int = 1
) -> list[FrameScores]:
  """Segments every traced frame of ``split``; one `FrameScores` a member.

  Args:
    predict_fn: a device batch of frames ``[B, S, S, 1]`` -> logits ``[B, S, S]`` (or
      ``[members, B, S, S]``).
    batch_size: frames per compiled call (global; the last batch is padded).
  """
  from lvef_jax.data import pipeline  # TensorFlow: only where a prepared split is read

  local = sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
  host_batches = pipeline.frame_batches(
    builder,
    split,
    data_cfg,
    batch_size=local,
    train=False,
    shard_index=jax.process_index(),
    num_shards=jax.process_count(),
  )
  rows, index, phase, valid = [], [], [], []
  for host, device in sharding.device_prefetch(
    host_batches, mesh, keys=("image", "mask"), size=data_cfg.prefetch
  ):
    sums = _frame_sums(predict_fn(device["image"]), device["mask"])
    rows.append(local_rows(sums, axis=1 if members > 1 else 0))
    index.append(host["video_index"])
    phase.append(host["phase"])
    valid.append(host["valid"])
  size = data_cfg.image_size
  if not rows:
    empty = np.zeros(0)
    return [FrameScores(empty.astype(int), empty.astype(int), empty, empty, empty, empty, size**2)]
  sums = np.concatenate(rows, axis=-2)  # [(members,) frames, 4]
  index, phase, valid = (np.concatenate(x) for x in (index, phase, valid))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    def everyone(x):
      return np.concatenate(list(multihost_utils.process_allgather(x)), axis=-2 if x is sums else 0)

    sums, index, phase, valid = (everyone(x) for x in (sums, index, phase, valid))
  keep = valid > 0
  member_sums = sums if members > 1 else sums[None]
  return [
    FrameScores(
      video_index=index[keep],
      phase=phase[keep],
      intersection=s[keep, 0],
      predicted=s[keep, 1],
      traced=s[keep, 2],
      loss=s[keep, 3],
      pixels=size * size,
    )
    for s in member_sums
  ]


def write_split(workdir: pathlib.Path, split: str, scores: FrameScores, file_names) -> None:
  """``segmentation_{split}.csv``: one row per traced frame (FileName, Phase, Dice, the
  traced and predicted areas in pixels at the model's frame size, the per-pixel loss)."""
  dice = scores.dice()
  rows = [
    [
      file_names[i],
      PHASES[p],
      f"{d:.4f}",
      int(t),
      int(a),
      f"{loss / scores.pixels:.5f}",
    ]
    for i, p, d, t, a, loss in zip(
      scores.video_index, scores.phase, dice, scores.traced, scores.predicted, scores.loss
    )
  ]
  header = ["FileName", "Phase", "Dice", "TracedArea", "PredictedArea", "Loss"]
  files.write_text(workdir / f"segmentation_{split}.csv", files.csv_text(header, rows))
