r"""Trains, evaluates or summarises a model of the paper.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart
  python launch.py --config=configs/i3d.py:variant=mini,conv2=3x3x3 --workdir=runs/mini \
      --config.data.root=/data/EchoNet-Dynamic --config.train.batch_size=8
  python launch.py --config=configs/i3d.py --workdir=runs/mini --mode=eval
  python launch.py --config=configs/i3d.py:variant=original --mode=summary
  python launch.py --list_experiments
  python launch.py --experiment=table3/B2 --workdir=runs/paper/table3/B2 \
      --config.data.root=/data/EchoNet-Dynamic [--recipe=paper|improved] [--runlocal]

Rerunning ``--mode=train`` in the same workdir resumes from the latest checkpoint.

A problem the user can fix (the data folder, a config value, no checkpoint, a diverging run)
ends the program with one ``error: ...`` message on stderr and exit status 1; anything else is a
bug and ends it with its traceback.
"""

import logging as py_logging
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lvef_jax.errors import LvefError

WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")
MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "summary"],
  "train (then evaluate), eval (best checkpoint of workdir), summary.",
)
CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/i3d.py:variant=mini."
)
EXPERIMENT = flags.DEFINE_string(
  "experiment",
  None,
  "A named experiment of the paper's benchmark (see --list_experiments) instead of --config.",
)
RECIPE = flags.DEFINE_enum(
  "recipe",
  "paper",
  ["paper", "improved"],
  "With --experiment: the paper's data and BatchNorm recipe, or this project's improvements.",
)
RUNLOCAL = flags.DEFINE_bool(
  "runlocal", False, "With --experiment: shrink the run to a smoke test on synthetic data."
)
LIST_EXPERIMENTS = flags.DEFINE_bool(
  "list_experiments", False, "Print the benchmark's experiment names, one per line, and exit."
)
EXPERIMENT_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "experiment.py"


class _QuietLibraries(py_logging.Filter):
  """Drops Orbax's and TFDS's INFO chatter (a dozen lines per checkpoint); keeps warnings."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
      part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/")
    )


def _run(config, mode: str, workdir: str | None) -> None:
  if mode == "summary":
    from lvef_jax.reporting import summary  # JAX and Flax only: no data, no TensorFlow.

    print(summary.parameter_table(config))
    return
  from lvef_jax.training import trainer  # Here so that --mode=summary never loads TensorFlow.

  if mode == "train":
    trainer.train_and_evaluate(config, workdir)
  else:
    trainer.evaluate_checkpoint(config, workdir)


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last value of ``--name=V`` or ``--name V`` in ``argv`` (before absl parses it)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.partition("=")[2]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_experiment_config(argv: list[str]) -> list[str]:
  """Turns ``--experiment=NAME [--recipe=R] [--runlocal]`` into the config file that builds it.

  ``--config.key=value`` overrides need ``--config`` on the command line when absl parses it,
  so the experiment's config file is added here, before parsing.
  """
  name = _flag_value(argv, "experiment")
  if name is None:
    return argv
  if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
    raise SystemExit("error: give --experiment or --config, not both")
  from lvef_jax import experiments  # plain data: no JAX, no TensorFlow

  experiments.canonical(name)  # an unknown name is one clear error, not a flag-parsing trace
  recipe = _flag_value(argv, "recipe") or "paper"
  if recipe not in experiments.RECIPES:
    raise LvefError(f"--recipe={recipe}: expected one of {', '.join(experiments.RECIPES)}")
  runlocal = "--runlocal" in argv or _flag_value(argv, "runlocal") in ("true", "True", "1")
  config = f"--config={EXPERIMENT_CONFIG}:{name},recipe={recipe},runlocal={int(runlocal)}"
  return [argv[0], config, *argv[1:]]


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if LIST_EXPERIMENTS.value:
    from lvef_jax import experiments

    print("\n".join(experiments.names()))
    return 0
  config = CONFIG.value
  if config is None:
    raise app.UsageError(
      "--config or --experiment is required, e.g. --config=configs/quickstart.py"
    )
  if MODE.value != "summary" and not WORKDIR.value:
    raise app.UsageError(f"--workdir is required for --mode={MODE.value}")
  try:
    _run(config, MODE.value, WORKDIR.value)
  except LvefError as e:
    # Said once, without the log prefix: dataset errors run to many lines, one per problem.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  try:
    argv = with_experiment_config(sys.argv)
  except LvefError as e:
    sys.exit(f"error: {e}")
  app.run(lambda argv: sys.exit(main(argv)), argv=argv)
