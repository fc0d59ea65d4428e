"""The members of a run: several trainings in one compiled program (train.seeds, train.grid).

A run with ``train.seeds=K`` trains K members at once: every array of the train state gets a
leading member axis, and one jitted step updates all of them (``jax.vmap``). Member ``i`` of
a seeds-only run is the solo run with ``seed + i``: its initialisation, dropout, data order and
augmentation come from that seed, and it sees its own batches. ``train.grid`` adds numeric
hyperparameters that differ between members (``learning_rate=1e-3,3e-4;dropout=0.3,0.5``):
the members are the grid's points times the seeds, grid-major (the seeds of the first point
come first). Architecture choices are not member options: they are separate experiments.

Member ``i``'s own config (`member_config`) is the solo run it stands for: evaluation and
prediction rebuild each member's model from it.
"""

from __future__ import annotations

import dataclasses
import itertools

import ml_collections

from lvef_jax.errors import ConfigError

# Hyperparameters a grid may vary, and the config section each lives in. The optimizer's are
# arrays inside the step (`state.make_optimizer`); the model's are set on the model after it
# is rebuilt inside the step (`models.set_member_hyperparameters`).
GRID_KEYS = {
  "learning_rate": "train",
  "weight_decay": "train",
  "grad_clip_norm": "train",
  "dropout": "model",
  "l2": "model",
}


@dataclasses.dataclass(frozen=True)
class Member:
  """One member: its position, seed and grid values (empty for a seeds-only run)."""

  index: int
  seed: int
  hparams: dict[str, float]

  def describe(self) -> dict:
    """What ``results.json`` records of the member."""
    return {"member": self.index, "seed": self.seed, "hparams": dict(self.hparams)}


def parse_grid(text: str) -> list[tuple[str, list[float]]]:
  """``name=v1,v2;name=v1`` -> ``[(name, [v1, v2]), (name, [v1])]``; ``""`` -> ``[]``."""
  grid, seen = [], set()
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    name, sep, values = part.partition("=")
    name = name.strip()
    if not sep or not values.strip():
      raise ConfigError(f"train.grid: {part!r} is not name=value,value,...")
    if name not in GRID_KEYS:
      raise ConfigError(
        f"train.grid: {name!r} cannot differ between members (one of "
        f"{', '.join(GRID_KEYS)}); architecture choices are separate experiments"
      )
    if name in seen:
      raise ConfigError(f"train.grid names {name!r} twice")
    seen.add(name)
    try:
      numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
      raise ConfigError(f"train.grid: {name}={values!r} holds a value that is not a number")
    grid.append((name, numbers))
  return grid


def members(config) -> list[Member]:
  """The members of ``config``, in member order; one (the run itself) for a solo run."""
  seeds = int(config.train.get("seeds", 1))
  if seeds < 1:
    raise ConfigError(f"train.seeds must be at least 1, got {seeds}")
  grid = parse_grid(config.train.get("grid", ""))
  for name, _ in grid:
    section = GRID_KEYS[name]
    if name not in config[section]:
      raise ConfigError(
        f"train.grid varies {name!r}, but {config.model.name} has no {section}.{name}"
      )
  names = [name for name, _ in grid]
  points = itertools.product(*(values for _, values in grid))
  return [
    Member(index=g * seeds + s, seed=int(config.seed) + s, hparams=dict(zip(names, point)))
    for g, point in enumerate(points)
    for s in range(seeds)
  ]


def count(config) -> int:
  return len(members(config))


def member_config(config, member: Member) -> ml_collections.ConfigDict:
  """The solo run that ``member`` of ``config`` stands for: its seed and grid values."""
  solo = ml_collections.ConfigDict(config.to_dict())
  solo.seed = member.seed
  solo.train.seeds = 1
  solo.train.grid = ""
  for name, value in member.hparams.items():
    solo[GRID_KEYS[name]][name] = value
  return solo
