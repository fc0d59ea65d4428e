"""Files of a checkpoint evaluation and of predictions on new videos: JSON, CSV and plots.

Everything is written to a temporary name and renamed into place, so a reader never sees a
half-written file and an interrupted evaluation leaves the previous one intact.
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from lvef_jax.evaluation import metrics
from lvef_jax.reporting import files, plots

# ``out_of_range``: 1 where EF_pred is outside 0-100 % (kept in the metrics, marked in the plots).
PREDICTION_COLUMNS = (
  "FileName",
  "EF",
  "EF_pred",
  "EF_pred_std",
  "EF_low",
  "EF_high",
  "n_clips",
  "out_of_range",
)
PREDICT_COLUMNS = (
  "FileName",
  "EF_pred",
  "EF_pred_std",
  "EF_low",
  "EF_high",
  "hf_class",
  "n_clips",
  "out_of_range",
  "error",
)
# ``{name}_strata.csv``: one row per (stratum, value) of ``report["strata"]``.
STRATA_COLUMNS = ("stratum", "value", "n", "rmse", "rmse_low", "rmse_high", "mae", "r2", "bias")


def _number(x: float) -> str:
  return f"{x:.4f}"


def write_evaluation(
  out_dir: pathlib.Path,
  name: str,
  report: dict,
  predictions,
  low: np.ndarray,
  high: np.ndarray,
  roc_curves: list[dict],
  title: str,
) -> list[pathlib.Path]:
  """Writes ``{name}.json``, ``{name}_predictions.csv`` and ``plots/{kind}_{name}.png``, and
  ``{name}_strata.csv`` when the report has a ``strata`` block (`write_strata`).

  Args:
    out_dir: ``DIR/eval``.
    name: ``{split}_{clips}``, e.g. ``test_all``.
    report: ``metrics.evaluation_report`` (plus what the caller adds: checkpoint, options).
    predictions: an ``evaluator.VideoPredictions``.
    low, high: the prediction interval of each video.
    roc_curves: ``metrics.roc`` of each threshold.
    title: what was evaluated, for the plot titles.

  Returns:
    The files written.
  """
  rows = [
    [f, _number(e), _number(p), _number(s), _number(lo), _number(hi), int(n), int(outside)]
    for f, e, p, s, lo, hi, n, outside in zip(
      predictions.file_name,
      predictions.ef,
      predictions.ef_pred,
      predictions.ef_pred_std,
      low,
      high,
      predictions.n_clips,
      metrics.out_of_range(predictions.ef_pred),
    )
  ]
  json_path = out_dir / f"{name}.json"
  csv_path = out_dir / f"{name}_predictions.csv"
  files.write_text(csv_path, files.csv_text(PREDICTION_COLUMNS, rows))
  files.write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")

  def ci(metric: str, digits: int) -> str:
    m = report[metric]
    lo, hi = m["ci95"]
    return f"{m['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

  summary = f"RMSE {ci('rmse', 2)}, MAE {ci('mae', 2)}, R² {ci('r2', 3)} (n={report['n']})"
  plot_dir = out_dir / "plots"
  paths = {kind: plot_dir / f"{kind}_{name}.png" for kind in ("scatter", "bland_altman", "roc")}
  full_title = f"{title}\n{summary}"
  plots.scatter(predictions.ef, predictions.ef_pred, full_title, paths["scatter"])
  plots.bland_altman(predictions.ef, predictions.ef_pred, full_title, paths["bland_altman"])
  plots.roc_curves(roc_curves, f"{title}: detecting low EF", paths["roc"])
  written = [json_path, csv_path, *paths.values()]
  if report.get("strata"):
    written.append(write_strata(out_dir / f"{name}_strata.csv", report["strata"]))
  if report.get("calibration") is not None:
    paths["calibration"] = plot_dir / f"calibration_{name}.png"
    coverage = report.get("interval_coverage") or {}
    plots.calibration(
      report["calibration"],
      f"{title}: interval calibration (90 % interval covers "
      f"{coverage.get('coverage', float('nan')):.0%})",
      paths["calibration"],
    )
    written.append(paths["calibration"])
  return written


def write_strata(path: pathlib.Path, strata: dict) -> pathlib.Path:
  """``STRATA_COLUMNS`` of each group of ``metrics.strata_metrics``; an R² without variance to
  explain is an empty cell. Returns ``path``."""

  def number(x) -> str:
    return "" if x is None else _number(x)

  rows = [
    [
      stratum,
      value,
      m["n"],
      number(m["rmse"]["value"]),
      *map(number, m["rmse"]["ci95"]),
      number(m["mae"]["value"]),
      number(m["r2"]["value"]),
      number(m["bias"]),
    ]
    for stratum, groups in strata.items()
    for value, m in groups.items()
  ]
  files.write_text(path, files.csv_text(STRATA_COLUMNS, rows))
  return path


def write_predictions(
  path: pathlib.Path, rows: Sequence[dict], columns: Sequence[str] = PREDICT_COLUMNS
) -> None:
  """``--mode=predict``'s CSV: one row per input file (``columns``)."""

  def cell(row, key):
    value = row.get(key)
    if value is None:
      return ""
    return _number(value) if isinstance(value, float) else value

  files.write_text(path, files.csv_text(columns, [[cell(r, k) for k in columns] for r in rows]))
