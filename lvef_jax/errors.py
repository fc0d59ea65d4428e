"""The project's own exception types: the problems ``launch.py`` reports as one ``error:`` line.

They are raised for what the user can fix (the data folder, a config value, the run directory,
a diverging run). Anything else that escapes is a bug and keeps its traceback. Each type also
derives from the built-in one it refines, so ``except ValueError`` (or ``FileNotFoundError``)
written against earlier versions still catches it.

This module imports nothing, so that any module (the TensorFlow-only input pipeline included)
can use it.
"""


class LvefError(Exception):
  """Base of every error the user can fix without touching the code."""


class ConfigError(LvefError, ValueError):
  """A config value that cannot work, e.g. a batch size the devices cannot split."""


class NonFiniteLossError(LvefError, FloatingPointError):
  """Training diverged: the loss became NaN or infinite."""


class MissingCheckpointError(LvefError, FileNotFoundError):
  """The run directory has no checkpoint to restore."""
