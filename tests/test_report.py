"""`python -m lvef_jax.report`: the paper's printed numbers, and this project's runs beside them."""

from __future__ import annotations

import collections
import csv
import json
import math
import pathlib
import shutil
import statistics
import subprocess
import sys

from matplotlib.container import ErrorbarContainer
import pytest

from lvef_jax import experiments
from lvef_jax.reporting import paper_report
from tests.conftest import ROOT

plt = paper_report.plt

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
  per_table = collections.Counter(r["table"] for r in rows)
  assert per_table == {
    **{str(t): n for t, n in {1: 12, 2: 12, 3: 12, 4: 24, 5: 6, 6: 36, 7: 9, 8: 12, 9: 18}.items()},
    "10": 26,
    "echonet": 12,  # past the paper: 3 models x (beat-to-beat RMSE, MAE, R², one-clip RMSE)
  }
  rows = [r for r in rows if r["table"].isdigit()]  # the paper's
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
    if not r["table"].isdigit():  # a block past the paper: its experiments, their labels
      assert r["experiment"].startswith(f"{r['table']}/")
      assert r["row"] == experiments.get(r["experiment"]).label, r
      continue
    table = int(r["table"])
    assert experiments.in_paper(r["experiment"])
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


def test_echonet_dynamic_s_published_figures():
  """R(2+1)D-18's test figures in Ouyang et al., Nature 2020; none for R3D-18 or MC3-18."""
  rows = _paper_rows()
  row = "R(2+1)D-18, EchoNet-Dynamic's recipe"
  for column, metric, value in (
    ("beat-to-beat", "rmse", "5.32"),
    ("beat-to-beat", "mae", "4.05"),
    ("beat-to-beat", "r2", "0.81"),
    ("one clip", "rmse", "5.56"),
  ):
    cell = _cell(rows, "echonet", row, column, metric)
    assert (cell["value"], cell["experiment"]) == (value, "echonet/r2plus1d_32_2")
  others = [r for r in rows if r["experiment"] in ("echonet/r3d_32_2", "echonet/mc3_32_2")]
  assert len(others) == 8 and {r["value"] for r in others} == {""}
  cells = paper_report.load_paper()
  assert {c.table for c in cells if not c.in_paper} == {"echonet"}
  assert all(c.table in paper_report.TABLE_TITLES for c in cells)
  # Not the paper's: never in the comparisons' RMSEs.
  assert not any(name.startswith("echonet/") for name in paper_report._paper_rmse(cells))


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
  assert "0/45" in summary
  for name in paper_report.FILES:
    assert (out / name).is_file(), name
    assert (out / name).stat().st_size > 0
  for name in ("generalization_gap.png", "performance_vs_generalization.png"):
    assert (out / name).read_bytes()[:4] == PNG_MAGIC
  assert not list(out.glob("*.tmp*"))
  md = (out / "tables.md").read_text()
  assert "0 of 45" in md
  assert all(f"## Table {t}." in md for t in range(1, 11))
  assert "| Stem | – (8.43) | – (6.40) | – (0.525) |" in md
  block = md[md.index("## Past the paper: EchoNet-Dynamic's models") :]
  assert md.index("## Table 10.") < md.index("## Past the paper") < md.index("## The paper's")
  assert "| Row | beat-to-beat RMSE | beat-to-beat MAE | beat-to-beat R² | one clip RMSE |" in block
  assert (
    "| R(2+1)D-18, EchoNet-Dynamic's recipe | – (5.32) | – (4.05) | – (0.810) | – (5.56) |"
    in (block)
  )
  assert "| R3D-18, EchoNet-Dynamic's recipe | – | – | – | – |" in block
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
  assert "3/45" in summary and str(out / "tables.md") in summary
  md = (out / "tables.md").read_text()
  assert "3 of 45" in md
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
    "table", "row", "column", "metric", "recipe", "root", "experiment", "ours", "paper", "diff",
    "ours_sd", "seeds",
  ]  # fmt: skip
  assert {r["ours_sd"] for r in rows} == {""}  # solo runs
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
  assert "paper (" in summary and "improved (" in summary and "1/45" in summary
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


# ----------------------------------------------------------------------------- (e) several seeds
# Fake run directories in the trainer's formats (results.json, metrics.jsonl, config.json):
# solo runs and runs of several members, no training.

EPOCHS = 4


def _scores(rmse: float, train: bool = False) -> dict:
  """A split's metrics derived from its RMSE (the train split a point better)."""
  rmse = rmse - 1.0 if train else rmse
  return {"rmse": rmse, "mae": 0.75 * rmse, "r2": 1 - rmse**2 / 150, "n": 102}


def _spread(scores: list[dict]) -> dict:
  out = {"n": scores[0]["n"]}
  for key in ("rmse", "mae", "r2"):
    values = [s[key] for s in scores]
    out[key] = float(sum(values) / len(values))
    out[f"{key}_sd"] = float(statistics.stdev(values))
  return out


def _write_run(
  root: pathlib.Path,
  name: str,
  test_rmse,
  best_epochs=None,
  runlocal: bool = False,
  hparams=None,
) -> pathlib.Path:
  """A finished run of experiment ``name``: solo for a number, one member per value of a
  list. Member i's history has train_loss 10 + epoch + i and val_loss 20 + 2 epoch + i, so
  its loss gap at its best epoch b is 10 + b."""
  directory = root / name
  directory.mkdir(parents=True)
  several = isinstance(test_rmse, list)
  count = len(test_rmse) if several else 1
  best_epochs = best_epochs or [EPOCHS - 1] * count
  config = {
    "seed": 0,
    "train": {"seeds": count, "grid": ""},
    "experiment": {"name": name, "recipe": "paper", "runlocal": runlocal},
  }
  (directory / "config.json").write_text(json.dumps(config))
  records = []
  for epoch in range(1, EPOCHS + 1):
    members = [
      {"train_loss": 10.0 + epoch + i, "val_loss": 20.0 + 2 * epoch + i, "val_rmse": 7.0}
      for i in range(count)
    ]
    record = {"epoch": epoch, "step": 10 * epoch, "seconds": 1.0, "clips_per_s": 5.0}
    record.update({k: statistics.mean(m[k] for m in members) for k in members[0]})
    if several:
      record["members"] = [dict(m, stopped=False) for m in members]
    records.append(record)
  (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  if not several:
    results = {
      "best_epoch": best_epochs[0],
      "eval_clips": "one",
      "splits": {"train": _scores(test_rmse, train=True), "test": _scores(test_rmse)},
    }
  else:
    members = [
      {
        "member": i,
        "seed": i,
        "hparams": (hparams or [{}] * count)[i],
        "best_epoch": best_epochs[i],
        "splits": {"train": _scores(rmse, train=True), "test": _scores(rmse)},
      }
      for i, rmse in enumerate(test_rmse)
    ]
    results = {
      "eval_clips": "one",
      "best_epochs": best_epochs,
      "splits": {
        split: _spread([m["splits"][split] for m in members]) for split in ("train", "test")
      },
      "members": members,
      "ensemble": {"test": _scores(statistics.mean(test_rmse) - 0.2)},
    }
  (directory / "results.json").write_text(json.dumps(results))
  return directory


@pytest.fixture
def seeded(tmp_path):
  """A root of runs of three seeds and solo runs, chosen so that the paper's comparisons:
  - conv2 1x1x1 vs 3x3x3 on I3D-mini (table3/B1 = table1/mini vs table3/B2) holds;
  - BatchNorm vs LayerNorm on Two-Stream (table5/B1 vs L1) is within seed noise;
  - GRU vs LSTM with BatchNorm (table9/GRU-B1 vs LSTM-B1) is reversed;
  - head A vs OG (table2/A = table1/mini, 3 seeds, vs table2/OG, solo) has no interval."""
  root = tmp_path / "seeds3"
  _write_run(root, "table1/mini", [7.5, 7.6, 7.4], best_epochs=[1, 2, 3])
  _write_run(root, "table3/B2", [6.8, 6.9, 6.7])
  _write_run(root, "table5/B1", [8.0, 9.0, 10.0])
  _write_run(root, "table5/L1", [8.5, 9.5, 8.0])
  _write_run(root, "table9/GRU-B1", [7.0, 7.1, 7.2])
  _write_run(root, "table9/LSTM-B1", [8.0, 8.1, 8.2])
  _write_run(root, "table2/OG", 7.3)
  return root


def _table_line(md: str, table: int, row: str) -> list[str]:
  start = md.index(f"## Table {table}.")
  section = md[start : md.index("\n## ", start + 1)]
  line = next(line for line in section.splitlines() if line.startswith(f"| {row} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_cells_of_several_seeds_show_mean_sd_and_mark_the_paper_outside(seeded, tmp_path):
  paper_report.write_report([seeded], tmp_path / "out")
  md = (tmp_path / "out/tables.md").read_text()
  assert "Seeds in paper: 6 runs of 3 seeds, 1 run of 1 seed." in md
  # table3/B2: RMSE 6.8 ± 0.1 around the paper's 6.7954: inside, unmarked.
  cells = _table_line(md, 3, "3x3x3 (B2)")
  assert cells[1] == "6.80 ± 0.10 (6.80, +0.00)"
  assert cells[2] == "5.10 ± 0.08 (5.01, +0.09)"  # MAE 0.75 RMSE: SD 0.075, 2 SD > 0.09
  # table9/GRU-B1: 7.10 ± 0.10, the paper's 8.3539 is 12 SDs away.
  assert _table_line(md, 9, "BatchNorm (B1)")[1] == "7.10 ± 0.10 (8.35†, -1.25)"
  # A solo run looks as before; an alias row shows its run's spread.
  assert _table_line(md, 2, "Dropout + Flatten + Dense (OG)")[1] == "7.30 (7.20, +0.10)"
  assert _table_line(md, 2, "GAP + Dropout + Dense (A)")[1] == "7.50 ± 0.10 (7.09†, +0.41)"
  # The rule is each such table's caption, and only theirs.
  for table in (2, 3, 4, 5, 9, 10):
    section = md[md.index(f"## Table {table}.") : md.index(f"## Table {table}.") + 400]
    assert paper_report.SPREAD_CAPTION in section, table
  section = md[md.index("## Table 8.") : md.index("## Table 9.")]
  assert paper_report.SPREAD_CAPTION not in section
  assert "outside our mean ± 2 SD" in paper_report.SPREAD_CAPTION

  rows = {
    (r["table"], r["experiment"], r["metric"]): r
    for r in _read_csv(tmp_path / "out/tables.csv")
    if r["ours"]
  }
  b2 = rows[("3", "table3/B2", "rmse")]
  assert float(b2["ours"]) == pytest.approx(6.8)
  assert float(b2["ours_sd"]) == pytest.approx(0.1)
  assert b2["seeds"] == "3"
  og = rows[("2", "table2/OG", "rmse")]
  assert (og["ours_sd"], og["seeds"]) == ("", "1")


def test_solo_root_has_no_spread(tmp_path):
  root = tmp_path / "solo"
  _write_run(root, "table3/B2", 6.9)
  paper_report.write_report([root], tmp_path / "out")
  md = (tmp_path / "out/tables.md").read_text()
  assert _table_line(md, 3, "3x3x3 (B2)")[1] == "6.90 (6.80, +0.10)"
  assert "±" not in md.split("## The paper's comparisons")[0]
  assert "Seeds in" not in md and paper_report.SPREAD_CAPTION not in md


def test_comparisons_table(seeded, tmp_path):
  paper_report.write_report([seeded], tmp_path / "out")
  md = (tmp_path / "out/tables.md").read_text()
  section = md[md.index("## The paper's comparisons") : md.index("## Test error by true-EF")]
  assert "95% Welch t interval" in section

  def row(a, b):
    line = next(line for line in section.splitlines() if f"| `{a}` | `{b}` |" in line)
    return [c.strip() for c in line.strip("|").split("|")]

  # Topic, pair, a, b, paper a - b, ours a - b, interval, seeds, verdict.
  holds = row("table3/B1", "table3/B2")
  assert holds[0] == "Conv2 1x1x1 vs 3x3x3" and holds[4] == "+0.30" and holds[5] == "+0.70"
  t = paper_report.t_quantile(0.975, 4)  # equal SDs (0.1) and counts: Welch's df is 4
  half = t * math.sqrt(0.01 / 3 + 0.01 / 3)
  assert holds[6] == f"[{0.7 - half:+.2f}, {0.7 + half:+.2f}]"
  assert holds[7:] == ["3 vs 3", "holds"]
  noise = row("table5/B1", "table5/L1")
  assert noise[4] == "+0.87" and noise[8] == "within seed noise"
  reversed_ = row("table9/GRU-B1", "table9/LSTM-B1")
  assert reversed_[4] == "+0.49" and reversed_[5] == "-1.00" and reversed_[8] == "reversed"
  solo = row("table2/A", "table2/OG")
  assert solo[5:] == ["+0.20", "n/a", "3 vs 1", "n/a"]
  missing = row("table6/SI-B1", "table6/DI-B1")
  assert missing[5:] == ["–", "–", "–", "–"]

  rows = _read_csv(tmp_path / "out/comparisons.csv")
  assert len(rows) == len(experiments.COMPARISONS)
  found = {(r["a"], r["b"]): r for r in rows}
  r = found[("table3/B1", "table3/B2")]
  assert float(r["diff"]) == pytest.approx(0.7)
  assert float(r["low"]) == pytest.approx(0.7 - half)
  assert float(r["paper_diff"]) == pytest.approx(7.0906 - 6.7954)
  assert (r["seeds_a"], r["seeds_b"], r["verdict"]) == ("3", "3", "holds")
  assert found[("table2/A", "table2/OG")]["low"] == ""


def test_welch_interval_against_scipy():
  stats = pytest.importorskip("scipy.stats")
  a, b = [7.1, 7.5, 6.9, 7.3], [6.2, 7.9, 6.8]
  diff, (low, high) = paper_report.welch_interval(a, b)
  expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert diff == pytest.approx(statistics.mean(a) - statistics.mean(b))
  assert (low, high) == pytest.approx((expected.low, expected.high))
  assert paper_report.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
  assert paper_report.welch_interval([7.0], [6.0, 6.5]) == (pytest.approx(0.75), None)
  assert paper_report.welch_interval([7.0, 7.0], [6.0, 6.0]) == (1.0, (1.0, 1.0))


@pytest.mark.parametrize(
  "paper_diff,interval,expected",
  [
    (0.3, (0.1, 0.5), "holds"),
    (-0.3, (-0.5, -0.1), "holds"),
    (0.3, (-0.1, 0.5), "within seed noise"),
    (0.3, (-0.5, -0.1), "reversed"),
    (-0.3, (0.1, 0.5), "reversed"),
    (0.3, None, "n/a"),
  ],
)
def test_verdict(paper_diff, interval, expected):
  assert paper_report.verdict(paper_diff, interval) == expected


def test_comparisons_name_experiments_and_distinct_runs():
  for pair in experiments.COMPARISONS:
    assert experiments.canonical(pair.a) != experiments.canonical(pair.b), pair
  topics = {pair.topic for pair in experiments.COMPARISONS}
  assert len(topics) == 6
  paper = paper_report._paper_rmse(paper_report.load_paper())
  assert all(pair.a in paper and pair.b in paper for pair in experiments.COMPARISONS)


def test_figures_have_error_bars_over_seeds(seeded, tmp_path, monkeypatch):
  figures = {}

  def keep(fig, path):
    figures[pathlib.Path(path).name] = fig

  monkeypatch.setattr(paper_report.plots, "_save", keep)
  sweeps = paper_report.load_sweeps([seeded])
  bars = paper_report.generalization_gap_figure(sweeps, tmp_path / "gap.png")
  names = list(sweeps[0].runs)
  mini, og = names.index("table1/mini"), names.index("table2/OG")
  values, sds = bars["RMSE: train - test"]
  assert values[mini] == pytest.approx(-1.0) and sds[mini] == pytest.approx(0.0, abs=1e-9)
  assert math.isnan(sds[og])
  # The loss gap of each member at its own best epoch (1, 2, 3): 11, 12, 13.
  values, sds = bars["loss (MSE): val - train, best epoch"]
  assert values[mini] == pytest.approx(12.0) and sds[mini] == pytest.approx(1.0)
  assert values[og] == pytest.approx(10.0 + EPOCHS - 1) and math.isnan(sds[og])
  axes = figures["gap.png"].axes
  for ax in axes:  # one error-bar set a panel: a bar for each of the six runs of three seeds
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(container.lines[2][0].get_segments()) == 6

  points = paper_report.performance_figure(sweeps, tmp_path / "perf.png")
  by_name = {p.run.name: p for p in points}
  b5 = by_name["table5/B1"]
  assert (b5.x, b5.x_sd) == (pytest.approx(9.0), pytest.approx(1.0))
  assert (b5.y, b5.y_sd) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))
  assert math.isnan(by_name["table2/OG"].x_sd)
  ax = figures["perf.png"].axes[0]
  (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  assert len(container.lines[2][0].get_segments()) == 6  # x bars of the six, not the solo run
  plt.close("all")


def test_figure_16_labels_never_overlap(tmp_path, monkeypatch):
  """45 runs piled into one corner, as a --runlocal sweep's: some labels are left out, the
  ones drawn overlap nothing, and the CSV lists every run."""
  root = tmp_path / "pile"
  names = experiments.names(include_aliases=False)
  for index, name in enumerate(names):
    _write_run(root, name, 8.1 + 0.002 * index + (0.5 if index == 0 else 0.0))
  figures = {}
  monkeypatch.setattr(paper_report.plots, "_save", lambda fig, path: figures.update(fig=fig))
  sweeps = paper_report.load_sweeps([root])
  points = paper_report.performance_figure(sweeps, tmp_path / "perf.png")
  assert len(points) == len(names) == 45
  assert {p.family for p in points} >= {"i3d", "r2plus1d"}
  labelled = [p for p in points if p.labelled]
  assert 0 < len(labelled) < 45
  assert names[0] in {p.run.name for p in labelled}  # the isolated run gets its label
  fig = figures["fig"]
  renderer = fig.canvas.get_renderer()
  texts = [t for t in fig.axes[0].texts if t.get_text() in names]
  assert sorted(t.get_text() for t in texts) == sorted(p.run.name for p in labelled)
  boxes = [t.get_window_extent(renderer) for t in texts]
  for i, box in enumerate(boxes):
    assert not any(box.overlaps(other) for other in boxes[i + 1 :])
  plt.close("all")
  monkeypatch.undo()
  paper_report.write_report([root], tmp_path / "out")
  rows = _read_csv(tmp_path / "out/performance_vs_generalization.csv")
  assert len(rows) == 45 and sum(int(r["labelled"]) for r in rows) == len(labelled)
  assert (tmp_path / "out/performance_vs_generalization.png").read_bytes()[:4] == PNG_MAGIC


def _block_line(md: str, row: str) -> list[str]:
  start = md.index("## Past the paper: EchoNet-Dynamic's models")
  section = md[start : md.index("\n## ", start + 1)]
  line = next(line for line in section.splitlines() if line.startswith(f"| {row} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_echonet_block_sets_our_runs_beside_echonet_dynamic_s_figures(tmp_path):
  """One row per echonet/ experiment: ours (mean ± SD of several seeds, as every cell) beside
  EchoNet-Dynamic's beat-to-beat and one-clip figures; ours alone where none is published."""
  root = tmp_path / "runs"
  _write_run(root, "echonet/r2plus1d_32_2", [5.4, 5.6, 5.5])
  _write_run(root, "echonet/r3d_32_2", 6.0)
  paper_report.write_report([root], tmp_path / "out")
  md = (tmp_path / "out/tables.md").read_text()
  block = md[md.index("## Past the paper") : md.index("## The paper's comparisons")]
  assert "Ouyang et al., Nature 2020" in block and paper_report.SPREAD_CAPTION in block
  r2plus1d = _block_line(md, "R(2+1)D-18, EchoNet-Dynamic's recipe")
  # RMSE 5.5 ± 0.1; MAE 0.75 RMSE; R² 1 - RMSE²/150 (the fake runs' metrics).
  assert r2plus1d[1] == "5.50 ± 0.10 (5.32, +0.18)"
  assert r2plus1d[2] == "4.12 ± 0.07 (4.05, +0.08)"  # 4.125 - 4.05
  r2 = statistics.mean(1 - x**2 / 150 for x in (5.4, 5.6, 5.5))
  assert r2plus1d[3].startswith(f"{r2:.3f} ± ") and r2plus1d[3].endswith(
    f"(0.810, {r2 - 0.81:+.3f})"
  )
  assert r2plus1d[4] == "5.50 ± 0.10 (5.56, -0.06)"
  assert _block_line(md, "R3D-18, EchoNet-Dynamic's recipe")[1:] == [
    "6.00",
    "4.50",
    "0.760",
    "6.00",
  ]
  assert _block_line(md, "MC3-18, EchoNet-Dynamic's recipe")[1:] == ["–"] * 4
  assert "Finished runs" in md and "2 of 45" in md

  rows = [r for r in _read_csv(tmp_path / "out/tables.csv") if r["table"] == "echonet"]
  assert len(rows) == 12
  found = {(r["experiment"], r["column"], r["metric"]): r for r in rows}
  beat = found[("echonet/r2plus1d_32_2", "beat-to-beat", "rmse")]
  assert (float(beat["ours"]), beat["paper"], beat["seeds"]) == (pytest.approx(5.5), "5.32", "3")
  assert float(beat["diff"]) == pytest.approx(5.5 - 5.32)
  assert float(beat["ours_sd"]) == pytest.approx(0.1)
  r3d = found[("echonet/r3d_32_2", "beat-to-beat", "rmse")]
  assert (float(r3d["ours"]), r3d["paper"], r3d["diff"]) == (pytest.approx(6.0), "", "")
  assert found[("echonet/mc3_32_2", "one clip", "rmse")]["ours"] == ""
  # Figure 16 has EchoNet-Dynamic's models as a family of their own.
  (points,) = [_read_csv(tmp_path / "out/performance_vs_generalization.csv")]
  assert {r["family"] for r in points} == {"r2plus1d"}
  assert paper_report.FAMILY_NAMES["r2plus1d"] and paper_report.FAMILY_MARKERS["r2plus1d"]


def test_members_of_a_grid_are_a_warning(tmp_path):
  root = tmp_path / "grid"
  _write_run(
    root, "table3/B2", [6.8, 6.9], hparams=[{"learning_rate": 1e-3}, {"learning_rate": 3e-4}]
  )
  sweep = paper_report.load_sweep(root)
  assert any("differ in hyperparameters" in m for m in sweep.warnings)


def _write_external(run: pathlib.Path, dataset: str, name: str, rmse: float, r2) -> None:
  """An evaluation of ``run`` on an external dataset, as ``--mode=eval`` writes its report."""
  split = name.split("_")[0]
  report = {
    "split": split,
    "clips": name.split("_")[1],
    "n": 40,
    "dataset": dataset,
    "external": True,
    "rmse": {"value": rmse, "ci95": [rmse - 0.5, rmse + 0.6]},
    "mae": {"value": 0.8 * rmse, "ci95": [0.8 * rmse - 0.4, 0.8 * rmse + 0.4]},
    "r2": {"value": r2, "ci95": None if r2 is None else [r2 - 0.1, r2 + 0.05]},
  }
  folder = run / "eval" / "external" / dataset
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{name}.json").write_text(json.dumps(report))


def test_external_validation_block(tmp_path):
  root = tmp_path / "runs"
  b2 = _write_run(root, "table3/B2", 6.9)
  seeds = _write_run(root, "table1/mini", [7.5, 7.6, 7.4])
  paper_report.write_report([root], tmp_path / "before")
  assert "## External validation" not in (tmp_path / "before/tables.md").read_text()
  assert not (tmp_path / "before/external.csv").exists()

  _write_external(b2, "camus-database_nifti", "all_one", 8.25, 0.41)
  _write_external(b2, "camus-database_nifti", "test_one", 9.0, 0.3)  # all_ wins over test_
  _write_external(b2, "echonet_pediatric-pediatric", "test_one", 7.0, None)
  _write_external(seeds, "camus-database_nifti", "all_all", 8.5, 0.4)
  (seeds / "eval/external/broken").mkdir()
  (seeds / "eval/external/broken/all_one.json").write_text("{")
  (seeds / "eval/external/empty").mkdir()  # no report: no row
  summary = paper_report.write_report([root], tmp_path / "out")
  assert str(tmp_path / "out" / "external.csv") in summary
  md = (tmp_path / "out/tables.md").read_text()
  assert md.index("## Test error by true-EF range") < md.index("## External validation")
  block = md[md.index("## External validation") :]
  assert (
    "| Run | Dataset | n | RMSE [95 % CI] | MAE | R² [95 % CI] | Internal test RMSE "
    "| Internal test R² |" in block
  )
  lines = [line for line in block.splitlines() if line.startswith("| table")]
  # Registry order of the runs (table1 before table3), then the datasets by name.
  assert lines == [
    "| table1/mini | camus-database_nifti | 40 | 8.50 [8.00, 9.10] | 6.80 | 0.400 [0.300, 0.450] "
    f"| 7.50 ± 0.10 | {statistics.mean(1 - x**2 / 150 for x in (7.5, 7.6, 7.4)):.3f} ± 0.010 |",
    "| table3/B2 | camus-database_nifti | 40 | 8.25 [7.75, 8.85] | 6.60 | 0.410 [0.310, 0.460] "
    f"| 6.90 | {1 - 6.9**2 / 150:.3f} |",
    "| table3/B2 | echonet_pediatric-pediatric (test split) | 40 | 7.00 [6.50, 7.60] | 5.60 | – "
    f"| 6.90 | {1 - 6.9**2 / 150:.3f} |",
  ]
  assert "table1/mini/eval/external/broken/all_one.json: unreadable evaluation" in md
  rows = _read_csv(tmp_path / "out/external.csv")
  assert list(rows[0]) == paper_report.EXTERNAL_COLUMNS.split()
  assert [(r["experiment"], r["dataset"], r["split"], r["clips"]) for r in rows] == [
    ("table1/mini", "camus-database_nifti", "all", "all"),
    ("table3/B2", "camus-database_nifti", "all", "one"),
    ("table3/B2", "echonet_pediatric-pediatric", "test", "one"),
  ]
  camus = rows[1]
  assert float(camus["rmse"]) == 8.25 and float(camus["rmse_low"]) == 7.75
  assert float(camus["r2_high"]) == pytest.approx(0.46)
  assert float(camus["internal_test_rmse"]) == pytest.approx(6.9)
  assert float(camus["internal_test_r2"]) == pytest.approx(1 - 6.9**2 / 150)
  assert rows[2]["r2"] == "" and rows[2]["r2_low"] == "" and camus["recipe"] == "paper"
