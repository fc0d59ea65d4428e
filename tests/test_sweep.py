"""`python -m lvef_jax.sweep`: skips finished runs, resumes interrupted ones, survives failures,
shares one root between several processes without running an experiment twice, and trains K
members per experiment with --seeds=K."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lvef_jax import filelock, sweep
from tests.conftest import PLAIN_OPS, ROOT, child_env, communicate_all, run_command

# Tests marked slow sweep real runs or start the CLI: left out of `make test-fast`.


@pytest.fixture(autouse=True, scope="module")
def _one_device_runs():
  """The runs these tests start see one CPU device: what is tested is the sweep, not the
  sharding (other tests cover it), and eight fake devices on two cores make a run about twice
  as slow and larger (docs/benchmarks.md, "The test suite")."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XLA_FLAGS", child_env(1)["XLA_FLAGS"])
    yield


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_finished_experiment_is_skipped(swept):
  root, cache, _, _ = swept
  log_before = (root / CHEAP[0] / "log.txt").read_text()
  outcome = sweep.run_one(root, CHEAP[0], "paper", True, [cache])
  assert outcome.status == "skipped"
  assert (root / CHEAP[0] / "log.txt").read_text() == log_before


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_experiment_held_by_another_process_is_passed_over(swept):
  root, cache, _, _ = swept
  with filelock.exclusive(root / CHEAP[1] / sweep.LOCK_FILE) as held:
    assert held
    assert sweep.run_one(root, CHEAP[1], "paper", True, [cache]).status == "busy"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
  assert sweep.select("^echonet/") == [
    "echonet/r2plus1d_32_2",
    "echonet/r3d_32_2",
    "echonet/mc3_32_2",
  ]
  everything = sweep.select("")
  assert len(everything) == 45 and everything[-3:] == sweep.select("^echonet/")
  assert len(sweep.select("^table")) == 42
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


@pytest.mark.slow
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
  done = run("--dry_run", "--filter=^table5/", "--seeds=2")
  assert done.returncode == 0, done.stderr
  assert "2 seeds each" in done.stdout
  assert "table5/B1: to run --config.train.seeds=2" in done.stdout
  done = run("--dry_run", "--filter=^table5/", "--config.train.seeds=2")
  assert done.returncode == 1 and "--seeds=K" in done.stderr
  done = run("--dry_run")
  assert done.returncode == 0, done.stderr
  assert "sweep of 45 experiments, recipe paper" in done.stdout
  lines = [line.strip() for line in done.stdout.splitlines()[1:]]
  assert len(lines) == 45 and lines[-1].startswith("echonet/mc3_32_2: to run")
  done = run("--dry_run", "--filter=^echonet/", "--runlocal", "--config.train.momentum=0.8")
  assert done.returncode == 0, done.stderr
  assert "sweep of 3 experiments" in done.stdout
  assert "echonet/r2plus1d_32_2: to run --runlocal --config.train.momentum=0.8" in done.stdout


@pytest.mark.slow
def test_a_runlocal_sweep_trains_echonet_dynamic_s_model_which_then_evaluates_and_predicts(
  tmp_path,
):
  """echonet/r2plus1d_32_2 through the sweep, shrunk by --runlocal: SGD, the input
  normalisation computed and recorded, all-clips results on val and test as EchoNet-Dynamic
  scores (the clips of --runlocal following each other), EchoNet-Dynamic's recipe recorded;
  then ``--mode=eval`` and ``--mode=predict`` of the run."""
  name = "echonet/r2plus1d_32_2"
  cache = f"--config.data.cache_dir={tmp_path / 'data'}"
  overrides = {name: [cache, PLAIN_OPS]}
  outcomes = sweep.sweep(tmp_path / "root", [name], "paper", True, overrides, log=print)
  assert outcomes[name].status == "done", outcomes[name].error
  run_dir = tmp_path / "root" / name
  results = json.loads((run_dir / "results.json").read_text())
  assert results["eval_clips"] == "all" and sorted(results["splits"]) == ["test", "val"]
  assert all(np.isfinite(results["splits"][s]["rmse"]) for s in ("val", "test"))
  config = json.loads((run_dir / "config.json").read_text())
  assert config["experiment"] == {"name": name, "recipe": "paper", "runlocal": True}
  assert (config["train"]["optimizer"], config["data"]["train_clip_start"]) == ("sgd", "random")
  assert (config["data"]["clip_frames"], config["eval"]["clip_stride"]) == (8, 0)
  assert config["model"]["arch"] == "r2plus1d_18"
  assert config["model"]["input_mean"] > 0 and config["model"]["input_std"] > 0

  launch = [sys.executable, str(ROOT / "launch.py"), f"--workdir={run_dir}", PLAIN_OPS]
  done = run_command([*launch, "--mode=eval", "--eval_split=test"], cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert list((run_dir / "eval").glob("test_*.json"))
  video = sorted((tmp_path / "data").glob("synthetic-*/Videos/*.avi"))[0]
  output = tmp_path / "ef.csv"
  predict = [*launch, "--mode=predict", f"--videos={video}", f"--output={output}"]
  done = run_command(predict, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert np.isfinite(float(output.read_text().splitlines()[1].split(",")[1]))


# ----------------------------------------------------------------------------- --seeds=K


def _fake_run(run_dir, seeds: int, recipe: str = "paper", finished: bool = True) -> None:
  """A run directory as launch.py leaves it: config.json (and results.json when finished)."""
  run_dir.mkdir(parents=True, exist_ok=True)
  config = {"train": {"seeds": seeds, "grid": ""}, "experiment": {"recipe": recipe}}
  (run_dir / "config.json").write_text(json.dumps(config))
  if finished:
    (run_dir / "results.json").write_text("{}")


def test_seeds_go_to_every_launch(tmp_path):
  command = sweep.launch_command(tmp_path, "table3/B2", "paper", False, ["--config.x=1"], seeds=2)
  assert command[2:] == [
    "--experiment=table3/B2",
    "--recipe=paper",
    f"--workdir={tmp_path / 'table3/B2'}",
    "--config.train.seeds=2",
    "--config.x=1",
  ]
  # One seed: the command of a sweep without --seeds.
  solo = sweep.launch_command(tmp_path, "table3/B2", "paper", True, [])
  assert not [a for a in solo if "train.seeds" in a] and "--runlocal" in solo
  line = sweep.dry_run_line(tmp_path, "table3/B2", "paper", True, [], 2)
  assert line == "table3/B2: to run --runlocal --config.train.seeds=2"


def test_a_run_of_other_seeds_is_refused_finished_or_not(tmp_path):
  _fake_run(tmp_path / "table1/stem", seeds=1)
  _fake_run(tmp_path / "table3/B2", seeds=3, finished=False)
  _fake_run(tmp_path / "table5/B1", seeds=3)
  outcome = sweep.run_one(tmp_path, "table1/stem", "paper", True, [], seeds=3)
  assert outcome.status == "failed"
  assert "train.seeds=1, this sweep's is --seeds=3" in outcome.error
  outcome = sweep.run_one(tmp_path, "table3/B2", "paper", True, [], seeds=1)
  assert outcome.status == "failed" and "train.seeds=3" in outcome.error
  status = json.loads((tmp_path / "sweep_status.json").read_text())
  assert status["table1/stem"]["seeds"] == 3 and status["table3/B2"]["seeds"] == 1
  assert "another --root" in status["table1/stem"]["error"]
  # The same number of seeds: finished, skipped.
  assert sweep.run_one(tmp_path, "table5/B1", "paper", True, [], seeds=3).status == "skipped"
  assert not (tmp_path / "table3/B2/log.txt").exists()  # nothing was launched
  line = sweep.dry_run_line(tmp_path, "table1/stem", "paper", True, [], 3)
  assert line.startswith("table1/stem: refused (") and "train.seeds=1" in line
  assert sweep.dry_run_line(tmp_path, "table5/B1", "paper", True, [], 3) == "table5/B1: finished"
  # A config.json without train.seeds is a run of one seed.
  (tmp_path / "table7/DIT-B1").mkdir(parents=True)
  (tmp_path / "table7/DIT-B1/config.json").write_text(json.dumps({"experiment": {}}))
  assert sweep.mismatch(tmp_path / "table7/DIT-B1", "paper", 1) == ""
  assert "train.seeds=1" in sweep.mismatch(tmp_path / "table7/DIT-B1", "paper", 2)
