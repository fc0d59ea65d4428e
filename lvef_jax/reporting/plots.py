"""The paper's figures for one run: prediction vs truth, Bland-Altman, training history."""

from __future__ import annotations

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lvef_jax.evaluation import metrics  # noqa: E402

# Heart-failure classes by EF (ESC): reduced < 40, mildly reduced 40-49, preserved >= 50.
HF_THRESHOLDS = (40.0, 50.0)


def _save(fig, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.stem + ".tmp.png")
  fig.savefig(tmp, dpi=120, bbox_inches="tight")
  plt.close(fig)
  tmp.replace(path)  # a reader never sees a half-written figure


def _mark_outside(ax, x: np.ndarray, y: np.ndarray, outside: np.ndarray) -> None:
  """The points of predictions outside 0-100 % (already moved to the edge) as red triangles."""
  if outside.any():
    ax.scatter(
      x[outside],
      y[outside],
      s=24,
      marker="^",
      color="tab:red",
      clip_on=False,
      zorder=3,
      label=f"{int(outside.sum())} predicted outside 0-100 % (at the edge)",
    )


def scatter(ef: np.ndarray, ef_pred: np.ndarray, title: str, path: pathlib.Path) -> None:
  """Predicted vs true EF with the identity line and the heart-failure class bands, on 0-100 %
  axes; a prediction outside them is drawn at the edge as a red triangle."""
  ef, ef_pred = np.asarray(ef, np.float64), np.asarray(ef_pred, np.float64)
  fig, ax = plt.subplots(figsize=(5, 5))
  low, high = metrics.EF_RANGE
  for threshold in HF_THRESHOLDS:
    ax.axvline(threshold, color="0.85", lw=0.8, zorder=0)
    ax.axhline(threshold, color="0.85", lw=0.8, zorder=0)
  ax.plot([low, high], [low, high], "k--", lw=1, label="identity")
  outside = metrics.out_of_range(ef_pred)
  ax.scatter(ef[~outside], ef_pred[~outside], s=8, alpha=0.6)
  _mark_outside(ax, np.clip(ef, low, high), np.clip(ef_pred, low, high), outside)
  ax.set(
    xlim=(low, high), ylim=(low, high), xlabel="true EF (%)", ylabel="predicted EF (%)", title=title
  )
  ax.set_aspect("equal")
  ax.legend(loc="upper left", fontsize=8)
  _save(fig, path)


def bland_altman(ef: np.ndarray, ef_pred: np.ndarray, title: str, path: pathlib.Path) -> None:
  """Difference (predicted - true) against the mean, with the bias and ±1.96 SD limits; the mean
  axis spans 0-100 % and a prediction outside 0-100 % is a red triangle."""
  ef, ef_pred = np.asarray(ef, np.float64), np.asarray(ef_pred, np.float64)
  mean = (ef + ef_pred) / 2
  diff = ef_pred - ef
  bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
  fig, ax = plt.subplots(figsize=(6, 4))
  outside = metrics.out_of_range(ef_pred)
  ax.scatter(mean[~outside], diff[~outside], s=8, alpha=0.6)
  _mark_outside(ax, np.clip(mean, *metrics.EF_RANGE), diff, outside)
  ax.axhline(bias, color="k", lw=1, label=f"mean difference {bias:+.2f}")
  for sign in (-1, 1):
    limit = bias + sign * 1.96 * sd
    ax.axhline(
      limit, color="r", ls="--", lw=1, label=f"{'+' if sign > 0 else '-'}1.96 SD {limit:+.2f}"
    )
  ax.set(
    xlim=metrics.EF_RANGE,
    xlabel="mean of true and predicted EF (%)",
    ylabel="predicted - true EF (%)",
    title=title,
  )
  ax.legend(loc="best", fontsize=8)
  _save(fig, path)


def history(records: Sequence[dict], path: pathlib.Path) -> None:
  """Loss and RMSE per epoch for train and val (a segmentation run: its BCE loss and the
  validation Dice, overall and at ED and ES)."""
  epochs = [r["epoch"] for r in records]
  segmentation = "val_dice" in records[0]
  fig, (ax_loss, ax_rmse) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
  ax_loss.plot(epochs, [r["val_loss"] for r in records], "o-", label="val")
  what = "BCE loss per pixel" if segmentation else "MSE loss"
  ax_loss.set(xlabel="epoch", ylabel=what, title="loss", yscale="log")
  if segmentation:
    for key, label in (("val_dice", "val"), ("val_dice_ed", "val ED"), ("val_dice_es", "val ES")):
      ax_rmse.plot(epochs, [r[key] for r in records], "o-", label=label)
    ax_rmse.set(xlabel="epoch", ylabel="Dice", title="Dice")
  else:
    ax_rmse.plot(
      epochs,
      [r["train_loss"] ** 0.5 for r in records],
      "o-",
      label="train (sqrt of mean batch loss)",
    )
    ax_rmse.plot(epochs, [r["val_rmse"] for r in records], "o-", label="val")
    ax_rmse.set(xlabel="epoch", ylabel="RMSE (EF %)", title="RMSE")
  for ax in (ax_loss, ax_rmse):
    ax.legend()
    ax.grid(alpha=0.3)
  _save(fig, path)


def roc_curves(curves: Sequence[dict], title: str, path: pathlib.Path) -> None:
  """ROC curves of ``metrics.roc`` for several EF thresholds, with each AUC in the legend.

  A curve whose AUC is None (a class without videos) is listed in the legend but not drawn.
  """
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
  for curve in curves:
    label = f"EF < {curve['threshold']:g}"
    counts = f"{curve['n_positive']} pos / {curve['n_negative']} neg"
    if curve.get("auc") is None:
      ax.plot([], [], " ", label=f"{label}: AUC undefined ({counts})")
      continue
    ax.plot(curve["fpr"], curve["tpr"], lw=1.5, label=f"{label}: AUC {curve['auc']:.3f} ({counts})")
  ax.set(
    xlim=(0, 1),
    ylim=(0, 1.01),
    xlabel="false-positive rate (1 - specificity)",
    ylabel="true-positive rate (sensitivity)",
    title=title,
  )
  ax.set_aspect("equal")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  _save(fig, pathlib.Path(path))


def calibration(curve: Sequence[dict], title: str, path: pathlib.Path) -> None:
  """Nominal vs empirical coverage of prediction intervals (``metrics.calibration_curve``).

  A calibrated model's points lie on the identity line; points below it mean intervals that are
  too narrow (overconfident). An empty ``curve`` gives the axes with a note.
  """
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
  if curve:
    nominal = [point["nominal"] for point in curve]
    coverage = [point["coverage"] for point in curve]
    ax.plot(nominal, coverage, "o-", label="empirical")
    ax.legend(loc="upper left")
  else:
    ax.text(0.5, 0.5, "no predictive uncertainty", ha="center", va="center", color="0.4")
  ax.set(
    xlim=(0, 1.01),
    ylim=(0, 1.01),
    xlabel="nominal coverage of the interval",
    ylabel="fraction of true EF inside",
    title=title,
  )
  ax.set_aspect("equal")
  ax.grid(alpha=0.3)
  _save(fig, pathlib.Path(path))
