"""Every config key with its default; the files in ``configs/`` start from here and override.

A key is read in exactly one place in the code; this is the one place its default lives.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from lvef_jax.errors import ConfigError

# Mean EF of EchoNet-Dynamic's FileList.csv: the output layer starts there instead of at 0.
ECHONET_EF_MEAN = 55.7
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def parse_arg(arg: str | None, defaults: dict) -> dict:
  """Parses ``"k=v,k=v"`` against ``defaults``; unknown keys are an error."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(
        f"config argument {item!r}: expected one of {sorted(defaults)} as key=value"
      )
    values[key] = value
  return values


def model_config(name: str, **family_keys) -> ml_collections.ConfigDict:
  """``config.model`` of family ``name``: the keys every family shares, then its own keys.

  The family's config file (``configs/<name>.py``) passes its keys and their defaults, so each
  family's ``Model`` is handed exactly the keys it takes.
  """
  return ml_collections.ConfigDict(
    dict(
      name=name,
      ef_offset=ECHONET_EF_MEAN,  # the output starts at the mean EF rather than 0
      ef_scale=1.0,  # the output layer's result is multiplied by this
      dtype="float32",  # computation dtype; "bfloat16" keeps float32 parameters
      bn_momentum=0.99,  # Keras' BatchNormalization default, as in the paper's code
      **family_keys,
    )
  )


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads ``configs/<name>.py`` of this checkout and calls its ``get_config(arg)``.

  The same as ``launch.py --config=configs/<name>.py:<arg>``; configs that compose other
  configs (the quickstart) and the tests use it.
  """
  path = CONFIG_DIR / f"{name}.py"
  if not path.is_file():
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
    raise ConfigError(f"no config {name!r} in {CONFIG_DIR}; known: {', '.join(known)}")
  spec = importlib.util.spec_from_file_location(f"lvef_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config() -> ml_collections.ConfigDict:
  """What every run shares: seed, data, training and evaluation settings.

  ``config.model`` holds only ``name`` here; each ``configs/<family>.py`` replaces it with
  ``model_config(name, **its keys)``.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(dict(name=""))

  config.data = ml_collections.ConfigDict(
    dict(
      root="",  # EchoNet-Dynamic folder; "" uses the built-in synthetic dataset
      cache_dir="data",  # synthetic dataset and prepared TFDS data live here
      tfds_dir="",  # "" derives a folder under cache_dir from the root
      synthetic_num_videos=1000,
      synthetic_seed=0,
      synthetic_min_frames=20,
      synthetic_max_frames=160,
      clip_frames=28,
      period=1,
      image_size=112,
      augment_pad=12,  # EchoNet-Dynamic's pad-and-random-crop; 0 disables augmentation
      shuffle_buffer=1000,
      cache_in_memory=False,
      num_parallel_calls=-1,
      prefetch=2,
    )
  )

  config.train = ml_collections.ConfigDict(
    dict(
      batch_size=4,  # global batch, split over the `data` mesh axis
      num_epochs=50,
      steps_per_epoch=-1,  # -1: one pass over the train split (drop_remainder)
      learning_rate=1e-3,
      lr_decay_epochs=10,
      lr_decay_factor=0.5,  # paper: halved every 10 epochs
      grad_clip_norm=0.0,  # 0 disables clipping
      weight_decay=0.0,  # decoupled (AdamW) when > 0
      early_stopping_patience=20,
      # After each epoch, BatchNorm running averages are replaced by the mean statistics of
      # this many train batches under the final weights ("precise BN"); 0 keeps the
      # exponential averages of training, as Keras (and so the paper) did.
      bn_recalibration_batches=50,
      log_every_steps=50,
    )
  )

  config.eval = ml_collections.ConfigDict(dict(batch_size=16, splits=("train", "val", "test")))
  return config
