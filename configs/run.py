r"""The config of an existing run, read from its ``config.json``.

  python launch.py --mode=eval --workdir=runs/quickstart        # uses this file implicitly
  python launch.py --config=configs/run.py:runs/quickstart --mode=eval --workdir=runs/quickstart \
      --config.data.root=/path/to/another/EchoNet-folder

``launch.py --mode=eval`` and ``--mode=predict`` without ``--config`` load the run's own config
this way, so ``--config.KEY=VALUE`` overrides still apply (another data folder, batch size).
"""

from lvef_jax.config_base import load_run_config
from lvef_jax.errors import ConfigError


def get_config(arg: str | None = None):
  if not arg:
    raise ConfigError("configs/run.py needs a run directory, e.g. configs/run.py:runs/quickstart")
  return load_run_config(arg)
