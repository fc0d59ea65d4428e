r"""Runs the paper's benchmark: every named experiment, one after another, into ``ROOT/<name>/``.

  python -m lvef_jax.sweep --root=runs/paper --config.data.root=/path/to/EchoNet-Dynamic
  python -m lvef_jax.sweep --root=runs/improved --recipe=improved --filter='table[45]/'
  python -m lvef_jax.sweep --root=runs/paper --filter='^echonet/'   # EchoNet-Dynamic's models
  python -m lvef_jax.sweep --root=/tmp/smoke --runlocal      # the whole suite in minutes, CPU
  python -m lvef_jax.sweep --root=runs/paper_3seeds --seeds=3  # 3 members per run, one program

- The 45 runs: the paper's 42 (``tableN/...``), then EchoNet-Dynamic's three video ResNets
  (``echonet/...``), which train with EchoNet-Dynamic's recipe under either ``--recipe``: a
  second recipe's sweep can leave them out with ``--filter=^table``.
- An experiment whose ``results.json`` exists is done and skipped; an interrupted one resumes
  from its latest checkpoint (``launch.py`` resumes a workdir); a failed one is recorded in
  ``ROOT/sweep_status.json`` with its error, and the sweep goes on to the next. The exit
  status is 1 if any experiment failed in this call.
- Several sweeps on one root (one per GPU, e.g. ``CUDA_VISIBLE_DEVICES=1 python -m
  lvef_jax.sweep --root=...``) share the work: each experiment directory has a lock file
  held while it runs, and a sweep passes over experiments another process holds.
- ``--config.KEY=VALUE`` (only this form) is handed to every experiment whose config has
  ``KEY`` (``--config.model.backbone_weights=...`` reaches the InceptionV3 runs only); a key no
  selected experiment has is an error.
- ``--seeds=K`` trains every experiment as K members in one program (seeds ``seed`` to
  ``seed + K - 1``; ``--config.train.seeds=K`` on each ``launch.py`` run). A root holds runs of
  one K: a run directory whose ``config.json`` records another ``train.seeds`` is refused with
  both counts (finished or not), rather than skipped or mixed. ``sweep_status.json`` records
  each run's ``seeds``.
- Each experiment runs as its own ``launch.py`` process, its output appended to
  ``ROOT/<name>/log.txt``: a crash or an out-of-memory in one run cannot take the sweep down.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

from absl import app, flags

from lvef_jax import experiments, filelock
from lvef_jax.errors import ConfigError

ROOT = flags.DEFINE_string("root", None, "Sweep folder: one run directory per experiment.")
FILTER = flags.DEFINE_string(
  "filter", "", "Regular expression: run the experiments whose name (or an alias) matches."
)
RECIPE = flags.DEFINE_enum(
  "recipe", "paper", list(experiments.RECIPES), "The paper's recipe or this project's."
)
RUNLOCAL = flags.DEFINE_bool(
  "runlocal", False, "Shrink every experiment to a smoke test on synthetic data (2-core CPU)."
)
SEEDS = flags.DEFINE_integer(
  "seeds",
  1,
  "Members per experiment, trained in one program (--config.train.seeds=K).",
  lower_bound=1,
)
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print what would run, run nothing.")

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch.py"
STATUS_FILE = "sweep_status.json"
RESULTS_FILE = "results.json"
LOCK_FILE = ".sweep.lock"


def select(pattern: str) -> list[str]:
  """The runs (canonical names, table order) selected by ``pattern``: a match on a run's name
  or on one of its aliases selects the run."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"--filter={pattern!r} is not a regular expression: {e}") from e
  chosen = []
  for name in experiments.names():
    run = experiments.canonical(name)
    if regex.search(name) and run not in chosen:
      chosen.append(run)
  if not chosen:
    raise ConfigError(f"--filter={pattern!r} matches no experiment (see --list_experiments)")
  return sorted(chosen, key=experiments.names(include_aliases=False).index)


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      if part not in node:
        return False
    except TypeError:  # a leaf value
      return False
    node = node[part]
  return True


def overrides_per_run(
  runs: list[str], overrides: list[str], recipe: str, runlocal: bool
) -> dict[str, list[str]]:
  """``--config.KEY=VALUE`` arguments for each run: those whose KEY its config has."""
  configs = {run: experiments.get_config(run, recipe, runlocal) for run in runs}
  per_run = {run: [] for run in runs}
  for override in overrides:
    key = override.removeprefix("--config.").partition("=")[0]
    if "=" not in override or not key:
      raise ConfigError(f"{override!r}: expected --config.KEY=VALUE")
    takers = [run for run in runs if _has_key(configs[run], key)]
    if not takers:
      raise ConfigError(f"{override!r}: no selected experiment has config key {key!r}")
    for run in takers:
      per_run[run].append(override)
  return per_run


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def update_status(root: pathlib.Path, name: str, **record) -> None:
  """Merges ``record`` into ``ROOT/sweep_status.json[name]`` (locked; written atomically)."""
  path = root / STATUS_FILE
  with filelock.exclusive(root / ".sweep_status.lock"):
    status = json.loads(path.read_text()) if path.exists() else {}
    status[name] = {**status.get(name, {}), **record, "updated": _now()}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _recorded_config(run_dir: pathlib.Path) -> dict | None:
  """The run's ``config.json``; None where there is none (or it is unreadable: launch.py,
  which compares the whole config, decides then)."""
  path = run_dir / "config.json"
  if not path.is_file():
    return None
  try:
    config = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None
  return config if isinstance(config, dict) else None


def _recorded_recipe(run_dir: pathlib.Path) -> str | None:
  experiment = (_recorded_config(run_dir) or {}).get("experiment")
  return experiment.get("recipe") if isinstance(experiment, dict) else None


def _recorded_seeds(run_dir: pathlib.Path) -> int | None:
  """``train.seeds`` of the run in ``run_dir`` (1 for a config without the key); None: no run."""
  config = _recorded_config(run_dir)
  if config is None:
    return None
  train = config.get("train")
  try:
    return int(train.get("seeds", 1)) if isinstance(train, dict) else 1
  except (TypeError, ValueError):
    return None


def mismatch(run_dir: pathlib.Path, recipe: str, seeds: int) -> str:
  """Why the run in ``run_dir`` cannot be this sweep's (another recipe or ``train.seeds``); ""
  when it can (or there is no run yet)."""
  recorded = _recorded_recipe(run_dir)
  if recorded is not None and recorded != recipe:
    return (
      f"{run_dir} holds a run of recipe {recorded!r}, this sweep's is {recipe!r}: "
      "use another --root for each recipe"
    )
  recorded_seeds = _recorded_seeds(run_dir)
  if recorded_seeds is not None and recorded_seeds != seeds:
    return (
      f"{run_dir} holds a run of train.seeds={recorded_seeds}, this sweep's is --seeds={seeds}: "
      f"use another --root for each number of seeds (or --seeds={recorded_seeds})"
    )
  return ""


def launch_command(
  root: pathlib.Path,
  name: str,
  recipe: str,
  runlocal: bool,
  overrides: list[str],
  seeds: int = 1,
) -> list[str]:
  """The ``launch.py`` command that runs experiment ``name`` into ``root/name``."""
  return [
    sys.executable,
    str(LAUNCH),
    f"--experiment={name}",
    f"--recipe={recipe}",
    f"--workdir={root / name}",
    *(["--runlocal"] if runlocal else []),
    *([f"--config.train.seeds={seeds}"] if seeds != 1 else []),
    *overrides,
  ]


def _error_of(log: pathlib.Path, since: int) -> str:
  """The run's ``error: ...`` line, else the last lines of its log (what this call wrote)."""
  with log.open("rb") as f:
    f.seek(since)
    lines = f.read().decode(errors="replace").splitlines()
  errors = [line for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1].removeprefix("error: ")
  return "\n".join(lines[-15:]) or "no output"


@dataclasses.dataclass
class Outcome:
  status: str  # done | failed | skipped (finished earlier) | busy (another process holds it)
  seconds: float = 0.0
  error: str = ""


def run_one(
  root: pathlib.Path,
  name: str,
  recipe: str,
  runlocal: bool,
  overrides: list[str],
  seeds: int = 1,
) -> Outcome:
  """Runs experiment ``name`` into ``root/name`` unless it is finished or held elsewhere.

  A run directory holding a run of another recipe or number of seeds fails with both named,
  finished or not: a finished one would otherwise be counted as this sweep's.
  """
  run_dir = root / name
  error = mismatch(run_dir, recipe, seeds)
  if error:
    update_status(root, name, status="failed", error=error, recipe=recipe, seeds=seeds)
    return Outcome("failed", error=error)
  if (run_dir / RESULTS_FILE).exists():
    return Outcome("skipped")
  with filelock.exclusive(run_dir / LOCK_FILE, wait=False) as held:
    if not held:
      return Outcome("busy")
    if (run_dir / RESULTS_FILE).exists():  # finished by another process meanwhile
      return Outcome("skipped")
    command = launch_command(root, name, recipe, runlocal, overrides, seeds)
    log = run_dir / "log.txt"
    start_offset = log.stat().st_size if log.exists() else 0
    update_status(
      root,
      name,
      status="running",
      recipe=recipe,
      runlocal=runlocal,
      seeds=seeds,
      host=socket.gethostname(),
      pid=os.getpid(),
      started=_now(),
      command=" ".join(command),
      error="",
    )
    start = time.perf_counter()
    with log.open("ab") as out:
      out.write(f"\n=== {_now()} {' '.join(command)}\n".encode())
      out.flush()
      returncode = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if returncode == 0 and (run_dir / RESULTS_FILE).exists():
      update_status(root, name, status="done", seconds=round(seconds, 1), finished=_now())
      return Outcome("done", seconds)
    error = _error_of(log, start_offset)
    update_status(
      root,
      name,
      status="failed",
      returncode=returncode,
      seconds=round(seconds, 1),
      finished=_now(),
      error=error,
    )
    return Outcome("failed", seconds, error)


def _clock(seconds: float) -> str:
  seconds = max(0, int(seconds))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def sweep(
  root: pathlib.Path,
  runs: list[str],
  recipe: str,
  runlocal: bool,
  overrides: dict[str, list[str]],
  log=functools.partial(print, flush=True),  # flushed: a sweep's log is often a file
  seeds: int = 1,
) -> dict[str, Outcome]:
  """Runs ``runs`` in order; returns each one's outcome. Progress goes to ``log``."""
  outcomes: dict[str, Outcome] = {}
  timed: list[float] = []
  for index, name in enumerate(runs, start=1):
    left = len(runs) - index + 1
    eta = f", ETA {_clock(sum(timed) / len(timed) * left)}" if timed else ""
    done = sum(o.status in ("done", "skipped") for o in outcomes.values())
    failed = sum(o.status == "failed" for o in outcomes.values())
    log(f"[{index}/{len(runs)}] {name} (finished {done}, failed {failed}{eta})")
    outcome = run_one(root, name, recipe, runlocal, overrides.get(name, []), seeds)
    outcomes[name] = outcome
    if outcome.status == "done":
      timed.append(outcome.seconds)
      log(f"  done in {_clock(outcome.seconds)}")
    elif outcome.status == "failed":
      first_line = outcome.error.strip().splitlines()[-1] if outcome.error.strip() else ""
      log(f"  FAILED ({first_line}); log: {root / name / 'log.txt'}")
    elif outcome.status == "skipped":
      log("  already finished")
    else:
      log("  running in another process")
  return outcomes


def dry_run_line(
  root: pathlib.Path, name: str, recipe: str, runlocal: bool, overrides: list[str], seeds: int
) -> str:
  """``name: <state> <the launch.py arguments that follow --workdir>`` for ``--dry_run``."""
  error = mismatch(root / name, recipe, seeds)
  if error:
    return f"{name}: refused ({error})"
  if (root / name / RESULTS_FILE).exists():
    return f"{name}: finished"
  command = launch_command(root, name, recipe, runlocal, overrides, seeds)
  return f"{name}: to run {' '.join(command[5:])}".rstrip()


def main(argv, overrides: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not ROOT.value:
    raise app.UsageError("--root is required")
  root = pathlib.Path(ROOT.value).expanduser().absolute()
  seeds = SEEDS.value
  try:
    if any(o.startswith("--config.train.seeds=") for o in overrides):
      raise ConfigError("give the number of members as --seeds=K, not --config.train.seeds")
    runs = select(FILTER.value)
    per_run = overrides_per_run(runs, overrides, RECIPE.value, RUNLOCAL.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"sweep of {len(runs)} experiments, recipe {RECIPE.value}"
    f"{f', {seeds} seeds each' if seeds > 1 else ''}"
    f"{' (runlocal smoke test)' if RUNLOCAL.value else ''}, into {root}",
    flush=True,
  )
  if DRY_RUN.value:
    for run in runs:
      print(f"  {dry_run_line(root, run, RECIPE.value, RUNLOCAL.value, per_run[run], seeds)}")
    return 0
  root.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  outcomes = sweep(root, runs, RECIPE.value, RUNLOCAL.value, per_run, seeds=seeds)
  counts = {
    s: sum(o.status == s for o in outcomes.values()) for s in ("done", "skipped", "busy", "failed")
  }
  print(
    f"sweep finished in {_clock(time.perf_counter() - start)}: {counts['done']} run, "
    f"{counts['skipped']} finished earlier, {counts['busy']} held by other processes, "
    f"{counts['failed']} failed (see {root / STATUS_FILE})"
  )
  return 1 if counts["failed"] else 0


def run() -> None:
  """Entry point: ``--config.KEY=VALUE`` arguments are the experiments', not absl flags."""
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  argv = [a for a in sys.argv if not a.startswith("--config.")]
  app.run(lambda args: sys.exit(main(args, overrides)), argv=argv)


if __name__ == "__main__":
  run()
