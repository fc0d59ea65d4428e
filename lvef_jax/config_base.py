"""Every config key with its default; the files in ``configs/`` start from here and override.

A key is read in exactly one place in the code; this is the one place its default lives.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib

import ml_collections

from lvef_jax.errors import ConfigError, MissingCheckpointError

# Mean EF of EchoNet-Dynamic's FileList.csv: the output layer starts there instead of at 0.
ECHONET_EF_MEAN = 55.7
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIG_FILE = "config.json"  # a run directory's copy of its config


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


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with, from ``workdir/config.json``."""
  path = pathlib.Path(workdir) / RUN_CONFIG_FILE
  if not path.is_file():
    raise MissingCheckpointError(
      f"{path} does not exist: {workdir} is not a run directory (train first, or pass --config)"
    )
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON: {e}") from e
  return _as_config(with_new_defaults(values))


def with_new_defaults(values: dict) -> dict:
  """A run's saved config (``config.json``) with the data, train and eval keys added to the
  project since it was written, at their defaults: the run was trained as they behave."""
  values = copy.deepcopy(values)
  defaults = base_config()
  for section in ("data", "train", "eval"):
    for key, value in defaults[section].to_dict().items():
      values.setdefault(section, {}).setdefault(key, value)
  return values


def _as_config(values: dict) -> ml_collections.ConfigDict:
  """JSON lists back to tuples (the configs hold tuples: ``rnn_features``, ``eval.splits``)."""

  def fix(value):
    if isinstance(value, dict):
      return {k: fix(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(fix(v) for v in value)
    return value

  return ml_collections.ConfigDict(fix(values))


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
      # Training clips start at a random frame ("random") or at frame 0 ("first": the paper's
      # recipe, the first clip_frames frames of every video). Evaluation always starts at 0.
      train_clip_start="random",
      # Frame rate of the training videos (EchoNet-Dynamic: 50). --mode=predict resamples a
      # video in time when its rate differs from this by more than 10 %.
      typical_fps=50.0,
      # A listed video that is missing or unreadable: "error" refuses the folder (every problem
      # listed); "skip" leaves it out and lists it in the workdir's skipped_videos.csv.
      on_bad_video="error",
      shuffle_buffer=1000,
      cache_in_memory=False,
      # Keep the train split in accelerator memory and cut training clips there (data/
      # device_data.py): "auto" (on a GPU/TPU, one process, when it takes at most 40 % of a
      # device's memory), "on" or "off" (the tf.data path). Both give the clips the tf.data
      # path gives with cache_in_memory=True for the same seed.
      device_resident="auto",
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
      # A step with a non-finite loss or gradient is skipped (the state stays as it was); this
      # many in a row stop the run, keeping its last good checkpoint. 0 never stops.
      max_bad_steps=20,
      # After each epoch, BatchNorm running averages are replaced by the mean statistics of
      # this many train batches under the final weights ("precise BN"); 0 keeps the
      # exponential averages of training, as Keras (and so the paper) did.
      bn_recalibration_batches=50,
      log_every_steps=50,
    )
  )

  config.eval = ml_collections.ConfigDict(
    dict(
      batch_size=16,  # clips per compiled call; the last batch is padded
      splits=("train", "val", "test"),  # scored after training (results.json)
      # results.json and --mode=eval: "one" clip from frame 0 (the paper's protocol) or "all"
      # clips, clip_stride frames apart (0: clip_frames * period), averaged per video.
      clips="one",
      clip_stride=0,
      # Monte-Carlo dropout samples per clip for the prediction intervals (0: none).
      mc_dropout_samples=0,
    )
  )
  return config
