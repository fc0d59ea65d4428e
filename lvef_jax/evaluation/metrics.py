"""Regression metrics over whole splits (never averaged per batch)."""

from __future__ import annotations

import numpy as np


def regression_metrics(ef: np.ndarray, ef_pred: np.ndarray) -> dict[str, float]:
  """RMSE, MAE, R² (scikit-learn's ``r2_score`` definition), MSE and count.

  Args:
    ef: true EF, shape ``[n]``.
    ef_pred: predicted EF, shape ``[n]``.
  """
  ef = np.asarray(ef, np.float64)
  ef_pred = np.asarray(ef_pred, np.float64)
  if ef.shape != ef_pred.shape or ef.ndim != 1:
    raise ValueError(f"expected two equal 1-D arrays, got {ef.shape} and {ef_pred.shape}")
  if ef.size == 0:
    raise ValueError("no examples to score")
  error = ef_pred - ef
  mse = float(np.mean(error**2))
  total = float(np.sum((ef - ef.mean()) ** 2))
  # As sklearn: a constant target scores 1 when predicted exactly, 0 otherwise.
  if total == 0.0:
    r2 = 1.0 if mse == 0.0 else 0.0
  else:
    r2 = 1.0 - float(np.sum(error**2)) / total
  return {
    "rmse": mse**0.5,
    "mae": float(np.mean(np.abs(error))),
    "r2": r2,
    "mse": mse,
    "n": int(ef.size),
  }
