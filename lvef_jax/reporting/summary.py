"""``--mode=summary``: the parameter table of a config's model."""

from __future__ import annotations

from flax import nnx

from lvef_jax import models


def parameter_table(config) -> str:
  """One row per parameter array (path, shape, count), ending with ``trainable_params: N``.

  Frozen parameters (a frozen pretrained backbone) are marked and left out of that count.
  """
  model = models.create_model(config, seed=config.seed)
  rows = []
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    rows.append(
      (
        ".".join(str(p) for p in path),
        "x".join(map(str, variable.shape)),
        variable.size,
        "" if model.trainable(tuple(path)) else "frozen",
      )
    )
  width = max(len(r[0]) for r in rows)
  lines = [
    f"model {config.model.name}: "
    + ", ".join(f"{k}={v}" for k, v in config.model.items() if k != "name"),
    f"input: clips of {config.data.clip_frames}x{config.data.image_size}x"
    f"{config.data.image_size}x1",
    f"{'parameter':<{width}}  {'shape':>20}  {'count':>12}",
  ]
  lines += [
    f"{name:<{width}}  {shape:>20}  {count:>12,d}  {note}".rstrip()
    for name, shape, count, note in rows
  ]
  total, trainable = models.count_params(model), models.count_params(model, trainable_only=True)
  if trainable != total:
    lines.append(f"frozen_params: {total - trainable}")
  lines.append(f"trainable_params: {trainable}")
  return "\n".join(lines)
