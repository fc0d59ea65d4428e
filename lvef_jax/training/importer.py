"""``launch.py --mode=import``: a run directory from PyTorch weights, without training.

The run directory holds the config (``config.json``) and the imported weights as its best and
latest checkpoints (epoch 0), so ``--mode=eval`` and ``--mode=predict`` use it as any trained
run, and ``--mode=train`` in it fine-tunes from those weights. No dataset is needed when the
input normalisation is given (``model.input_mean`` / ``input_std``); otherwise it is computed
on the train split of ``data.root``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import jax
from absl import logging

from lvef_jax import checkpoints, config_base, sharding
from lvef_jax.data import normalization
from lvef_jax.errors import ConfigError
from lvef_jax.training import members as members_lib, state as state_lib, trainer


def import_run(config, workdir: str | pathlib.Path, *, overwrite: bool = False) -> pathlib.Path:
  """Writes run directory ``workdir`` from ``config.model.init_from``; returns its path."""
  workdir = pathlib.Path(workdir)
  path = config.model.get("init_from", "")
  if not path:
    raise ConfigError("--mode=import needs --config.model.init_from=PATH (a PyTorch weights file)")
  if members_lib.count(config) > 1:
    raise ConfigError("--mode=import writes one run: train.seeds must be 1 and train.grid empty")
  if normalization.needs_statistics(config.model):
    if not config.data.root:
      raise ConfigError(
        "--mode=import: the input normalisation is not given. Pass "
        "--config.model.input_mean=M --config.model.input_std=S (pixel units, the values "
        "the weights were trained with), or --config.data.root=DIR to compute them on that "
        "dataset's train split"
      )
    trainer.input_statistics(config, workdir)
  if jax.process_index() == 0:
    trainer.check_workdir(config, workdir, overwrite)
    existing = workdir / "checkpoints"
    if existing.exists():
      if not overwrite:
        raise ConfigError(
          f"{workdir} already holds a run's checkpoints: use another --workdir, or "
          "--overwrite to replace them with the imported weights"
        )
      shutil.rmtree(existing)
  graphdef, state, _ = state_lib.create(config, steps_per_epoch=1)  # loads init_from
  del graphdef
  mesh = sharding.make_mesh()
  state = jax.device_put(state, sharding.replicated(mesh))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / config_base.RUN_CONFIG_FILE).write_text(config_base.run_config_json(config))
  store = checkpoints.Checkpoints(workdir / "checkpoints", writer=True)
  meta = {
    "epoch": 0,
    "early_stopping": dataclasses.asdict(trainer.EarlyStopping()),
    "imported_from": str(pathlib.Path(path).absolute()),
  }
  for kind in checkpoints.KINDS:
    store.save(kind, 0, state, meta)
  store.wait()
  store.close()
  logging.info(
    "imported %s into %s (model %s%s): --mode=eval or --mode=predict with --workdir=%s",
    path,
    workdir,
    config.model.name,
    f" {config.model.arch}" if "arch" in config.model else "",
    workdir,
  )
  return workdir
