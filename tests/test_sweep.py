"""`python -m lvef_jax.sweep`: skips finished runs, resumes interrupted ones, survives failures,
and shares one root between several processes without running an experiment twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lvef_jax import filelock, sweep
from tests.conftest import ROOT, communicate_all

# sweeps of real runs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

# Two of the cheapest experiments, shrunk by --runlocal to a few seconds each.
CHEAP = ["table1/stem", "table7/DIT-B1"]


def _launches(log_text: str) -> int:
  return sum(line.startswith("=== ") for line in log_text.splitlines())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """One sweep over two experiments, the second made to fail by pointing it at no data."""
  root = tmp_path_factory.mktemp("sweep")
  cache = f"--config.data.cache_dir={root.parent / 'sweep_data'}"
  lines = []
  outcomes = sweep.sweep(
    root,
    CHEAP,
    "paper",
    True,
    {CHEAP[0]: [cache], CHEAP[1]: [cache, f"--config.data.root={root / 'no_such_folder'}"]},
    log=lines.append,
  )
  return root, cache, outcomes, lines


def test_a_failed_experiment_is_recorded_and_the_sweep_goes_on(swept):
  root, _, outcomes, lines = swept
  assert outcomes[CHEAP[0]].status == "done"
  assert outcomes[CHEAP[1]].status == "failed"
  assert "no_such_folder" in outcomes[CHEAP[1]].error
  status = json.loads((root / "sweep_status.json").read_text())
  assert status[CHEAP[0]]["status"] == "done" and status[CHEAP[0]]["recipe"] == "paper"
  assert status[CHEAP[1]]["status"] == "failed"
  assert "no_such_folder" in status[CHEAP[1]]["error"]
  assert status[CHEAP[1]]["returncode"] == 1
  assert (root / CHEAP[0] / "results.json").exists()
  assert not (root / CHEAP[1] / "results.json").exists()
  assert lines[0].startswith("[1/2] table1/stem") and any("FAILED" in line for line in lines)
  config = json.loads((root / CHEAP[0] / "config.json").read_text())
  assert config["experiment"] == {"name": CHEAP[0], "recipe": "paper", "runlocal": True}


def test_a_finished_experiment_is_skipped(swept):
  root, cache, _, _ = swept
  log_before = (root / CHEAP[0] / "log.txt").read_text()
  outcome = sweep.run_one(root, CHEAP[0], "paper", True, [cache])
  assert outcome.status == "skipped"
  assert (root / CHEAP[0] / "log.txt").read_text() == log_before


def test_an_interrupted_experiment_resumes_from_its_checkpoint(swept):
  root, cache, _, _ = swept
  run_dir = root / CHEAP[0]
  (run_dir / "results.json").unlink()  # as if killed during the final evaluation
  epochs = (run_dir / "metrics.jsonl").read_text()
  outcome = sweep.run_one(root, CHEAP[0], "paper", True, [cache])
  assert outcome.status == "done"
  log = (run_dir / "log.txt").read_text()
  assert _launches(log) == 2
  assert "resuming" in log.split("=== ")[-1]
  assert (run_dir / "metrics.jsonl").read_text() == epochs  # no epoch trained again
  assert (run_dir / "results.json").exists()


def test_an_experiment_held_by_another_process_is_passed_over(swept):
  root, cache, _, _ = swept
  with filelock.exclusive(root / CHEAP[1] / sweep.LOCK_FILE) as held:
    assert held
    assert sweep.run_one(root, CHEAP[1], "paper", True, [cache]).status == "busy"


def test_a_run_of_the_other_recipe_is_refused(swept):
  root, cache, _, _ = swept
  config = root / CHEAP[1] / "config.json"  # as if a paper-recipe run had started there
  config.write_text(json.dumps({"experiment": {"recipe": "paper"}}))
  outcome = sweep.run_one(root, CHEAP[1], "improved", True, [cache])
  assert outcome.status == "failed" and "use another --root" in outcome.error
  assert (
    "use another --root" in json.loads((root / "sweep_status.json").read_text())[CHEAP[1]]["error"]
  )
  config.unlink()


def test_two_sweeps_on_one_root_never_run_an_experiment_twice(tmp_path):
  command = [
    sys.executable,
    "-m",
    "lvef_jax.sweep",
    f"--root={tmp_path / 'root'}",
    "--filter=^table1/stem$|^table7/DIT-B1$",
    "--runlocal",
    f"--config.data.cache_dir={tmp_path / 'data'}",
  ]
  processes = [
    subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(2)
  ]
  outputs = [out for out, _ in communicate_all(processes, timeout=600)]
  assert [p.returncode for p in processes] == [0, 0], outputs
  for name in CHEAP:
    run_dir = tmp_path / "root" / name
    assert (run_dir / "results.json").exists()
    assert _launches((run_dir / "log.txt").read_text()) == 1, name
  status = json.loads((tmp_path / "root" / "sweep_status.json").read_text())
  assert {status[name]["status"] for name in CHEAP} == {"done"}


def test_filter_and_overrides():
  assert sweep.select("^table1/") == [
    "table1/stem",
    "table1/mini",
    "table1/stem_im3_im4",
    "table1/original",
  ]
  assert sweep.select("table2/A$") == ["table1/mini"]  # an alias selects its run
  with pytest.raises(sweep.ConfigError, match="matches no experiment"):
    sweep.select("table99")
  runs = ["table1/stem", "table8/TO-b5"]
  per_run = sweep.overrides_per_run(
    runs, ["--config.model.backbone_weights=w.h5", "--config.train.batch_size=8"], "paper", False
  )
  assert per_run == {
    "table1/stem": ["--config.train.batch_size=8"],
    "table8/TO-b5": ["--config.model.backbone_weights=w.h5", "--config.train.batch_size=8"],
  }
  with pytest.raises(sweep.ConfigError, match="no selected experiment has config key"):
    sweep.overrides_per_run(runs, ["--config.model.bogus=1"], "paper", False)


def test_cli_dry_run_and_bad_filter(tmp_path):
  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "lvef_jax.sweep", f"--root={tmp_path}", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )

  done = run("--dry_run", "--filter=^table5/")
  assert done.returncode == 0, done.stderr
  assert "table5/B1: to run" in done.stdout and "table5/L1: to run" in done.stdout
  done = run("--filter=(")
  assert done.returncode == 1 and "error: --filter='('" in done.stderr
