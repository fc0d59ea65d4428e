"""Every config key with its default; the files in ``configs/`` start from here and override.

A key is read in exactly one place in the code; this is the one place its default lives.
"""

from __future__ import annotations

import copy
import difflib
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
  return load_config_file(f"{path}:{arg}" if arg is not None else str(path))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of a ``--config`` value, ``PATH[:ARG]``: ``get_config(ARG)`` of the file."""
  path, sep, arg = spec.partition(":")
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"--config={spec}: no such config file {path}")
  spec_ = importlib.util.spec_from_file_location(f"lvef_jax_configs_{path.stem}", path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  return module.get_config(arg if sep else None)


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
  """Raises ConfigError unless ``key`` (``section.name``, dotted) is a key of ``config``; the
  message names the closest valid keys."""
  node, walked = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      prefix = ".".join(walked)
      keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, keys, n=3, cutoff=0.5) or sorted(keys)[:8]
      where = f" in {prefix}" if prefix else ""
      shown = ", ".join(".".join([*walked, k]) for k in close)
      hint = f"; closest: {shown}" if shown else ""
      raise ConfigError(f"{key!r} is not a config key: no {part!r}{where}{hint}")
    node = node[part]
    walked.append(part)


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


def run_config_json(config: ml_collections.ConfigDict) -> str:
  """The text of a run's ``config.json``: the config without its ``compute`` section, which is
  the machine's choice for each command, not the run's (:func:`with_new_defaults`)."""
  values = {k: v for k, v in config.to_dict().items() if k != "compute"}
  return ml_collections.ConfigDict(values).to_json_best_effort(indent=2) + "\n"


def with_new_defaults(values: dict) -> dict:
  """A run's saved config (``config.json``) as this version of the project reads it: the data,
  train and eval keys added since it was written at their defaults (the run was trained as
  they behave), the default ``compute`` settings, and without the model keys its family no
  longer has (they chose how a computation ran, such as the stem's old CPU switch, now
  ``compute.kernels``; keys that change what a model computes are never removed)."""
  values = copy.deepcopy(values)
  defaults = base_config()
  values.setdefault("task", defaults.task)  # runs from before segmentation learnt EF
  for section in ("data", "train", "eval"):
    for key, value in defaults[section].to_dict().items():
      values.setdefault(section, {}).setdefault(key, value)
  # How to compute is the machine's choice, not the run's: the defaults, whatever it ran with.
  values["compute"] = defaults.compute.to_dict()
  model = values.get("model", {})
  if (CONFIG_DIR / f"{model.get('name')}.py").is_file():
    known = load_config(model["name"]).model
    for key in [key for key in model if key not in known]:
      del model[key]
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
  # What the run learns (lvef_jax/training/tasks.py): "ef", EF from clips (every family of the
  # paper), or "segmentation", the LV mask of the traced frames (configs/segmentation.py).
  config.task = "ef"
  config.model = ml_collections.ConfigDict(dict(name=""))

  config.data = ml_collections.ConfigDict(
    dict(
      root="",  # EchoNet-Dynamic folder; "" uses the built-in synthetic dataset
      # The folder's layout (lvef_jax/data/formats.py, docs/external.md): "echonet"
      # (EchoNet-Dynamic), "echonet_pediatric" (one view folder of EchoNet-Pediatric) or
      # "camus" (CAMUS, NIfTI or MetaImage release; the `external` extra).
      format="echonet",
      # Folds 0-9 (EchoNet-Pediatric's Split column; CAMUS's patients 1-50, 51-100, ...) that
      # are the val and test splits, comma-separated; the other folds are train.
      val_folds="8",
      test_folds="9",
      camus_view="4CH",  # "4CH", "2CH" or "both" (one video each)
      # A CAMUS half cycle as a video: "mirror" (forward, then backward: ED, ES, ED), "loop"
      # (the same, repeated to a clip's length) or "once" (forward). docs/external.md.
      half_cycle="mirror",
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
      # "adam" (the paper's; AdamW when weight_decay > 0: decoupled decay) or "sgd" with
      # `momentum` (EchoNet-Dynamic's; weight_decay then adds decay * weight to the gradient,
      # as torch.optim.SGD does).
      optimizer="adam",
      momentum=0.9,
      weight_decay=0.0,
      early_stopping_patience=20,
      # A step with a non-finite loss or gradient is skipped (the state stays as it was); this
      # many in a row stop the run, keeping its last good checkpoint. 0 never stops.
      max_bad_steps=20,
      # After each epoch, BatchNorm running averages are replaced by the mean statistics of
      # this many train batches under the final weights ("precise BN"); 0 keeps the
      # exponential averages of training, as Keras (and so the paper) did.
      bn_recalibration_batches=50,
      log_every_steps=50,
      # Members trained in one program (lvef_jax/training/members.py): `seeds` runs with seeds
      # seed, seed+1, ..., times the points of `grid`, numeric hyperparameters that differ
      # between members ("learning_rate=1e-3,3e-4;dropout=0.3,0.5"; "" for none).
      seeds=1,
      grid="",
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

  # How the computation runs, not what it computes: not part of a run's identity (a run trained
  # with one setting resumes, evaluates and predicts with another) nor of its checkpoints.
  config.compute = ml_collections.ConfigDict(
    dict(
      # The convolution and pooling ops (lvef_jax.models.ops_for): "auto" (the CPU's forms,
      # lvef_jax/kernels, on the CPU backend; XLA's plain ops elsewhere), "xla" (XLA's plain ops
      # on every backend: what GPUs run) or "cpu" (the CPU's forms on every backend).
      kernels="auto",
      # How a several-member train step (train.seeds, train.grid) maps its member axis
      # (lvef_jax.training.steps.MEMBER_MAPS): "vmap" (jax.vmap: batched ops, convolutions
      # grouped), "loop" (each member's step in turn inside the one program) or "auto", the
      # measured best of the platform: the loop on the CPU, vmap elsewhere
      # (docs/benchmarks.md, "Several members in one program"). Every form computes the same.
      members="auto",
    )
  )
  return config
