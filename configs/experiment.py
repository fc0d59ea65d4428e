r"""One named experiment of the paper's benchmark (``lvef_jax/experiments.py`` lists them).

  python launch.py --experiment=table3/B2 --workdir=runs/paper/table3/B2 \
      --config.data.root=/path/to/EchoNet-Dynamic
  python launch.py --config=configs/experiment.py:table3/B2,recipe=improved --workdir=...

``launch.py --experiment=NAME [--recipe=paper|improved] [--runlocal]`` is the short form of
``--config=configs/experiment.py:NAME,recipe=...,runlocal=...``. The argument is the experiment
name, then optionally ``recipe`` (paper|improved, default paper) and ``runlocal`` (0|1: shrink the
run to a few seconds of synthetic data, a smoke test).
"""

from lvef_jax import experiments
from lvef_jax.config_base import parse_arg
from lvef_jax.errors import ConfigError


def get_config(arg: str | None = None):
  name, _, rest = (arg or "").partition(",")
  if not name:
    raise ConfigError("configs/experiment.py needs an experiment name, e.g. :table3/B2")
  options = parse_arg(rest, dict(recipe="paper", runlocal="0"))
  if options["runlocal"] not in ("0", "1", "false", "true", "False", "True"):
    raise ConfigError(f"runlocal={options['runlocal']!r}: expected 0 or 1")
  runlocal = options["runlocal"] in ("1", "true", "True")
  return experiments.get_config(name, options["recipe"], runlocal)
