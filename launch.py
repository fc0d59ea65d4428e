r"""Trains, evaluates or summarises a model of the paper.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart
  python launch.py --config=configs/i3d.py:variant=mini,conv2=3x3x3 --workdir=runs/mini \
      --config.data.root=/data/EchoNet-Dynamic --config.train.batch_size=8
  python launch.py --mode=eval --workdir=runs/mini --eval_split=test --eval_clips=all
  python launch.py --mode=eval --workdir=runs/mini_seeds --member=1   # one member of several
  python launch.py --mode=predict --workdir=runs/mini --videos=my_echos/ --output=ef.csv
  python launch.py --config=configs/i3d.py:variant=original --mode=summary
  python launch.py --mode=import --config=configs/r2plus1d.py --workdir=runs/echonet \
      --config.model.init_from=r2plus1d_18_32_2_pretrained.pt \
      --config.model.input_mean=M --config.model.input_std=S
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

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lvef_jax import cpu_backend, distributed, hostmem
from lvef_jax.errors import LvefError

WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")
MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "predict", "summary", "import"],
  "train (then evaluate), eval (score a checkpoint of workdir), predict (EF of new videos), "
  "summary (parameter table), import (a run directory from the PyTorch weights of "
  "--config.model.init_from, no training).",
)
EVAL_SPLIT = flags.DEFINE_enum(
  "eval_split", "test", ["train", "val", "test", "all"], "--mode=eval: the split to score."
)
EVAL_CLIPS = flags.DEFINE_enum(
  "eval_clips",
  None,
  ["one", "all", "beats"],
  "--mode=eval/predict: the clip from frame 0, every clip averaged per video, or (with "
  "--segmentation) the clips ending at each detected end-systole averaged per video "
  "(default: config eval.clips for eval, all for predict).",
)
SEGMENTATION = flags.DEFINE_string(
  "segmentation",
  None,
  "--mode=eval/predict of an EF run: a segmentation run's directory (configs/segmentation.py); "
  "every frame is segmented, giving the beats, EF from the masks and the pictures "
  "(area curves, overlay videos), and --eval_clips=beats.",
)
CHECKPOINT = flags.DEFINE_string(
  "checkpoint", "best", "--mode=eval/predict: best, latest, or the epoch one of them holds."
)
ENSEMBLE = flags.DEFINE_list(
  "ensemble", [], "--mode=eval/predict: more run directories whose predictions are averaged."
)
MEMBER = flags.DEFINE_integer(
  "member",
  None,
  "--mode=eval/predict: only this member (0 to K-1) of a run of K members (train.seeds, "
  "train.grid), instead of all of them averaged as an ensemble; a solo run has member 0.",
)
VIDEOS = flags.DEFINE_string(
  "videos", None, "--mode=predict: a video file, a folder or a glob (AVI, MP4, ..., DICOM)."
)
OUTPUT = flags.DEFINE_string("output", None, "--mode=predict: the CSV to write.")
COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Several processes (machines): HOST:PORT of process 0, with --num_processes and --process_id. "
  "Under SLURM (several tasks) these come from its environment.",
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "--mode=train: if --workdir holds a run of another config, delete it and start again "
  "(without this flag such a workdir is refused); --mode=import: replace the run there.",
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
RUN_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "run.py"


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
  if mode == "train":
    from lvef_jax.training import trainer  # Here so that --mode=summary never loads TensorFlow.

    trainer.train_and_evaluate(config, workdir, overwrite=OVERWRITE.value)
    return
  if mode == "import":
    from lvef_jax.training import importer

    importer.import_run(config, workdir, overwrite=OVERWRITE.value)
    return
  from lvef_jax.evaluation import commands  # evaluation never imports the trainer

  if mode == "eval":
    commands.evaluate(
      config,
      workdir,
      split=EVAL_SPLIT.value,
      clips=EVAL_CLIPS.value,
      checkpoint=CHECKPOINT.value,
      ensemble=ENSEMBLE.value,
      member=MEMBER.value,
      segmentation=SEGMENTATION.value,
    )
    return
  if not VIDEOS.value or not OUTPUT.value:
    raise app.UsageError("--mode=predict needs --videos and --output")
  scored = commands.predict(
    config,
    workdir,
    VIDEOS.value,
    OUTPUT.value,
    clips=EVAL_CLIPS.value or "all",
    checkpoint=CHECKPOINT.value,
    ensemble=ENSEMBLE.value,
    member=MEMBER.value,
    segmentation=SEGMENTATION.value,
  )
  if not scored:
    raise LvefError(f"no video of {VIDEOS.value} could be read")


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last value of ``--name=V`` or ``--name V`` in ``argv`` (before absl parses it)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.partition("=")[2]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_implicit_config(argv: list[str]) -> list[str]:
  """Adds the config file that ``--experiment`` or an existing run implies.

  ``--experiment=NAME [--recipe=R] [--runlocal]`` becomes the config file that builds it, and
  ``--mode=eval|predict`` without ``--config`` reads the run's own ``config.json``.
  ``--config.key=value`` overrides need ``--config`` on the command line when absl parses it,
  so the file is added here, before parsing.
  """
  has_config = any(arg == "--config" or arg.startswith("--config=") for arg in argv)
  name = _flag_value(argv, "experiment")
  workdir = _flag_value(argv, "workdir")
  if name is None:
    if not has_config and workdir and _flag_value(argv, "mode") in ("eval", "predict"):
      from lvef_jax.config_base import load_run_config

      load_run_config(workdir)  # no run there: one clear error, not a flag-parsing trace
      return [argv[0], f"--config={RUN_CONFIG}:{workdir}", *argv[1:]]
    return argv
  if has_config:
    raise SystemExit("error: give --experiment or --config, not both")
  from lvef_jax import experiments  # plain data: no JAX, no TensorFlow

  experiments.canonical(name)  # an unknown name is one clear error, not a flag-parsing trace
  recipe = _flag_value(argv, "recipe") or "paper"
  if recipe not in experiments.RECIPES:
    raise LvefError(f"--recipe={recipe}: expected one of {', '.join(experiments.RECIPES)}")
  runlocal = "--runlocal" in argv or _flag_value(argv, "runlocal") in ("true", "True", "1")
  config = f"--config={EXPERIMENT_CONFIG}:{name},recipe={recipe},runlocal={int(runlocal)}"
  return [argv[0], config, *argv[1:]]


def check_overrides(argv: list[str]) -> None:
  """Refuses a ``--config.KEY`` override whose key the config lacks, in one message naming the
  closest keys (ml_collections would end the flag parsing in a long traceback)."""
  spec = _flag_value(argv, "config")
  keys = [
    arg.partition("=")[0].split(".", 1)[1]
    for arg in argv[1:]
    if arg.startswith(("--config.", "--noconfig."))
  ]
  if not spec or not keys:
    return
  from lvef_jax import config_base  # plain Python and ml_collections: no JAX work

  config = config_base.load_config_file(spec)
  for key in keys:
    config_base.check_key(config, key)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cpu_backend.configure()  # before JAX starts its backends
  distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  if LIST_EXPERIMENTS.value:
    from lvef_jax import experiments

    print("\n".join(experiments.names()))
    return 0
  config = CONFIG.value
  if config is None:
    raise app.UsageError(
      "--config or --experiment is required (not for --mode=eval/predict of a run directory), "
      "e.g. --config=configs/quickstart.py"
    )
  if MODE.value != "summary" and not WORKDIR.value:
    raise app.UsageError(f"--workdir is required for --mode={MODE.value}")
  hint = hostmem.allocator_hint() if MODE.value != "summary" else None
  if hint and jax.process_index() == 0:
    logging.info(hint)
  try:
    _run(config, MODE.value, WORKDIR.value)
  except LvefError as e:
    # Said once, without the log prefix: dataset errors run to many lines, one per problem.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  try:
    argv = with_implicit_config(sys.argv)
    check_overrides(argv)
  except LvefError as e:
    sys.exit(f"error: {e}")
  app.run(lambda argv: sys.exit(main(argv)), argv=argv)
