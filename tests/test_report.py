"""`python -m lvef_jax.report`: the paper's printed numbers, and this project's runs beside them."""

from __future__ import annotations

import collections
import csv
import json
import math
import pathlib
import shutil
import subprocess
import sys

import pytest

from lvef_jax import experiments
from lvef_jax.reporting import paper_report
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG"


def _paper_rows() -> list[dict]:
  with open(paper_report.PAPER_CSV, newline="") as f:
    return list(csv.DictReader(f))


def _cell(rows, table, row, column, metric) -> dict:
  (found,) = [
    r
    for r in rows
    if (r["table"], r["row"], r["column"], r["metric"]) == (str(table), row, column, metric)
  ]
  return found


# ----------------------------------------------------------------------------- (a) the paper CSV


def test_paper_csv_has_every_printed_number():
  rows = _paper_rows()
  assert list(rows[0]) == ["table", "row", "column", "metric", "value", "experiment"]
  per_table = collections.Counter(int(r["table"]) for r in rows)
  assert per_table == {1: 12, 2: 12, 3: 12, 4: 24, 5: 6, 6: 36, 7: 9, 8: 12, 9: 18, 10: 26}
  # Tables 1-9: 47 result rows (row x model column), each with RMSE, MAE and R².
  metrics = collections.defaultdict(set)
  for r in rows:
    if r["table"] != "10":
      metrics[(r["table"], r["row"], r["column"])].add(r["metric"])
  assert len(metrics) == 47
  assert all(m == {"rmse", "mae", "r2"} for m in metrics.values())
  assert {r["metric"] for r in rows if r["table"] == "10"} == {"rmse"}
  assert len({(r["table"], r["row"], r["column"], r["metric"]) for r in rows}) == len(rows)
  assert all(r["value"] != "-" and math.isfinite(float(r["value"])) for r in rows)


def test_paper_csv_experiments_resolve_and_cover_the_registry():
  rows = _paper_rows()
  canonical = {experiments.canonical(r["experiment"]) for r in rows}
  assert canonical == set(experiments.names(include_aliases=False))
  for r in rows:
    table = int(r["table"])
    assert r["experiment"].startswith("table")
    if table < 10:
      assert r["experiment"].startswith(f"table{table}/")
      if r["experiment"] not in experiments.ALIASES:
        assert r["row"] == experiments.get(r["experiment"]).label, r
  # Alias rows keep their own name.
  assert _cell(rows, 2, "GAP + Dropout + Dense (A)", "", "rmse")["experiment"] == "table2/A"
  assert _cell(rows, 4, "BatchNorm (B1)", "Mini", "mae")["experiment"] == "table4/mini-B1"


@pytest.mark.parametrize(
  "table,row,column,metric,value,experiment",
  [
    (3, "3x3x3 (B2)", "", "rmse", "6.7954", "table3/B2"),
    (3, "3x3x3 (B2)", "", "r2", "0.691", "table3/B2"),
    (9, "LayerNorm (L1)", "LSTM", "r2", "0.3994", "table9/LSTM-L1"),
    (7, "BatchNorm (B1)", "Dual Input Truncated", "mae", "9.2460", "table7/DIT-B1"),
    (10, "LayerNorm", "I3D Original", "rmse", "12.230", "table4/original-L1"),
    (10, "3x3x3 Conv2 + LayerNorm", "I3D Original", "rmse", "12.230", "table4/original-L2"),
    (4, "3x3x3 Conv2 + LayerNorm (L2)", "Original", "rmse", "12.2295", "table4/original-L2"),
    (4, "LayerNorm (L1)", "Original", "r2", "-0.0007", "table4/original-L1"),
    (4, "BatchNorm (B1)", "Mini", "mae", "5.3524", "table4/mini-B1"),
    (1, "Stem + IM3 (I3D-mini)", "", "mae", "5.3833", "table1/mini"),
    (6, "BatchNorm (B1)", "Single Input", "rmse", "7.0173", "table6/SI-B1"),
    (6, "3x3x3 Conv2 + BatchNorm (B2)", "Dual Input", "r2", "0.5847", "table6/DI-B2"),
    (8, "CNN_RNN T(O)-b(5)", "GRU", "rmse", "9.9158", "table8/TO-b5"),
    (10, "BatchNorm", "TS SC", "rmse", "9.7161", "table5/B1"),
    (10, "LayerNorm", "CNN-RNN GRU", "rmse", "12.2297", "table9/GRU-L1"),
    (10, "3x3x3 Conv2 + BatchNorm", "I3D Mini", "rmse", "6.7954", "table4/mini-B2"),
  ],
)
def test_paper_csv_values_as_printed(table, row, column, metric, value, experiment):
  cell = _cell(_paper_rows(), table, row, column, metric)
  assert (cell["value"], cell["experiment"]) == (value, experiment)


def test_paper_csv_leaves_out_dashes():
  rows = _paper_rows()
  assert not [r for r in rows if r["table"] == "7" and r["row"] == "LayerNorm (L1)"
              and r["column"] == "Dual Input Truncated"]  # fmt: skip
  assert not [r for r in rows if r["table"] == "10" and r["column"] == "TS SC"
              and r["row"].startswith("3x3x3")]  # fmt: skip


# ----------------------------------------------------------------------------- (b) an empty root


def _read_csv(path: pathlib.Path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_empty_root_renders_blanks(tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  summary = paper_report.write_report([root], tmp_path / "out")
  out = tmp_path / "out"
  assert "0/42" in summary
  for name in paper_report.FILES:
    assert (out / name).is_file(), name
    assert (out / name).stat().st_size > 0
  for name in ("generalization_gap.png", "performance_vs_generalization.png"):
    assert (out / name).read_bytes()[:4] == PNG_MAGIC
  assert not list(out.glob("*.tmp*"))
  md = (out / "tables.md").read_text()
  assert "0 of 42" in md
  assert all(f"## Table {t}." in md for t in range(1, 11))
  assert "| Stem | – (8.43) | – (6.40) | – (0.525) |" in md
  assert "No finished run has test predictions." in md
  rows = _read_csv(out / "tables.csv")
  assert len(rows) == len(_paper_rows())
  assert all(r["ours"] == "" and r["diff"] == "" for r in rows)
  assert _read_csv(out / "error_by_ef_range.csv") == []


# ----------------------------------------------------------------------------- (c) real runs


def _set_experiment(directory: pathlib.Path, **key) -> None:
  path = directory / "config.json"
  config = json.loads(path.read_text())
  config["experiment"].update(key)
  path.write_text(json.dumps(config))


def _set_test_rmse(directory: pathlib.Path, rmse: float) -> None:
  path = directory / "results.json"
  results = json.loads(path.read_text())
  results["splits"]["test"]["rmse"] = rmse
  path.write_text(json.dumps(results))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
  """Real runs trained through the trainer on tiny synthetic data: table1/stem and table5/B1
  with the paper recipe in one root, table5/B1 with the improved recipe in another.

  Derived by copying files: table1/mini in the paper root (a copy of table1/stem with its test
  RMSE set to 7.5), the run that the alias rows table2/A, table3/B1 and table4/mini-B1 report,
  and an unfinished table3/B2 (a history, no results yet).
  """
  from lvef_jax.training import trainer

  tmp = tmp_path_factory.mktemp("report")
  paper, improved = tmp / "paper", tmp / "improved"
  for root, recipe, name in (
    (paper, "paper", "table1/stem"),
    (paper, "paper", "table5/B1"),
    (improved, "improved", "table5/B1"),
  ):
    config = experiments.get_config(name, recipe=recipe, runlocal=True)
    config.data.cache_dir = str(tmp / "data")
    trainer.train_and_evaluate(config, root / name)
  shutil.copytree(paper / "table1/stem", paper / "table1/mini")
  _set_experiment(paper / "table1/mini", name="table1/mini")
  _set_test_rmse(paper / "table1/mini", 7.5)
  (paper / "table3/B2").mkdir(parents=True)
  shutil.copy(paper / "table1/stem/metrics.jsonl", paper / "table3/B2/metrics.jsonl")
  return tmp, paper, improved


def _results(directory: pathlib.Path) -> dict:
  return json.loads((directory / "results.json").read_text())


@pytest.mark.slow
def test_report_of_real_runs(sweeps):
  tmp, paper, _ = sweeps
  out = tmp / "out_paper"
  summary = paper_report.write_report([paper], out)
  assert "3/42" in summary and str(out / "tables.md") in summary
  md = (out / "tables.md").read_text()
  assert "3 of 42" in md
  assert "**Smoke tests**" in md and "table1/stem" in md
  assert "Unfinished in paper (no results.json yet): table3/B2." in md

  stem = _results(paper / "table1/stem")["splits"]["test"]
  rmse, r2 = stem["rmse"], stem["r2"]
  assert f"| Stem | {rmse:.2f}* (8.43, {rmse - 8.4287:+.2f}) |" in md
  assert f"{r2:.3f}* (0.525, {r2 - 0.5247:+.3f})" in md
  assert "| Stem + IM3 + IM4 | – (7.46) | – (5.56) | – (0.628) |" in md
  # Alias rows show the run they repeat (table1/mini, test RMSE set to 7.5 above).
  assert "| GAP + Dropout + Dense (A) | 7.50* (7.09, +0.41) |" in md
  assert "| 1x1x1 (B1) | 7.50* (7.09, +0.41) |" in md
  b1 = _results(paper / "table5/B1")["splits"]["test"]["rmse"]
  assert f"{b1:.2f}* (9.72, {b1 - 9.7161:+.2f})" in md  # Tables 5 and 10

  rows = _read_csv(out / "tables.csv")
  assert list(rows[0]) == [
    "table", "row", "column", "metric", "recipe", "root", "experiment", "ours", "paper", "diff"
  ]  # fmt: skip
  found = {(r["table"], r["experiment"], r["metric"]): r for r in rows if r["ours"]}
  assert float(found[("1", "table1/stem", "rmse")]["ours"]) == pytest.approx(rmse)
  assert float(found[("1", "table1/stem", "rmse")]["diff"]) == pytest.approx(rmse - 8.4287)
  for key in (
    ("2", "table2/A", "rmse"),
    ("3", "table3/B1", "rmse"),
    ("4", "table4/mini-B1", "rmse"),
  ):
    assert float(found[key]["ours"]) == 7.5
  assert float(found[("10", "table5/B1", "rmse")]["ours"]) == pytest.approx(b1)
  assert float(found[("10", "table4/mini-B1", "rmse")]["ours"]) == 7.5
  assert {r["recipe"] for r in rows} == {"paper"}
  # table1/stem; table1/mini in Tables 1-4 (3 metrics each) and 10; table5/B1 in Tables 5, 10.
  assert len(found) == 3 + (4 * 3 + 1) + (3 + 1)

  ef_rows = _read_csv(out / "error_by_ef_range.csv")
  assert {r["experiment"] for r in ef_rows} == {"table1/stem", "table1/mini", "table5/B1"}
  assert [r["ef_range"] for r in ef_rows[:4]] == ["<40", "40-50", "50-70", ">=70"]
  n_test = _results(paper / "table5/B1")["splits"]["test"]["n"]
  assert sum(int(r["n"]) for r in ef_rows if r["experiment"] == "table5/B1") == n_test
  assert "## Test error by true-EF range" in md and "| table5/B1 |" in md
  for name in ("generalization_gap.png", "performance_vs_generalization.png"):
    assert (out / name).read_bytes()[:4] == PNG_MAGIC


@pytest.mark.slow
def test_second_root_is_a_second_block(sweeps):
  tmp, paper, improved = sweeps
  out = tmp / "out_both"
  summary = paper_report.write_report([paper, improved], out)
  assert "paper (" in summary and "improved (" in summary and "1/42" in summary
  md = (out / "tables.md").read_text()
  assert "| paper | paper |" in md and "| improved | improved |" in md
  assert (
    "| Row | paper: Original RMSE | paper: Original MAE | paper: Original R² | improved: " in md
  )
  b1 = _results(paper / "table5/B1")["splits"]["test"]["rmse"]
  b1_improved = _results(improved / "table5/B1")["splits"]["test"]["rmse"]
  section = md[md.index("## Table 5.") : md.index("## Table 6.")]
  table5 = next(line for line in section.splitlines() if line.startswith("| BatchNorm (B1) |"))
  cells = [c.strip() for c in table5.strip("|").split("|")]
  assert len(cells) == 1 + 2 * 3  # the row, then RMSE, MAE, R² for each root
  assert cells[1] == f"{b1:.2f}* (9.72, {b1 - 9.7161:+.2f})"
  assert cells[4] == f"{b1_improved:.2f}* (9.72, {b1_improved - 9.7161:+.2f})"
  rows = _read_csv(out / "tables.csv")
  ours = {
    r["recipe"]: r["ours"]
    for r in rows
    if (r["table"], r["experiment"], r["metric"]) == ("5", "table5/B1", "rmse")
  }
  assert float(ours["paper"]) == pytest.approx(b1)
  assert float(ours["improved"]) == pytest.approx(b1_improved)
  assert {r["recipe"] for r in _read_csv(out / "error_by_ef_range.csv")} == {"paper", "improved"}


@pytest.mark.slow
def test_two_recipes_under_one_root_is_an_error(sweeps, tmp_path):
  _, paper, improved = sweeps
  root = tmp_path / "mixed"
  shutil.copytree(paper / "table1/stem", root / "table1/stem")
  shutil.copytree(improved / "table5/B1", root / "table5/B1")
  with pytest.raises(paper_report.ReportError, match="paper.*improved|improved.*paper"):
    paper_report.load_sweep(root)


# ----------------------------------------------------------------------------- (d) bad input


@pytest.mark.slow
def test_corrupt_results_is_a_missing_run_with_a_warning(sweeps, tmp_path, caplog):
  _, paper, _ = sweeps
  root = tmp_path / "runs"
  shutil.copytree(paper / "table1/stem", root / "table1/stem")
  shutil.copytree(paper / "table5/B1", root / "table5/B1")
  corrupt = root / "table5/B1/results.json"
  corrupt.write_text('{"best_epoch": 2, "splits": ')
  sweep = paper_report.load_sweep(root)
  assert list(sweep.runs) == ["table1/stem"]
  assert any(str(corrupt) in m for m in sweep.warnings)
  assert str(corrupt) in caplog.text
  paper_report.write_report([root], tmp_path / "out")
  md = (tmp_path / "out/tables.md").read_text()
  assert f"Warning: {corrupt}" in md
  assert "| BatchNorm (B1) | – (9.72) | – (7.35) | – (0.370) |" in md


@pytest.mark.slow
def test_cli_missing_root_is_an_error(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "lvef_jax.report", f"--root={tmp_path / 'nope'}", f"--out={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert str(tmp_path / "nope") in result.stderr


@pytest.mark.slow
def test_report_imports_no_jax_or_tensorflow():
  code = (
    "import sys, lvef_jax.report\n"
    "print(sorted(m for m in ('jax', 'flax', 'tensorflow', 'lvef_jax.training') "
    "if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"
