"""This project's benchmark runs beside the paper's Tables 1-10, and the paper's Figures 15-16.

Reads sweep directories only (``ROOT/<experiment>/results.json``, ``metrics.jsonl``,
``predictions_test.csv``, ``config.json``, as written by the trainer) and the paper's printed
values (``paper_results.csv`` next to this file). Imports no JAX, TensorFlow or training code, so
it runs anywhere the results were copied to. ``python -m lvef_jax.report`` is its command line.

Each root is one sweep of one recipe; several roots show as side-by-side blocks of columns.
A run without ``results.json`` is missing: its cells show the paper's value alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from lvef_jax import experiments
from lvef_jax.errors import LvefError
from lvef_jax.reporting import files, plots

plt = plots.plt

PAPER_CSV = pathlib.Path(__file__).with_name("paper_results.csv")
METRICS = ("rmse", "mae", "r2")
METRIC_NAMES = {"rmse": "RMSE", "mae": "MAE", "r2": "R²"}
# Display precision in tables.md; tables.csv keeps full precision.
DIGITS = {"rmse": 2, "mae": 2, "r2": 3}
# True-EF ranges of the error table: [low, high), in EF percentage points.
EF_RANGES = (("<40", 0.0, 40.0), ("40-50", 40.0, 50.0), ("50-70", 50.0, 70.0), (">=70", 70.0, 1e9))
TABLE_TITLES = {
  1: "I3D: Inception stages after the stem",
  2: "I3D-mini: regression heads",
  3: "I3D-mini: Conv2 kernel",
  4: "I3D-original and I3D-mini: normalisation and Conv2 kernel",
  5: "Two-Stream: normalisation",
  6: "Fusion (New Combination, Dual Input, Single Input): normalisation and Conv2 kernel",
  7: "Fusion (Combination, Dual Input Truncated): normalisation",
  8: "CNN-RNN with a pretrained InceptionV3 (GRU)",
  9: "CNN-RNN from scratch (2-D I3D-mini): normalisation, GRU and LSTM",
  10: "Test RMSE of the key models across families",
}
FILES = (
  "tables.md",
  "tables.csv",
  "error_by_ef_range.csv",
  "generalization_gap.png",
  "performance_vs_generalization.png",
)


class ReportError(LvefError, ValueError):
  """A report input that cannot work: a missing root, two recipes under one root."""


@dataclasses.dataclass(frozen=True)
class PaperCell:
  """One number printed in the paper (always a test-set metric)."""

  table: int
  row: str
  column: str
  metric: str
  value: str  # as printed
  experiment: str  # the registry name this cell reports (an alias where the row is one)

  @property
  def number(self) -> float:
    return float(self.value)


def load_paper(path: pathlib.Path = PAPER_CSV) -> list[PaperCell]:
  with open(path, newline="") as f:
    return [
      PaperCell(int(r["table"]), r["row"], r["column"], r["metric"], r["value"], r["experiment"])
      for r in csv.DictReader(f)
    ]


@dataclasses.dataclass
class Run:
  """One finished run directory."""

  name: str
  directory: pathlib.Path
  best_epoch: int | None
  splits: dict[str, dict[str, float]]
  recipe: str | None = None
  runlocal: bool = False
  history: list[dict] = dataclasses.field(default_factory=list)
  ef: np.ndarray | None = None
  ef_pred: np.ndarray | None = None

  def metric(self, split: str, name: str) -> float:
    value = self.splits.get(split, {}).get(name)
    return float(value) if value is not None else math.nan

  def best_epoch_record(self) -> dict | None:
    return next((r for r in self.history if r.get("epoch") == self.best_epoch), None)


@dataclasses.dataclass
class Sweep:
  """One root: the runs of one recipe."""

  root: pathlib.Path
  recipe: str | None
  label: str
  runs: dict[str, Run]
  unfinished: list[str]
  warnings: list[str]


def _warn(warnings: list[str], message: str) -> None:
  logging.warning("%s", message)
  warnings.append(message)


def _read_results(path: pathlib.Path) -> tuple[int | None, dict]:
  data = json.loads(path.read_text())
  splits = data["splits"]
  test = splits["test"]
  for metric in METRICS:
    float(test[metric])  # a results file without the test metrics is unusable
  best = data.get("best_epoch")
  return (int(best) if best is not None else None), splits


def _read_history(path: pathlib.Path, warnings: list[str]) -> list[dict]:
  if not path.is_file():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError:
      _warn(warnings, f"{path}:{number}: not JSON; line skipped")
  return records


def _read_predictions(path: pathlib.Path, warnings: list[str]):
  if not path.is_file():
    return None, None
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    ef = np.array([float(r["EF"]) for r in rows], dtype=np.float64)
    pred = np.array([float(r["EF_pred"]) for r in rows], dtype=np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    _warn(warnings, f"{path}: unreadable predictions ({e}); left out of the EF-range table")
    return None, None
  return ef, pred


def _read_experiment_key(path: pathlib.Path, warnings: list[str]) -> dict:
  if not path.is_file():
    return {}
  try:
    experiment = json.loads(path.read_text()).get("experiment") or {}
  except (OSError, ValueError, AttributeError) as e:
    _warn(warnings, f"{path}: unreadable config ({e}); recipe unknown")
    return {}
  return experiment if isinstance(experiment, dict) else {}


def load_sweep(root: pathlib.Path) -> Sweep:
  """Reads every experiment's run directory under ``root``; absent or unfinished ones are missing.

  Raises:
    ReportError: ``root`` is not a directory, or it holds runs of more than one recipe.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ReportError(f"--root={root}: no such directory")
  runs: dict[str, Run] = {}
  unfinished: list[str] = []
  warnings: list[str] = []
  for name in experiments.names(include_aliases=False):
    directory = root / name
    results = directory / "results.json"
    if not results.is_file():
      if (directory / "metrics.jsonl").is_file():
        unfinished.append(name)
      continue
    try:
      best_epoch, splits = _read_results(results)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      _warn(
        warnings, f"{results}: unreadable results ({type(e).__name__}: {e}); run counted as missing"
      )
      continue
    key = _read_experiment_key(directory / "config.json", warnings)
    if key.get("name") not in (None, name):
      _warn(warnings, f"{directory}: its config.json names experiment {key['name']!r}")
    ef, ef_pred = _read_predictions(directory / "predictions_test.csv", warnings)
    runs[name] = Run(
      name=name,
      directory=directory,
      best_epoch=best_epoch,
      splits=splits,
      recipe=key.get("recipe"),
      runlocal=bool(key.get("runlocal", False)),
      history=_read_history(directory / "metrics.jsonl", warnings),
      ef=ef,
      ef_pred=ef_pred,
    )
  recipes: dict[str, list[str]] = {}
  for run in runs.values():
    if run.recipe:
      recipes.setdefault(run.recipe, []).append(run.name)
  if len(recipes) > 1:
    listing = "; ".join(
      f"{recipe}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
      for recipe, names in recipes.items()
    )
    raise ReportError(
      f"--root={root} holds runs of {len(recipes)} recipes ({listing}); "
      "give each recipe its own root"
    )
  recipe = next(iter(recipes), None)
  return Sweep(root, recipe, recipe or root.name, runs, unfinished, warnings)


def load_sweeps(roots: Sequence[pathlib.Path]) -> list[Sweep]:
  """One sweep per root; labels made unique by adding the directory where two would match."""
  if not roots:
    raise ReportError("no --root given")
  sweeps = [load_sweep(pathlib.Path(root)) for root in roots]
  labels = [s.label for s in sweeps]
  for sweep in sweeps:
    if labels.count(sweep.label) > 1:
      sweep.label = f"{sweep.label} ({sweep.root})"
  return sweeps


# ----------------------------------------------------------------------------- the tables


@dataclasses.dataclass(frozen=True)
class Comparison:
  cell: PaperCell
  sweep: Sweep
  run: Run | None

  @property
  def ours(self) -> float | None:
    if self.run is None:
      return None
    value = self.run.metric("test", self.cell.metric)
    return None if math.isnan(value) else value

  @property
  def diff(self) -> float | None:
    ours = self.ours
    return None if ours is None else ours - self.cell.number


def compare(paper: Iterable[PaperCell], sweeps: Sequence[Sweep]) -> list[Comparison]:
  return [
    Comparison(cell, sweep, sweep.runs.get(experiments.canonical(cell.experiment)))
    for cell in paper
    for sweep in sweeps
  ]


def _format_cell(comparison: Comparison) -> str:
  metric, paper = comparison.cell.metric, comparison.cell.number
  digits = DIGITS[metric]
  ours = comparison.ours
  if ours is None:
    return f"– ({paper:.{digits}f})"
  star = "*" if comparison.run.runlocal else ""
  return f"{ours:.{digits}f}{star} ({paper:.{digits}f}, {comparison.diff:+.{digits}f})"


def _ordered(values: Iterable) -> list:
  return list(dict.fromkeys(values))


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  def line(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

  return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _paper_table(table: int, comparisons: Sequence[Comparison], sweeps: Sequence[Sweep]):
  """The table in the paper's layout, one block of columns per sweep.

  A table with several model columns is split into one table per metric, so that the blocks of
  two sweeps stay readable side by side.
  """
  cells = [c for c in comparisons if c.cell.table == table]
  rows = _ordered(c.cell.row for c in cells)
  columns = _ordered(c.cell.column for c in cells)
  metrics = [m for m in METRICS if any(c.cell.metric == m for c in cells)]
  by_key = {(c.sweep.label, c.cell.row, c.cell.column, c.cell.metric): c for c in cells}
  groups = [metrics] if len(columns) == 1 or len(metrics) == 1 else [[m] for m in metrics]
  lines = [f"## Table {table}. {TABLE_TITLES.get(table, '')}".rstrip()]
  for group in groups:
    header = ["Row"]
    for sweep in sweeps:
      for column in columns:
        for metric in group:
          name = " ".join(filter(None, (column, METRIC_NAMES[metric])))
          header.append(f"{sweep.label}: {name}" if len(sweeps) > 1 else name)
    body = []
    for row in rows:
      line = [row]
      for sweep in sweeps:
        for column in columns:
          for metric in group:
            found = by_key.get((sweep.label, row, column, metric))
            line.append(_format_cell(found) if found else "-")
      body.append(line)
    if len(groups) > 1:
      lines += ["", f"{METRIC_NAMES[group[0]]}:"]
    lines += ["", *_markdown_table(header, body)]
  return lines


def _header(sweeps: Sequence[Sweep]) -> list[str]:
  total = len(experiments.EXPERIMENTS)
  lines = [
    "# This project's runs beside the paper's Tables 1-10",
    "",
    "Every number is a test-set metric (RMSE and MAE in EF percentage points). A cell reads "
    "`ours (paper, ours - paper)`; `– (paper)`: no finished run; `-`: the paper prints none. "
    "Rows that repeat a run of an earlier table show that run.",
    "",
    *_markdown_table(
      ["Block", "Recipe", "Root", "Finished runs"],
      [
        [s.label, s.recipe or "unknown", f"`{s.root}`", f"{len(s.runs)} of {total}"] for s in sweeps
      ],
    ),
  ]
  for sweep in sweeps:
    if sweep.unfinished:
      lines += [
        "",
        f"Unfinished in {sweep.label} (no results.json yet): {', '.join(sweep.unfinished)}.",
      ]
    smoke = [name for name, run in sweep.runs.items() if run.runlocal]
    if smoke:
      lines += [
        "",
        f"**Smoke tests** in {sweep.label} (`runlocal`, marked `*`): {', '.join(smoke)}. "
        "They ran for seconds on synthetic data; their numbers mean nothing.",
      ]
    for message in sweep.warnings:
      lines += ["", f"Warning: {message}"]
  return lines


def _long_rows(comparisons: Sequence[Comparison]) -> list[list]:
  rows = []
  for c in comparisons:
    ours, diff = c.ours, c.diff
    rows.append(
      [
        c.cell.table,
        c.cell.row,
        c.cell.column,
        c.cell.metric,
        c.sweep.recipe or "",
        str(c.sweep.root),
        c.cell.experiment,
        "" if ours is None else repr(ours),
        c.cell.value,
        "" if diff is None else repr(diff),
      ]
    )
  return rows


# ----------------------------------------------------------------------------- EF ranges


def error_by_ef_range(run: Run) -> list[tuple[str, int, float, float, float]]:
  """(range, n, MAE, RMSE, mean signed error = predicted - true) per true-EF range."""
  out = []
  for name, low, high in EF_RANGES:
    mask = (run.ef >= low) & (run.ef < high)
    err = run.ef_pred[mask] - run.ef[mask]
    if err.size:
      out.append(
        (
          name,
          int(err.size),
          float(np.mean(np.abs(err))),
          float(np.sqrt(np.mean(err**2))),
          float(np.mean(err)),
        )
      )
    else:
      out.append((name, 0, math.nan, math.nan, math.nan))
  return out


def _ef_range_section(sweeps: Sequence[Sweep]) -> tuple[list[str], list[list]]:
  csv_rows, body = [], []
  for sweep in sweeps:
    for name, run in sweep.runs.items():
      if run.ef is None:
        continue
      cells = [f"{sweep.label}: {name}" if len(sweeps) > 1 else name]
      for rng, n, mae, rmse, bias in error_by_ef_range(run):
        stats = ("" if math.isnan(v) else repr(v) for v in (mae, rmse, bias))
        csv_rows.append([sweep.recipe or "", str(sweep.root), name, rng, n, *stats])
        cells.append(f"{mae:.2f} / {rmse:.2f} / {bias:+.2f} (n={n})" if n else "(n=0)")
      body.append(cells)
  lines = [
    "## Test error by true-EF range",
    "",
    "MAE / RMSE / mean signed error (predicted - true), in EF points, from predictions_test.csv.",
    "",
  ]
  if body:
    header = ["Run", *(f"EF {name.replace('>=', '≥')}" for name, _, _ in EF_RANGES)]
    lines += _markdown_table(header, body)
  else:
    lines.append("No finished run has test predictions.")
  return lines, csv_rows


# ----------------------------------------------------------------------------- figures


def _points(sweeps: Sequence[Sweep]) -> list[tuple[str, Sweep, Run]]:
  return [
    (f"{sweep.label}: {name}" if len(sweeps) > 1 else name, sweep, run)
    for sweep in sweeps
    for name, run in sweep.runs.items()
  ]


def _no_runs(ax) -> None:
  ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
  ax.set_xticks([])
  ax.set_yticks([])


def generalization_gap_figure(sweeps: Sequence[Sweep], path: pathlib.Path) -> None:
  """Figure 15: per run, train - test RMSE/MAE/R² and val - train loss at the best epoch.

  A bar is red where the model does better on train than on test (val for the loss):
  overfitting; green otherwise.
  """
  points = _points(sweeps)
  panels = (
    ("RMSE: train - test", lambda r: r.metric("train", "rmse") - r.metric("test", "rmse"), -1),
    ("MAE: train - test", lambda r: r.metric("train", "mae") - r.metric("test", "mae"), -1),
    ("R²: train - test", lambda r: r.metric("train", "r2") - r.metric("test", "r2"), 1),
    ("loss (MSE): val - train, best epoch", _loss_gap, 1),
  )
  height = max(3.0, 0.3 * len(points) + 1.5)
  fig, axes = plt.subplots(1, len(panels), figsize=(16, height), sharey=True, layout="constrained")
  labels = [label for label, _, _ in points]
  for ax, (title, gap, overfit_sign) in zip(axes, panels):
    ax.set_title(title, fontsize=10)
    if not points:
      _no_runs(ax)
      continue
    values = np.array([gap(run) for _, _, run in points], dtype=np.float64)
    colors = ["tab:red" if v * overfit_sign > 0 else "tab:green" for v in values]
    y = np.arange(len(points))
    ax.barh(y, np.nan_to_num(values), color=colors)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
  if points:
    axes[0].invert_yaxis()  # the first run on top (the axes share y)
  fig.suptitle("Generalization gap (red: better on train, overfitting; green: otherwise)")
  plots._save(fig, path)


def _loss_gap(run: Run) -> float:
  record = run.best_epoch_record()
  if record is None or record.get("val_loss") is None or record.get("train_loss") is None:
    return math.nan
  return float(record["val_loss"]) - float(record["train_loss"])


def performance_figure(sweeps: Sequence[Sweep], path: pathlib.Path) -> None:
  """Figure 16: test RMSE (x) against the generalization gap, test - train RMSE (y).

  Overfitting models sit high; collapsed mean-predictors sit bottom-right (a small gap only
  because they learnt nothing).
  """
  fig, ax = plt.subplots(figsize=(8, 6), layout="constrained")
  points = _points(sweeps)
  if not points:
    _no_runs(ax)
  markers = "os^Dv<>"
  for index, sweep in enumerate(sweeps):
    mine = [(label, run) for label, s, run in points if s is sweep]
    if not mine:
      continue
    x = [run.metric("test", "rmse") for _, run in mine]
    y = [run.metric("test", "rmse") - run.metric("train", "rmse") for _, run in mine]
    ax.scatter(x, y, marker=markers[index % len(markers)], label=sweep.label)
    for (_, run), xi, yi in zip(mine, x, y):
      ax.annotate(run.name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if points:
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(title="recipe / root", fontsize=8)
  ax.set(
    xlabel="test RMSE (EF %)",
    ylabel="generalization gap: test - train RMSE (EF %)",
    title="Performance vs generalization",
  )
  ax.grid(alpha=0.3)
  plots._save(fig, path)


# ----------------------------------------------------------------------------- writing


def render_markdown(paper: Sequence[PaperCell], sweeps: Sequence[Sweep]) -> str:
  comparisons = compare(paper, sweeps)
  lines = _header(sweeps)
  for table in sorted({c.table for c in paper}):
    lines += ["", *_paper_table(table, comparisons, sweeps)]
  lines += ["", *_ef_range_section(sweeps)[0]]
  return "\n".join(lines) + "\n"


def write_report(roots: Sequence[pathlib.Path], out: pathlib.Path) -> str:
  """Writes ``FILES`` into ``out``; returns a one-line summary."""
  sweeps = load_sweeps(roots)
  paper = load_paper()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  comparisons = compare(paper, sweeps)
  files.write_text(out / "tables.md", render_markdown(paper, sweeps))
  files.write_text(
    out / "tables.csv",
    files.csv_text(
      ["table", "row", "column", "metric", "recipe", "root", "experiment", "ours", "paper", "diff"],
      _long_rows(comparisons),
    ),
  )
  files.write_text(
    out / "error_by_ef_range.csv",
    files.csv_text(
      ["recipe", "root", "experiment", "ef_range", "n", "mae", "rmse", "mean_error"],
      _ef_range_section(sweeps)[1],
    ),
  )
  generalization_gap_figure(sweeps, out / "generalization_gap.png")
  performance_figure(sweeps, out / "performance_vs_generalization.png")
  total = len(experiments.EXPERIMENTS)
  found = "; ".join(f"{s.label} ({s.root}): {len(s.runs)}/{total}" for s in sweeps)
  return f"wrote {', '.join(str(out / name) for name in FILES)}; runs found: {found}"
