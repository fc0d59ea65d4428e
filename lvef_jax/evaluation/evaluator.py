"""Checkpoint evaluation over whole splits: predictions, metrics, ``results.json`` and plots."""

from __future__ import annotations

import csv
import json
import pathlib

import jax
import numpy as np
from absl import logging

from lvef_jax.data import pipeline
from lvef_jax.evaluation import metrics
from lvef_jax.reporting import plots
from lvef_jax.training import sharding

RESULTS_FILE = "results.json"
RESULT_KEYS = ("rmse", "mae", "r2", "n")


def predict_split(exp, split: str) -> dict[str, np.ndarray]:
  """Predicts every video of ``split`` once (deterministic clip; padded examples masked out).

  Args:
    exp: a ``trainer.Experiment`` (data builder, mesh, state, predict step).
    split: ``"train"``, ``"val"`` or ``"test"``.

  Returns:
    ``file_name``, ``ef`` and ``ef_pred`` arrays over the split, in split order.
  """
  if jax.process_count() > 1:
    # Each process would score only its shard, and file names cannot be gathered as arrays:
    # refuse rather than report one shard's metrics as the split's.
    raise NotImplementedError(
      "evaluation over several processes is not implemented yet; "
      "run --mode=eval as a single process"
    )
  config = exp.config
  batches = pipeline.eval_batches(
    exp.builder, split, config.data, batch_size=config.eval.batch_size
  )
  names, truth, predicted = [], [], []
  for host, device in sharding.device_prefetch(
    batches, exp.mesh, keys=("video",), size=config.data.prefetch
  ):
    ef_pred = np.asarray(jax.device_get(exp.predict_step(exp.state, device)))
    keep = host["mask"] > 0
    names.append(host["file_name"][keep])
    truth.append(host["ef"][keep])
    predicted.append(ef_pred[keep])
  result = {
    "file_name": np.concatenate(names).astype(str),
    "ef": np.concatenate(truth).astype(np.float64),
    "ef_pred": np.concatenate(predicted).astype(np.float64),
  }
  expected = pipeline.num_examples(exp.builder, split)
  if len(result["ef"]) != expected:
    raise RuntimeError(f"{split}: scored {len(result['ef'])} videos, the split has {expected}")
  return result


def write_predictions(path: pathlib.Path, predictions: dict[str, np.ndarray]) -> None:
  """``FileName,EF,EF_pred`` CSV, written to a temporary file and renamed into place."""
  tmp = path.with_suffix(".tmp")
  with tmp.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["FileName", "EF", "EF_pred"])
    for name, ef, ef_pred in zip(
      predictions["file_name"], predictions["ef"], predictions["ef_pred"]
    ):
      writer.writerow([name, f"{ef:.4f}", f"{ef_pred:.4f}"])
  tmp.replace(path)


def evaluate_best(exp, history: list[dict]) -> dict:
  """Restores the best checkpoint (the latest if none is marked best) and scores every split.

  Writes ``results.json``, ``predictions_{split}.csv`` and ``plots/`` into the workdir.
  """
  kind = "best" if exp.checkpoints.epoch("best") is not None else "latest"
  exp.state, meta = exp.checkpoints.restore(kind, exp.state)
  logging.info(
    "evaluating the %s checkpoint (epoch %d) on %s",
    kind,
    meta["epoch"],
    ", ".join(exp.config.eval.splits),
  )
  results = {"best_epoch": meta["epoch"], "splits": {}}
  is_main = jax.process_index() == 0
  plot_dir = exp.workdir / "plots"
  for split in exp.config.eval.splits:
    predictions = predict_split(exp, split)
    scores = metrics.regression_metrics(predictions["ef"], predictions["ef_pred"])
    results["splits"][split] = {key: scores[key] for key in RESULT_KEYS}
    if is_main:
      write_predictions(exp.workdir / f"predictions_{split}.csv", predictions)
      title = (
        f"{split}: RMSE {scores['rmse']:.2f}, MAE {scores['mae']:.2f}, "
        f"R² {scores['r2']:.3f} (n={scores['n']})"
      )
      plots.scatter(
        predictions["ef"], predictions["ef_pred"], title, plot_dir / f"scatter_{split}.png"
      )
      plots.bland_altman(
        predictions["ef"], predictions["ef_pred"], title, plot_dir / f"bland_altman_{split}.png"
      )
  if is_main:
    if history:
      plots.history(history, plot_dir / "history.png")
    tmp = exp.workdir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(exp.workdir / RESULTS_FILE)
    print(format_table(results))
  return results


def format_table(results: dict) -> str:
  """The final table: one row per split."""
  lines = [
    f"best epoch {results['best_epoch']}",
    f"{'split':<6} {'n':>6} {'RMSE':>8} {'MAE':>8} {'R2':>8}",
  ]
  for split, s in results["splits"].items():
    lines.append(f"{split:<6} {s['n']:>6d} {s['rmse']:>8.3f} {s['mae']:>8.3f} {s['r2']:>8.3f}")
  return "\n".join(lines)
