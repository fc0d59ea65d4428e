"""``--mode=summary``: the parameter table of a config's model."""

from __future__ import annotations

from flax import nnx

from lvef_jax import models


def parameter_table(config) -> str:
  """One row per parameter array (path, shape, count), ending with ``trainable_params: N``."""
  model = models.create_model(config, seed=config.seed)
  rows = []
  for path, variable in nnx.state(model, nnx.Param).flat_state():
    rows.append((".".join(str(p) for p in path), "x".join(map(str, variable.shape)),
                 variable.size))
  width = max(len(r[0]) for r in rows)
  lines = [f"model {config.model.name}: " + ", ".join(
      f"{k}={v}" for k, v in config.model.items() if k != "name"),
           f"{'parameter':<{width}}  {'shape':>20}  {'count':>12}"]
  lines += [f"{name:<{width}}  {shape:>20}  {count:>12,d}" for name, shape, count in rows]
  total = models.count_params(model)
  lines.append(f"trainable_params: {total}")
  return "\n".join(lines)
