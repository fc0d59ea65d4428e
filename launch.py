r"""Trains, evaluates or summarises a model of the paper.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart
  python launch.py --config=configs/i3d.py:variant=mini,conv2=3x3x3 --workdir=runs/mini \
      --config.data.root=/data/EchoNet-Dynamic --config.train.batch_size=8
  python launch.py --config=configs/i3d.py --workdir=runs/mini --mode=eval
  python launch.py --config=configs/i3d.py:variant=original --mode=summary

Rerunning ``--mode=train`` in the same workdir resumes from the latest checkpoint.

A problem the user can fix (the data folder, a config value, no checkpoint, a diverging run)
ends the program with one ``error: ...`` message on stderr and exit status 1; anything else is a
bug and ends it with its traceback.
"""

import logging as py_logging
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


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py")
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
  app.run(lambda argv: sys.exit(main(argv)))
