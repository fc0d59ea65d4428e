"""This project's benchmark runs beside the paper's Tables 1-10, and the paper's Figures 15-16;
then EchoNet-Dynamic's models beside EchoNet-Dynamic's published figures.

Reads sweep directories only (``ROOT/<experiment>/results.json``, ``metrics.jsonl``,
``predictions_test.csv``, ``config.json``, as written by the trainer, and the reports of
``--mode=eval`` on external datasets, ``eval/external/<dataset>/``) and the reference values
(``paper_results.csv`` next to this file). Imports no JAX, TensorFlow or training code, so
it runs anywhere the results were copied to. ``python -m lvef_jax.report`` is its command line.

``paper_results.csv`` has one line per printed number: its ``table`` (1-10, the paper's; a
name such as ``echonet`` for a block past the paper, `TABLE_TITLES`), ``row``, ``column``,
``metric``, ``value`` as printed and the ``experiment`` it reports. Its lines make each table's
rows and columns; an empty ``value`` is a cell with no reference value (a model whose figure
was not published), which shows ours alone.

Each root is one sweep of one recipe; several roots show as side-by-side blocks of columns.
A run without ``results.json`` is missing: its cells show the paper's value alone. A run of
several members (``train.seeds=K``, ``python -m lvef_jax.sweep --seeds=K``) shows the mean and
SD over its members; the comparisons table (``experiments.COMPARISONS``) tests the paper's
pairwise claims against that spread. A run scored on external datasets (CAMUS,
EchoNet-Pediatric: ``eval/external/<dataset>/all_*.json``) adds a row per dataset to the
"External validation" block, beside its own test scores, and to ``external.csv``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import math
import pathlib
from typing import Iterable, Sequence

from absl import logging
import matplotlib.legend
import matplotlib.lines
import matplotlib.patches
import matplotlib.transforms
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
  "echonet": "Past the paper: EchoNet-Dynamic's models",
}
# What a block past the paper compares with, above its table.
TABLE_CAPTIONS = {
  "echonet": (
    "EchoNet-Dynamic's video ResNets (the `echonet/` experiments), trained with "
    "EchoNet-Dynamic's recipe whatever the root's recipe. A cell reads `ours (EchoNet-Dynamic's, "
    "ours - theirs)`: ours is results.json's test metric, every clip of each test video "
    "averaged (clips one frame apart); theirs are the test figures of R(2+1)D-18, 32 frames "
    "every 2nd, published in Ouyang et al., Nature 2020: **beat-to-beat** (each beat of the "
    "video, located by their segmentation model, predicted and averaged; MAE 4.05, RMSE 5.32, "
    "R² 0.81) and from **one clip** (RMSE 5.56). R3D-18 and MC3-18 have no reference value "
    "here (none taken from a published table): a cell without parentheses is ours alone."
  ),
}
# A K-member cell marks the paper's value when it lies more than this many SDs from our mean.
OUTSIDE_SDS = 2.0
OUTSIDE_MARK = "†"
SPREAD_CAPTION = (
  "A cell `mean ± SD` is a run of several seeds: the mean and the sample SD of its members' "
  f"values. `{OUTSIDE_MARK}` after the paper's value: it lies outside our mean ± "
  f"{OUTSIDE_SDS:g} SD."
)
# The comparisons table's interval: a two-sided Welch t interval at this level.
INTERVAL_LEVEL = 0.95
FILES = (
  "tables.md",
  "tables.csv",
  "comparisons.csv",
  "error_by_ef_range.csv",
  "generalization_gap.png",
  "performance_vs_generalization.png",
  "performance_vs_generalization.csv",
)
# Written only when some run has an external evaluation (eval/external/<dataset>/).
EXTERNAL_FILE = "external.csv"
FAMILY_NAMES = {
  "i3d": "I3D",
  "two_stream": "Two-Stream",
  "fusion": "Fusion",
  "cnn_rnn": "CNN-RNN",
  "r2plus1d": "Video ResNet (EchoNet-Dynamic)",
}
FAMILY_MARKERS = {"i3d": "o", "two_stream": "s", "fusion": "^", "cnn_rnn": "D", "r2plus1d": "v"}
OTHER_MARKER = "P"  # a family without its own


class ReportError(LvefError, ValueError):
  """A report input that cannot work: a missing root, two recipes under one root."""


@dataclasses.dataclass(frozen=True)
class PaperCell:
  """One number printed in the paper (always a test-set metric), or in a block past the paper
  the reference value of a published model (``value`` empty: none published)."""

  table: int | str  # the paper's table number, or the name of a block past the paper
  row: str
  column: str
  metric: str
  value: str  # as printed; "" where there is none
  experiment: str  # the registry name this cell reports (an alias where the row is one)

  @property
  def printed(self) -> bool:
    return self.value != ""

  @property
  def number(self) -> float:
    return float(self.value) if self.printed else math.nan

  @property
  def in_paper(self) -> bool:
    """A cell of the paper's Tables 1-10 (not of a block past the paper)."""
    return isinstance(self.table, int)


def _table_key(text: str) -> int | str:
  return int(text) if text.isdigit() else text


def load_paper(path: pathlib.Path = PAPER_CSV) -> list[PaperCell]:
  with open(path, newline="") as f:
    return [
      PaperCell(
        _table_key(r["table"]), r["row"], r["column"], r["metric"], r["value"], r["experiment"]
      )
      for r in csv.DictReader(f)
    ]


def _number(value) -> float:
  return float(value) if value is not None else math.nan


def mean_sd(values) -> tuple[float, float]:
  """The mean and the sample SD (ddof=1) of ``values``; the SD is NaN for fewer than two."""
  values = np.asarray(values, dtype=np.float64)
  if not values.size:
    return math.nan, math.nan
  sd = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
  return float(np.mean(values)), sd


@dataclasses.dataclass(frozen=True)
class ExternalScore:
  """One run's ``--mode=eval`` on an external dataset: ``eval/external/<dataset>/``'s report of
  every video (``all_{clips}.json``), else of its test split."""

  dataset: str  # the folder's name: {data.format}-{the data root's folder}
  path: pathlib.Path
  split: str
  clips: str
  n: int
  rmse: float
  rmse_ci: tuple[float, float]
  mae: float
  r2: float  # NaN where the report has none
  r2_ci: tuple[float, float]


@dataclasses.dataclass
class Run:
  """One finished run directory: a solo run, or a run of several members (``members``)."""

  name: str
  directory: pathlib.Path
  best_epoch: int | None  # None for a run of several members (each has its own)
  splits: dict[str, dict[str, float]]  # several members: means, with ``<metric>_sd``
  recipe: str | None = None
  runlocal: bool = False
  history: list[dict] = dataclasses.field(default_factory=list)
  ef: np.ndarray | None = None
  ef_pred: np.ndarray | None = None
  # results.json's "members" (several members only): member, seed, hparams, best_epoch, splits.
  members: list[dict] = dataclasses.field(default_factory=list)
  # Its evaluations on external datasets (`_read_external`), one per dataset.
  external: list[ExternalScore] = dataclasses.field(default_factory=list)

  @property
  def several(self) -> bool:
    return len(self.members) > 1

  @property
  def count(self) -> int:
    """Its members (1 for a solo run)."""
    return max(1, len(self.members))

  def metric(self, split: str, name: str) -> float:
    return _number(self.splits.get(split, {}).get(name))

  def member_metric(self, split: str, name: str) -> np.ndarray:
    """One value per member (a solo run: its own value); NaN where a member has none."""
    if not self.members:
      return np.array([self.metric(split, name)])
    return np.array(
      [_number(m.get("splits", {}).get(split, {}).get(name)) for m in self.members],
      dtype=np.float64,
    )

  def sd(self, split: str, name: str) -> float:
    """The sample SD over the members, as results.json records it; NaN for a solo run."""
    if not self.several:
      return math.nan
    recorded = self.splits.get(split, {}).get(f"{name}_sd")
    return (
      _number(recorded) if recorded is not None else mean_sd(self.member_metric(split, name))[1]
    )

  def best_epoch_record(self) -> dict | None:
    return next((r for r in self.history if r.get("epoch") == self.best_epoch), None)

  def best_epoch_records(self) -> list[dict | None]:
    """Each member's metrics.jsonl record at its own best epoch (a solo run: the run's)."""
    if not self.members:
      return [self.best_epoch_record()]
    by_epoch = {r.get("epoch"): r for r in self.history}
    records = []
    for position, member in enumerate(self.members):
      index = member.get("member", position)
      per_member = (by_epoch.get(member.get("best_epoch")) or {}).get("members") or []
      records.append(per_member[index] if 0 <= index < len(per_member) else None)
    return records


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


def _read_results(path: pathlib.Path) -> tuple[int | None, dict, list[dict]]:
  """``(best_epoch, splits, members)`` of a results.json (``members`` empty for a solo run)."""
  data = json.loads(path.read_text())
  splits = data["splits"]
  test = splits["test"]
  for metric in METRICS:
    float(test[metric])  # a results file without the test metrics is unusable
  best = data.get("best_epoch")
  members = data.get("members") or []
  for member in members:
    for metric in METRICS:
      float(member["splits"]["test"][metric])
  return (int(best) if best is not None else None), splits, members


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


EXTERNAL_DIR = pathlib.Path("eval", "external")  # as lvef_jax.evaluation.commands writes it


def _external_report(folder: pathlib.Path) -> pathlib.Path | None:
  """The report that scores ``folder``'s dataset: ``all_*.json`` (every video), else
  ``test_*.json``; the latest written of several (``one`` and ``all`` clips), then by name."""
  for pattern in ("all_*.json", "test_*.json"):
    found = [p for p in folder.glob(pattern) if p.is_file()]
    if found:
      return max(found, key=lambda p: (p.stat().st_mtime, p.name))
  return None


def _read_external(directory: pathlib.Path, warnings: list[str]) -> list[ExternalScore]:
  """Every external dataset a run was scored on (``eval/external/<dataset>/``), by name."""
  scores = []
  root = directory / EXTERNAL_DIR
  for folder in sorted(root.iterdir()) if root.is_dir() else ():
    path = _external_report(folder) if folder.is_dir() else None
    if path is None:
      continue
    try:
      report = json.loads(path.read_text())
      r2 = report["r2"]
      r2_ci = r2.get("ci95") or (None, None)
      scores.append(
        ExternalScore(
          dataset=folder.name,
          path=path,
          split=str(report["split"]),
          clips=str(report["clips"]),
          n=int(report["n"]),
          rmse=float(report["rmse"]["value"]),
          rmse_ci=tuple(float(x) for x in report["rmse"]["ci95"]),
          mae=float(report["mae"]["value"]),
          r2=_number(r2["value"]),
          r2_ci=tuple(_number(x) for x in r2_ci),
        )
      )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      _warn(warnings, f"{path}: unreadable evaluation ({type(e).__name__}: {e}); left out")
  return scores


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
      best_epoch, splits, members = _read_results(results)
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
      members=members,
      external=_read_external(directory, warnings),
    )
    grids = _ordered(json.dumps(m.get("hparams") or {}, sort_keys=True) for m in members)
    if len(grids) > 1:
      _warn(
        warnings,
        f"{directory}: its members differ in hyperparameters (train.grid: {', '.join(grids)}); "
        "its mean ± SD mixes the grid's points",
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
    return None if ours is None or not self.cell.printed else ours - self.cell.number

  @property
  def sd(self) -> float | None:
    """The SD over the run's members; None for a solo (or missing) run."""
    if self.ours is None or not self.run.several:
      return None
    sd = self.run.sd("test", self.cell.metric)
    return None if math.isnan(sd) else sd

  @property
  def outside(self) -> bool:
    """The paper's value lies outside our mean ± ``OUTSIDE_SDS`` SD (several members only)."""
    sd = self.sd
    return (
      sd is not None and self.cell.printed and abs(self.cell.number - self.ours) > OUTSIDE_SDS * sd
    )


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
  if not comparison.cell.printed:  # no reference value: ours alone
    if ours is None:
      return "–"
    spread = "" if comparison.sd is None else f" ± {comparison.sd:.{digits}f}"
    return f"{ours:.{digits}f}{spread}{'*' if comparison.run.runlocal else ''}"
  if ours is None:
    return f"– ({paper:.{digits}f})"
  star = "*" if comparison.run.runlocal else ""
  sd = comparison.sd
  if sd is None:
    return f"{ours:.{digits}f}{star} ({paper:.{digits}f}, {comparison.diff:+.{digits}f})"
  mark = OUTSIDE_MARK if comparison.outside else ""
  return (
    f"{ours:.{digits}f} ± {sd:.{digits}f}{star} "
    f"({paper:.{digits}f}{mark}, {comparison.diff:+.{digits}f})"
  )


def _ordered(values: Iterable) -> list:
  return list(dict.fromkeys(values))


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  def line(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

  return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _heading(table: int | str) -> str:
  if isinstance(table, int):
    return f"## Table {table}. {TABLE_TITLES.get(table, '')}".rstrip()
  return f"## {TABLE_TITLES.get(table, table)}"


def _paper_table(table: int | str, comparisons: Sequence[Comparison], sweeps: Sequence[Sweep]):
  """The table in the paper's layout, one block of columns per sweep.

  Its columns are the (model column, metric) pairs that have cells. A table with several
  model columns of several metrics each is split into one table per metric, so that the blocks
  of two sweeps stay readable side by side.
  """
  cells = [c for c in comparisons if c.cell.table == table]
  rows = _ordered(c.cell.row for c in cells)
  columns = _ordered(c.cell.column for c in cells)
  metrics = [m for m in METRICS if any(c.cell.metric == m for c in cells)]
  has = {(c.cell.column, c.cell.metric) for c in cells}
  by_key = {(c.sweep.label, c.cell.row, c.cell.column, c.cell.metric): c for c in cells}
  several = [col for col in columns if sum((col, m) in has for m in metrics) > 1]
  groups = [metrics] if len(several) < 2 else [[m] for m in metrics]
  lines = [_heading(table)]
  if table in TABLE_CAPTIONS:
    lines += ["", TABLE_CAPTIONS[table]]
  if any(c.sd is not None for c in cells):
    lines += ["", SPREAD_CAPTION]
  for group in groups:
    pairs = [(column, metric) for column in columns for metric in group if (column, metric) in has]
    header = ["Row"]
    for sweep in sweeps:
      for column, metric in pairs:
        name = " ".join(filter(None, (column, METRIC_NAMES[metric])))
        header.append(f"{sweep.label}: {name}" if len(sweeps) > 1 else name)
    body = []
    for row in rows:
      line = [row]
      for sweep in sweeps:
        for column, metric in pairs:
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
    "# This project's runs beside the paper's Tables 1-10 and EchoNet-Dynamic's figures",
    "",
    "Every number is a test-set metric (RMSE and MAE in EF percentage points). A cell reads "
    "`ours (paper, ours - paper)`; `– (paper)`: no finished run; `-`: the paper prints none. "
    "Rows that repeat a run of an earlier table show that run. The block after Table 10, past "
    "the paper, sets EchoNet-Dynamic's models beside EchoNet-Dynamic's published figures.",
    "",
    *_markdown_table(
      ["Block", "Recipe", "Root", "Finished runs"],
      [
        [s.label, s.recipe or "unknown", f"`{s.root}`", f"{len(s.runs)} of {total}"] for s in sweeps
      ],
    ),
  ]
  for sweep in sweeps:
    counts = collections.Counter(run.count for run in sweep.runs.values())
    if any(count > 1 for count in counts):
      listing = ", ".join(
        f"{n} run{'s' if n > 1 else ''} of {count} seed{'s' if count > 1 else ''}"
        for count, n in sorted(counts.items(), reverse=True)
      )
      lines += ["", f"Seeds in {sweep.label}: {listing}."]
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
        "" if c.sd is None else repr(c.sd),
        "" if c.run is None else c.run.count,
      ]
    )
  return rows


# ----------------------------------------------------------------------------- comparisons


def t_quantile(p: float, df: float) -> float:
  """The ``p`` quantile of Student's t distribution with ``df`` (real, > 0) degrees of freedom."""
  from scipy import special  # a dependency of JAX's; imported here, where it is needed

  return float(special.stdtrit(df, p))


def welch_interval(
  a: Sequence[float], b: Sequence[float], level: float = INTERVAL_LEVEL
) -> tuple[float, tuple[float, float] | None]:
  """``mean(a) - mean(b)`` and its Welch t interval at ``level`` (two-sided).

  The interval is None where a side has fewer than two values (no spread to judge by) or a
  value is not finite; it is the difference itself where both sides have no spread.
  """
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  diff = float(np.mean(a) - np.mean(b))
  if a.size < 2 or b.size < 2 or not math.isfinite(diff):
    return diff, None
  va, vb = np.var(a, ddof=1) / a.size, np.var(b, ddof=1) / b.size
  se = math.sqrt(va + vb)
  if se == 0:
    return diff, (diff, diff)
  df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
  half = t_quantile(0.5 + level / 2, df) * se
  return diff, (diff - half, diff + half)


HOLDS, NOISE, REVERSED = "holds", "within seed noise", "reversed"


def verdict(paper_diff: float | None, interval: tuple[float, float] | None) -> str:
  """Whether our interval of ``a - b`` bears out the paper's direction (the sign of its diff)."""
  if paper_diff is None or paper_diff == 0 or interval is None:
    return "n/a"
  low, high = interval
  if low <= 0 <= high:
    return NOISE
  return HOLDS if (low > 0) == (paper_diff > 0) else REVERSED


@dataclasses.dataclass(frozen=True)
class PairResult:
  """One of the paper's comparisons (``experiments.COMPARISONS``) in one sweep."""

  pair: experiments.PairedComparison
  sweep: Sweep
  paper_diff: float | None  # the paper's test RMSE a - b
  runs: tuple[Run | None, Run | None]

  @property
  def found(self) -> bool:
    return all(run is not None for run in self.runs)

  @functools.cached_property
  def ours(self) -> tuple[float, tuple[float, float] | None] | None:
    """Our a - b over the members' test RMSEs and its interval; None: a run is missing."""
    if not self.found:
      return None
    a, b = (run.member_metric("test", "rmse") for run in self.runs)
    return welch_interval(a, b)

  @property
  def verdict(self) -> str:
    return "" if self.ours is None else verdict(self.paper_diff, self.ours[1])


def _paper_rmse(paper: Iterable[PaperCell]) -> dict[str, float]:
  """The paper's test RMSE of each experiment name (an alias: its own row), Tables 1-9."""
  out: dict[str, float] = {}
  for cell in paper:
    if cell.metric == "rmse" and cell.in_paper and cell.table < 10 and cell.printed:
      out.setdefault(cell.experiment, cell.number)
  return out


def pair_results(paper: Sequence[PaperCell], sweeps: Sequence[Sweep]) -> list[PairResult]:
  """Every comparison of ``experiments.COMPARISONS`` in every sweep, in that order."""
  rmse = _paper_rmse(paper)
  results = []
  for pair in experiments.COMPARISONS:
    a, b = rmse.get(pair.a), rmse.get(pair.b)
    paper_diff = None if a is None or b is None else a - b
    for sweep in sweeps:
      runs = tuple(sweep.runs.get(experiments.canonical(name)) for name in (pair.a, pair.b))
      results.append(PairResult(pair, sweep, paper_diff, runs))
  return results


def _pair_cells(result: PairResult) -> list[str]:
  """Ours a - b, its interval, the seeds and the verdict of one sweep."""
  if result.ours is None:
    return ["–", "–", "–", "–"]
  diff, interval = result.ours
  if not math.isfinite(diff):
    return ["–", "–", "–", "–"]
  star = "*" if any(run.runlocal for run in result.runs) else ""
  shown = "n/a" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
  seeds = " vs ".join(str(run.count) for run in result.runs)
  return [f"{diff:+.2f}{star}", shown, seeds, result.verdict]


def _comparisons_section(
  paper: Sequence[PaperCell], sweeps: Sequence[Sweep]
) -> tuple[list[str], list[list]]:
  results = pair_results(paper, sweeps)
  per_pair = collections.defaultdict(dict)
  csv_rows = []
  for r in results:
    per_pair[r.pair][r.sweep.label] = r
    diff, interval = r.ours if r.ours is not None else (None, None)
    csv_rows.append(
      [
        r.pair.topic,
        r.pair.context,
        r.pair.a,
        r.pair.b,
        r.sweep.recipe or "",
        str(r.sweep.root),
        "" if r.paper_diff is None else repr(r.paper_diff),
        "" if diff is None else repr(diff),
        "" if interval is None else repr(interval[0]),
        "" if interval is None else repr(interval[1]),
        *("" if run is None else run.count for run in r.runs),
        r.verdict,
      ]
    )
  names = ("ours a − b", f"{INTERVAL_LEVEL:.0%} interval", "seeds (a vs b)", "verdict")
  header = ["Topic", "Pair", "a", "b", "paper a − b"]
  for sweep in sweeps:
    header += [f"{sweep.label}: {name}" if len(sweeps) > 1 else name for name in names]
  body = []
  for pair, by_sweep in per_pair.items():
    paper_diff = next(iter(by_sweep.values())).paper_diff
    line = [pair.topic, pair.context, f"`{pair.a}`", f"`{pair.b}`"]
    line.append("-" if paper_diff is None else f"{paper_diff:+.2f}")
    for sweep in sweeps:
      line += _pair_cells(by_sweep[sweep.label])
    body.append(line)
  lines = [
    "## The paper's comparisons",
    "",
    "Test RMSE difference a − b in EF points (negative: a is the better one). The interval is "
    f"the {INTERVAL_LEVEL:.0%} Welch t interval of the difference of the means, from each "
    "member's test RMSE; with one seed on a side there is none (`n/a`) and the difference is "
    f"the two runs'. The paper's direction **{HOLDS}** where our interval excludes 0 on the "
    f"paper's side, is **{NOISE}** where it includes 0, and is **{REVERSED}** where it "
    "excludes 0 on the other side; `–`: a run is missing, `*`: a smoke test.",
    "",
    *_markdown_table(header, body),
  ]
  return lines, csv_rows


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


# ----------------------------------------------------------------------------- external data


def _internal(run: Run, metric: str) -> str:
  """The run's own test ``metric`` (results.json), ``mean ± SD`` for several members."""
  value, sd, digits = run.metric("test", metric), run.sd("test", metric), DIGITS[metric]
  if math.isnan(value):
    return "–"
  return f"{value:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def _external_section(sweeps: Sequence[Sweep]) -> tuple[list[str], list[list]]:
  """One row per (run, external dataset) beside the run's own test scores; no lines (and no
  rows) when no run was scored on an external dataset."""

  def number(value: float) -> str:
    return "" if math.isnan(value) else repr(value)

  def with_ci(value: float, ci: tuple[float, float], digits: int) -> str:
    if math.isnan(value):
      return "–"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"

  csv_rows, body = [], []
  for sweep in sweeps:
    for name, run in sweep.runs.items():
      for score in run.external:
        body.append(
          [
            f"{sweep.label}: {name}" if len(sweeps) > 1 else name,
            score.dataset if score.split == "all" else f"{score.dataset} (test split)",
            str(score.n),
            with_ci(score.rmse, score.rmse_ci, DIGITS["rmse"]),
            f"{score.mae:.{DIGITS['mae']}f}",
            with_ci(score.r2, score.r2_ci, DIGITS["r2"]),
            _internal(run, "rmse"),
            _internal(run, "r2"),
          ]
        )
        csv_rows.append(
          [
            sweep.recipe or "",
            str(sweep.root),
            name,
            score.dataset,
            score.split,
            score.clips,
            score.n,
            number(score.rmse),
            *map(number, score.rmse_ci),
            number(score.mae),
            number(score.r2),
            *map(number, score.r2_ci),
            number(run.metric("test", "rmse")),
            number(run.metric("test", "r2")),
          ]
        )
  if not body:
    return [], []
  lines = [
    "## External validation",
    "",
    "Each run scored on a dataset it was not trained on (`launch.py --mode=eval` with another "
    "`data.format` or `data.root`, written to `eval/external/<dataset>/`): every video of every "
    "split (`all_*.json`), or the test split where that is all it has. Intervals are 95 % "
    "bootstrap CIs. Beside them, the run's own test RMSE and R² (results.json: one clip a "
    "video, mean ± SD for several seeds).",
    "",
    *_markdown_table(
      [
        "Run",
        "Dataset",
        "n",
        "RMSE [95 % CI]",
        "MAE",
        "R² [95 % CI]",
        "Internal test RMSE",
        "Internal test R²",
      ],
      body,
    ),
  ]
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


def _metric_gap(metric: str):
  """Per member: train minus test ``metric``."""
  return lambda run: run.member_metric("train", metric) - run.member_metric("test", metric)


def _loss_gaps(run: Run) -> np.ndarray:
  """Per member: val minus train loss in its metrics.jsonl record at its own best epoch."""
  gaps = []
  for record in run.best_epoch_records():
    if record is None or record.get("val_loss") is None or record.get("train_loss") is None:
      gaps.append(math.nan)
    else:
      gaps.append(float(record["val_loss"]) - float(record["train_loss"]))
  return np.array(gaps, dtype=np.float64)


GAP_PANELS = (
  ("RMSE: train - test", _metric_gap("rmse"), -1),
  ("MAE: train - test", _metric_gap("mae"), -1),
  ("R²: train - test", _metric_gap("r2"), 1),
  ("loss (MSE): val - train, best epoch", _loss_gaps, 1),
)


def _bar_errors(ax, values: np.ndarray, y: np.ndarray, sds: np.ndarray) -> None:
  """±1 SD on horizontal bars where a run has an SD (several members); none for solo runs."""
  shown = np.isfinite(sds) & np.isfinite(values)
  if shown.any():
    ax.errorbar(
      values[shown], y[shown], xerr=sds[shown], fmt="none", ecolor="k", elinewidth=0.8, capsize=2
    )


def generalization_gap_figure(
  sweeps: Sequence[Sweep], path: pathlib.Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Figure 15: per run, train - test RMSE/MAE/R² and val - train loss at the best epoch.

  A bar is red where the model does better on train than on test (val for the loss):
  overfitting; green otherwise. A run of several members shows the mean of its members' gaps
  (the loss: each member's record at its own best epoch) with a ±1 SD error bar.

  Returns:
    Per panel title, the bars' values and SDs (NaN: no bar), one a run in the figure's order.
  """
  points = _points(sweeps)
  height = max(3.0, 0.3 * len(points) + 1.5)
  fig, axes = plt.subplots(
    1, len(GAP_PANELS), figsize=(16, height), sharey=True, layout="constrained"
  )
  labels = [label for label, _, _ in points]
  drawn = {}
  for ax, (title, gap, overfit_sign) in zip(axes, GAP_PANELS):
    ax.set_title(title, fontsize=10)
    if not points:
      _no_runs(ax)
      continue
    stats = np.array([mean_sd(gap(run)) for _, _, run in points], dtype=np.float64)
    values, sds = stats[:, 0], stats[:, 1]
    drawn[title] = (values, sds)
    colors = ["tab:red" if v * overfit_sign > 0 else "tab:green" for v in values]
    y = np.arange(len(points))
    ax.barh(y, np.nan_to_num(values), color=colors)
    _bar_errors(ax, values, y, sds)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
  if points:
    axes[0].invert_yaxis()  # the first run on top (the axes share y)
  several = any(run.several for _, _, run in points)
  fig.suptitle(
    "Generalization gap (red: better on train, overfitting; green: otherwise)"
    + ("; error bars: ±1 SD over seeds" if several else "")
  )
  plots._save(fig, path)
  return drawn


@dataclasses.dataclass(frozen=True)
class PerformancePoint:
  """One run of Figure 16: test RMSE (x) and test - train RMSE (y), each with its SD."""

  sweep: Sweep
  run: Run
  x: float
  x_sd: float
  y: float
  y_sd: float
  labelled: bool = False

  @property
  def family(self) -> str:
    return experiments.get(self.run.name).family


def _performance_points(sweeps: Sequence[Sweep]) -> list[PerformancePoint]:
  out = []
  for _, sweep, run in _points(sweeps):
    x, x_sd = mean_sd(run.member_metric("test", "rmse"))
    gaps = run.member_metric("test", "rmse") - run.member_metric("train", "rmse")
    y, y_sd = mean_sd(gaps)
    if math.isfinite(x) and math.isfinite(y):
      out.append(PerformancePoint(sweep, run, x, x_sd, y, y_sd))
  return out


def _overlaps(box, boxes) -> bool:
  return any(box.overlaps(other) for other in boxes)


def place_labels(ax, xy: np.ndarray, texts: Sequence[str], fontsize: float = 7) -> list[bool]:
  """Writes ``texts[i]`` beside point ``xy[i]`` (data coordinates) where it fits: inside the
  axes and clear of every other label, marker and legend. Isolated points are served first; a
  label that fits nowhere is left out. Returns, per point, whether it got its label.

  The figure's layout must be final (drawn once, layout engine off): positions are measured on
  the canvas.
  """
  fig = ax.figure
  renderer = fig.canvas.get_renderer()
  frame = ax.get_window_extent(renderer)
  pixels = ax.transData.transform(xy) if len(xy) else np.zeros((0, 2))
  radius = 3.5 * fig.dpi / 72  # a marker's half-width (size 30: 2.7 points) and a margin
  gap = 1.0 * fig.dpi / 72  # kept free around each label
  markers = [
    matplotlib.transforms.Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
    for px, py in pixels
  ]
  occupied = [legend.get_window_extent(renderer) for legend in _legends(ax)]
  if len(pixels) > 1:
    distance = np.linalg.norm(pixels[:, None] - pixels[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(-distance.min(axis=1), kind="stable")
  else:
    order = np.arange(len(pixels))
  candidates = (  # offset in points, alignment: right, left, above, below the marker
    ((5, 1), "left", "bottom"),
    ((5, -1), "left", "top"),
    ((-5, 1), "right", "bottom"),
    ((-5, -1), "right", "top"),
    ((0, 5), "center", "bottom"),
    ((0, -5), "center", "top"),
  )
  placed = [False] * len(pixels)
  for i in order:
    others = occupied + markers[:i] + markers[i + 1 :]
    for offset, ha, va in candidates:
      text = ax.annotate(
        texts[i], xy[i], xytext=offset, textcoords="offset points", fontsize=fontsize, ha=ha,
        va=va,
      )  # fmt: skip
      box = text.get_window_extent(renderer).padded(gap)
      inside = frame.containsx(box.x0) and frame.containsx(box.x1)
      inside = inside and frame.containsy(box.y0) and frame.containsy(box.y1)
      if inside and not _overlaps(box, others):
        occupied.append(box)
        placed[i] = True
        break
      text.remove()
  return placed


def _legends(ax) -> list:
  return [artist for artist in ax.get_children() if isinstance(artist, matplotlib.legend.Legend)]


def performance_figure(sweeps: Sequence[Sweep], path: pathlib.Path) -> list[PerformancePoint]:
  """Figure 16: test RMSE (x) against the generalization gap, test - train RMSE (y).

  Overfitting models sit high; collapsed mean-predictors sit bottom-right (a small gap only
  because they learnt nothing). One marker shape per family, one colour per sweep; a run of
  several members shows its members' means with ±1 SD error bars on both axes. A run is
  labelled where its name fits without covering another (`place_labels`); every point is in
  performance_vs_generalization.csv.

  Returns:
    The points drawn, each with whether it got its label.
  """
  fig, ax = plt.subplots(figsize=(9, 6.5), layout="constrained")
  points = _performance_points(sweeps)
  if not points:
    _no_runs(ax)
  colors = {sweep.label: f"C{index % 10}" for index, sweep in enumerate(sweeps)}
  families = _ordered(p.family for p in points)
  for family in families:
    for sweep in sweeps:
      mine = [p for p in points if p.family == family and p.sweep is sweep]
      if mine:
        marker = FAMILY_MARKERS.get(family, OTHER_MARKER)
        ax.scatter(
          [p.x for p in mine], [p.y for p in mine], marker=marker, s=30, color=colors[sweep.label]
        )
  xs, ys = (np.array([getattr(p, k) for p in points], dtype=np.float64) for k in ("x", "y"))
  x_sd, y_sd = (
    np.array([getattr(p, k) for p in points], dtype=np.float64) for k in ("x_sd", "y_sd")
  )
  shown = np.isfinite(x_sd) & np.isfinite(y_sd)
  if shown.any():
    ax.errorbar(
      xs[shown], ys[shown], xerr=x_sd[shown], yerr=y_sd[shown], fmt="none", ecolor="0.45",
      elinewidth=0.7, capsize=1.5, zorder=1,
    )  # fmt: skip
  several = bool(shown.any())
  if points:
    ax.axhline(0, color="0.6", lw=0.8)
    handles = [
      matplotlib.lines.Line2D(
        [], [], ls="", marker=FAMILY_MARKERS.get(f, OTHER_MARKER), color="0.3",
        label=FAMILY_NAMES.get(f, f),
      )
      for f in families
    ]  # fmt: skip
    title = "family"
    if len(sweeps) > 1:
      handles += [matplotlib.patches.Patch(color=colors[s.label], label=s.label) for s in sweeps]
      title = "family; colour: recipe / root"
    ax.legend(handles=handles, title=title, fontsize=8, title_fontsize=8, loc="best")
  ax.set(
    xlabel="test RMSE (EF %)",
    ylabel="generalization gap: test - train RMSE (EF %)",
  )
  ax.grid(alpha=0.3)
  title = "Performance vs generalization"
  if several:
    title += " (error bars: ±1 SD over seeds)"
  ax.set_title(title)
  if points:
    fig.canvas.draw()  # the layout, final before the labels are measured
    fig.set_layout_engine("none")
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    placed = place_labels(ax, np.stack([xs, ys], axis=1), [p.run.name for p in points])
    points = [dataclasses.replace(p, labelled=got) for p, got in zip(points, placed)]
    if not all(placed):
      ax.set_title(
        f"{title}\n{sum(placed)} of {len(points)} runs labelled (where the name fits); "
        "all: performance_vs_generalization.csv",
        fontsize=10,
      )
  plots._save(fig, path)
  return points


def _performance_rows(points: Sequence[PerformancePoint]) -> list[list]:
  def number(value: float) -> str:
    return "" if math.isnan(value) else repr(value)

  return [
    [
      p.sweep.recipe or "",
      str(p.sweep.root),
      p.run.name,
      p.family,
      p.run.count,
      number(p.x),
      number(p.x_sd),
      number(p.y),
      number(p.y_sd),
      int(p.labelled),
    ]
    for p in points
  ]


# ----------------------------------------------------------------------------- writing


def render_markdown(paper: Sequence[PaperCell], sweeps: Sequence[Sweep]) -> str:
  comparisons = compare(paper, sweeps)
  lines = _header(sweeps)
  for table in _ordered(c.table for c in paper):  # paper_results.csv's order
    lines += ["", *_paper_table(table, comparisons, sweeps)]
  lines += ["", *_comparisons_section(paper, sweeps)[0]]
  lines += ["", *_ef_range_section(sweeps)[0]]
  external = _external_section(sweeps)[0]
  if external:
    lines += ["", *external]
  return "\n".join(lines) + "\n"


# The CSV files' columns.
TABLES_COLUMNS = "table row column metric recipe root experiment ours paper diff ours_sd seeds"
COMPARISONS_COLUMNS = "topic pair a b recipe root paper_diff diff low high seeds_a seeds_b verdict"
EF_RANGE_COLUMNS = "recipe root experiment ef_range n mae rmse mean_error"
EXTERNAL_COLUMNS = (
  "recipe root experiment dataset split clips n rmse rmse_low rmse_high mae r2 r2_low r2_high "
  "internal_test_rmse internal_test_r2"
)
PERFORMANCE_COLUMNS = (
  "recipe root experiment family seeds test_rmse test_rmse_sd gap gap_sd labelled"
)


def write_report(roots: Sequence[pathlib.Path], out: pathlib.Path) -> str:
  """Writes ``FILES`` into ``out`` (and ``EXTERNAL_FILE`` when some run was scored on an
  external dataset); returns a one-line summary."""
  sweeps = load_sweeps(roots)
  paper = load_paper()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)

  def write_csv(name: str, columns: str, rows: list[list]) -> None:
    files.write_text(out / name, files.csv_text(columns.split(), rows))

  files.write_text(out / "tables.md", render_markdown(paper, sweeps))
  write_csv("tables.csv", TABLES_COLUMNS, _long_rows(compare(paper, sweeps)))
  write_csv("comparisons.csv", COMPARISONS_COLUMNS, _comparisons_section(paper, sweeps)[1])
  write_csv("error_by_ef_range.csv", EF_RANGE_COLUMNS, _ef_range_section(sweeps)[1])
  generalization_gap_figure(sweeps, out / "generalization_gap.png")
  points = performance_figure(sweeps, out / "performance_vs_generalization.png")
  write_csv("performance_vs_generalization.csv", PERFORMANCE_COLUMNS, _performance_rows(points))
  written = list(FILES)
  external = _external_section(sweeps)[1]
  if external:
    write_csv(EXTERNAL_FILE, EXTERNAL_COLUMNS, external)
    written.append(EXTERNAL_FILE)
  total = len(experiments.EXPERIMENTS)
  found = "; ".join(f"{s.label} ({s.root}): {len(s.runs)}/{total}" for s in sweeps)
  return f"wrote {', '.join(str(out / name) for name in written)}; runs found: {found}"
