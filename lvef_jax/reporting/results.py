"""The run directory's final files: ``results.json``, ``predictions_{split}.csv`` and plots."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lvef_jax.reporting import files, plots

RESULTS_FILE = "results.json"
RESULT_KEYS = ("rmse", "mae", "r2", "n")


def write_predictions(path: pathlib.Path, file_name, ef, ef_pred) -> None:
  """``FileName,EF,EF_pred`` CSV, written to a temporary file and renamed into place."""
  rows = [[n, f"{t:.4f}", f"{p:.4f}"] for n, t, p in zip(file_name, ef, ef_pred)]
  files.write_text(path, files.csv_text(["FileName", "EF", "EF_pred"], rows))


def write_split(workdir: pathlib.Path, split: str, file_name, ef, ef_pred, scores: dict) -> None:
  """The predictions CSV and the scatter and Bland-Altman plots of one split."""
  write_predictions(workdir / f"predictions_{split}.csv", file_name, ef, ef_pred)
  title = (
    f"{split}: RMSE {scores['rmse']:.2f}, MAE {scores['mae']:.2f}, "
    f"R² {scores['r2']:.3f} (n={scores['n']})"
  )
  plot_dir = workdir / "plots"
  plots.scatter(np.asarray(ef), np.asarray(ef_pred), title, plot_dir / f"scatter_{split}.png")
  plots.bland_altman(
    np.asarray(ef), np.asarray(ef_pred), title, plot_dir / f"bland_altman_{split}.png"
  )


def write_results(workdir: pathlib.Path, results: dict) -> None:
  files.write_text(workdir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def spread(scores: list[dict], keys: tuple[str, ...] = RESULT_KEYS) -> dict:
  """Several members' scores of one split as each metric's mean and sample standard
  deviation (``rmse``, ``rmse_sd``, ...; ``n`` as it is) for each of ``keys``."""
  out = {}
  for key in keys:
    values = np.array([s[key] for s in scores], np.float64)
    if key == "n":
      out["n"] = int(values[0])
      continue
    out[key] = float(values.mean())
    out[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return out


def format_table(results: dict) -> str:
  """The final table: one row per split (several members: mean ± SD, and the ensemble)."""
  if results.get("task") == "segmentation":
    return _segmentation_table(results)
  if "members" not in results:
    lines = [
      f"best epoch {results['best_epoch']}",
      f"{'split':<6} {'n':>6} {'RMSE':>8} {'MAE':>8} {'R2':>8}",
    ]
    for split, s in results["splits"].items():
      lines.append(f"{split:<6} {s['n']:>6d} {s['rmse']:>8.3f} {s['mae']:>8.3f} {s['r2']:>8.3f}")
    return "\n".join(lines)
  count = len(results["members"])
  lines = [
    f"{count} members, best epochs {', '.join(map(str, results['best_epochs']))}",
    f"{'split':<6} {'n':>6} {'RMSE (mean ± SD)':>17} {'MAE':>15} {'R2':>15} {'ensemble R2':>12}",
  ]
  for split, s in results["splits"].items():
    cells = [f"{s[k]:.3f} ± {s[k + '_sd']:.3f}" for k in ("rmse", "mae", "r2")]
    lines.append(
      f"{split:<6} {s['n']:>6d} {cells[0]:>17} {cells[1]:>15} {cells[2]:>15} "
      f"{results['ensemble'][split]['r2']:>12.3f}"
    )
  return "\n".join(lines)


def _segmentation_table(results: dict) -> str:
  """A segmentation run's table: Dice overall, at ED and ES, and the loss of each split."""
  several = "members" in results
  if several:
    head = f"{len(results['members'])} members, best epochs "
    head += ", ".join(map(str, results["best_epochs"]))
  else:
    head = f"best epoch {results['best_epoch']}"
  lines = [head, f"{'split':<6} {'frames':>6} {'Dice':>15} {'Dice ED':>15} {'Dice ES':>15}"]
  for split, s in results["splits"].items():
    cells = [
      f"{s[k]:.3f} ± {s[k + '_sd']:.3f}" if several else f"{s[k]:.3f}"
      for k in ("dice", "dice_ed", "dice_es")
    ]
    lines.append(f"{split:<6} {s['n']:>6d} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}")
  return "\n".join(lines)
