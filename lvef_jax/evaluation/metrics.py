"""Regression metrics over whole splits (never averaged per batch)."""

from __future__ import annotations

import math
import re

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


# ---------------------------------------------------------------------------------------------
# Evaluation metrics a clinician can check: bootstrap confidence intervals, errors by EF range,
# heart-failure classes, ROC curves for EF thresholds, interval coverage and calibration.
# Pure numpy; every returned structure holds plain Python floats, ints, lists, dicts and None.
# ---------------------------------------------------------------------------------------------

# Heart-failure classes by EF (ESC 2021): reduced < 40, mildly reduced 40-49, preserved >= 50.
HF_CLASSES = ("reduced", "mildly_reduced", "preserved")
HF_EDGES = (40.0, 50.0)

# Elements (resamples x videos) per bootstrap chunk. Each chunk holds a handful of arrays of this
# many 8-byte elements (indices, gathered errors and EF, squared deviations), so the peak is about
# 5 x 8 x 1e6 bytes = 40 MB whatever the number of resamples or videos.
_CHUNK_ELEMENTS = 1_000_000


def _as_pair(ef, ef_pred) -> tuple[np.ndarray, np.ndarray]:
  """Two equal, non-empty, finite 1-D float64 arrays."""
  ef = np.asarray(ef, np.float64)
  ef_pred = np.asarray(ef_pred, np.float64)
  if ef.shape != ef_pred.shape or ef.ndim != 1:
    raise ValueError(f"expected two equal 1-D arrays, got {ef.shape} and {ef_pred.shape}")
  if ef.size == 0:
    raise ValueError("no examples to score")
  if not (np.all(np.isfinite(ef)) and np.all(np.isfinite(ef_pred))):
    raise ValueError("EF values must be finite (got NaN or inf)")
  return ef, ef_pred


def _like(ef: np.ndarray, values, name: str) -> np.ndarray:
  """``values`` as a finite float64 array with the shape of ``ef``."""
  values = np.asarray(values, np.float64)
  if values.shape != ef.shape:
    raise ValueError(f"{name} has shape {values.shape}, expected {ef.shape}")
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name} must be finite (got NaN or inf)")
  return values


def _float_or_none(x) -> float | None:
  """A plain float, or None for NaN / inf / None."""
  if x is None:
    return None
  x = float(x)
  return x if np.isfinite(x) else None


def _json_clean(obj):
  """Numpy scalars and arrays as Python values, non-finite floats as None (recursively)."""
  if isinstance(obj, dict):
    return {str(k): _json_clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, np.ndarray)):
    return [_json_clean(v) for v in obj]
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return _float_or_none(obj)
  return obj


def _label(x: float) -> str:
  """``40.0`` -> ``"40"``, ``42.5`` -> ``"42.5"``."""
  return f"{float(x):g}"


# --- Bootstrap confidence intervals ----------------------------------------------------------


def bootstrap(
  ef, ef_pred, *, num_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, dict]:
  """Percentile-bootstrap confidence intervals of RMSE, MAE and R² over videos.

  Each resample draws ``n`` videos with replacement (a seeded ``numpy.random.Generator``) and
  scores them as :func:`regression_metrics` does: R² uses the resample's own mean EF, and a
  resample whose EF is constant scores R² 1 if predicted exactly, else 0. Resamples are
  processed in chunks of about ``_CHUNK_ELEMENTS`` (resample, video) pairs, so 10,000 resamples
  of 10,000 videos take some 40 MB.

  Args:
    ef: true EF, shape ``[n]``.
    ef_pred: predicted EF, shape ``[n]``.
    num_resamples: bootstrap resamples.
    seed: seed of the generator; the same seed gives the same intervals.
    level: central coverage of the interval. The returned key is always ``"ci95"``: it names the
      interval correctly only for the default 0.95 (other levels are for tests and experiments).

  Returns:
    ``{"rmse": {"value": v, "ci95": [lo, hi]}, "mae": {...}, "r2": {...}}``, where ``value`` is
    the point estimate on all videos. With a single video every resample is that video and the
    interval collapses to ``[value, value]``.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  point = regression_metrics(ef, ef_pred)
  names = ("rmse", "mae", "r2")
  n = ef.size
  if n == 1:
    return {k: {"value": float(point[k]), "ci95": [float(point[k])] * 2} for k in names}

  error = ef_pred - ef
  rng = np.random.default_rng(seed)
  rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
  stats = {k: np.empty(num_resamples, np.float64) for k in names}
  for start in range(0, num_resamples, rows_per_chunk):
    rows = min(rows_per_chunk, num_resamples - start)
    idx = rng.integers(0, n, size=(rows, n))
    err = error[idx]
    sse = np.einsum("ij,ij->i", err, err)
    mae = np.mean(np.abs(err), axis=1)
    del err
    target = ef[idx]
    del idx
    constant = target.min(axis=1) == target.max(axis=1)
    target -= target.mean(axis=1, keepdims=True)
    total = np.einsum("ij,ij->i", target, target)
    del target
    # As regression_metrics: a constant target scores 1 when predicted exactly, 0 otherwise.
    # (Detected exactly from min == max: the deviations of a constant can round to non-zero.)
    safe_total = np.where(constant, 1.0, total)
    r2 = np.where(constant, np.where(sse == 0.0, 1.0, 0.0), 1.0 - sse / safe_total)
    end = start + rows
    stats["rmse"][start:end] = np.sqrt(sse / n)
    stats["mae"][start:end] = mae
    stats["r2"][start:end] = r2

  tail = (1.0 - level) / 2.0
  result = {}
  for k in names:
    lo, hi = np.quantile(stats[k], [tail, 1.0 - tail])
    result[k] = {"value": float(point[k]), "ci95": [float(lo), float(hi)]}
  return result


# --- Errors by EF range ----------------------------------------------------------------------


def error_by_range(ef, ef_pred, edges=(30, 40, 50, 70)) -> list[dict]:
  """MAE, RMSE and bias of the videos in each range of true EF.

  The ranges are half-open ``[lo, hi)``: below the first edge, between consecutive edges, and at
  or above the last edge, labelled ``"<30"``, ``"30-40"``, ..., ``">=70"``.

  Returns:
    One dict per range, in order: ``{"range", "n", "mae", "rmse", "bias"}`` where bias is the
    mean of ``ef_pred - ef``. A range without videos has ``n`` 0 and None metrics.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  edges = [float(e) for e in edges]
  if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
    raise ValueError(f"edges must be non-empty and strictly increasing, got {edges}")
  labels = [f"<{_label(edges[0])}"]
  labels += [f"{_label(a)}-{_label(b)}" for a, b in zip(edges, edges[1:])]
  labels += [f">={_label(edges[-1])}"]
  # side="right": a value equal to an edge belongs to the range that starts there.
  bins = np.searchsorted(np.asarray(edges), ef, side="right")
  error = ef_pred - ef
  rows = []
  for i, label in enumerate(labels):
    e = error[bins == i]
    if e.size == 0:
      rows.append({"range": label, "n": 0, "mae": None, "rmse": None, "bias": None})
      continue
    rows.append(
      {
        "range": label,
        "n": int(e.size),
        "mae": float(np.mean(np.abs(e))),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "bias": float(np.mean(e)),
      }
    )
  return rows


# --- Predictions outside what an EF can be --------------------------------------------------

EF_RANGE = (0.0, 100.0)  # what an ejection fraction can be (%)


def out_of_range(ef_pred) -> np.ndarray:
  """Whether each predicted EF lies outside 0-100 %: a regression output can, and such a
  prediction is kept in every metric but flagged in the CSVs and marked in the plots."""
  ef_pred = np.asarray(ef_pred, np.float64)
  return (ef_pred < EF_RANGE[0]) | (ef_pred > EF_RANGE[1])


# --- Heart-failure classes -------------------------------------------------------------------


def hf_class(ef) -> np.ndarray:
  """Class index per video: 0 reduced (EF < 40), 1 mildly reduced (40 <= EF < 50), 2 preserved."""
  return np.searchsorted(np.asarray(HF_EDGES), np.asarray(ef, np.float64), side="right")


def heart_failure_classes(ef, ef_pred) -> dict:
  """Agreement of the heart-failure class (by EF) of the true and the predicted EF.

  Classes: ``reduced`` (EF < 40), ``mildly_reduced`` (40 <= EF < 50), ``preserved`` (EF >= 50).

  Returns:
    ``{"classes": [names], "confusion": 3x3 list of counts (rows true class, columns predicted),
    "accuracy": fraction on the diagonal, "per_class": {name: {"n": videos truly in the class,
    "precision", "recall"}}}``; precision (recall) is None when no video is predicted (truly) in
    the class.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  k = len(HF_CLASSES)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (hf_class(ef), hf_class(ef_pred)), 1)
  per_class = {}
  for i, name in enumerate(HF_CLASSES):
    true_n, pred_n, hit = int(confusion[i].sum()), int(confusion[:, i].sum()), int(confusion[i, i])
    per_class[name] = {
      "n": true_n,
      "precision": hit / pred_n if pred_n else None,
      "recall": hit / true_n if true_n else None,
    }
  return {
    "classes": list(HF_CLASSES),
    "confusion": confusion.tolist(),
    "accuracy": float(np.trace(confusion) / ef.size),
    "per_class": per_class,
  }


# --- ROC for detecting a low EF --------------------------------------------------------------


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n of ``x``, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  # Start of each run of equal values, and the run's average rank (1-based).
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], x.size]
  run_rank = (starts + 1 + ends) / 2.0
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(run_rank, ends - starts)
  return ranks


def roc(ef, ef_pred, threshold: float) -> dict:
  """ROC curve and AUC of the predicted EF for detecting a true EF below ``threshold``.

  Positives are videos with true EF < threshold; the score is ``-ef_pred`` (a lower predicted
  EF means more likely positive). The curve has one point per distinct predicted EF (tied
  predictions move both rates at once, a diagonal segment), from (0, 0) to (1, 1). The AUC is
  the Mann-Whitney statistic with ties counted 1/2, equal to the trapezoidal area under that
  curve.

  Returns:
    ``{"threshold", "n_positive", "n_negative", "auc", "fpr": [...], "tpr": [...]}``; when either
    class is empty, ``auc`` is None and ``fpr`` / ``tpr`` are empty lists.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  positive = ef < threshold
  n_pos = int(positive.sum())
  n_neg = int(ef.size - n_pos)
  result = {"threshold": float(threshold), "n_positive": n_pos, "n_negative": n_neg}
  if n_pos == 0 or n_neg == 0:
    return {**result, "auc": None, "fpr": [], "tpr": []}
  score = -ef_pred
  ranks = _average_ranks(score)
  u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
  auc = u / (n_pos * n_neg)
  # Curve: walk the scores from highest to lowest; one point after each run of equal scores.
  order = np.argsort(-score, kind="stable")
  sorted_score, sorted_pos = score[order], positive[order]
  last_of_run = np.r_[sorted_score[1:] != sorted_score[:-1], True]
  tp = np.cumsum(sorted_pos)[last_of_run]
  fp = np.cumsum(~sorted_pos)[last_of_run]
  tpr = np.r_[0.0, tp / n_pos]
  fpr = np.r_[0.0, fp / n_neg]
  return {**result, "auc": float(auc), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def roc_aucs(ef, ef_pred, thresholds=(35, 40, 45, 50)) -> dict[str, float | None]:
  """AUC of :func:`roc` per threshold, keyed by the threshold as text: ``{"35": auc, ...}``."""
  return {_label(t): roc(ef, ef_pred, t)["auc"] for t in thresholds}


# --- Prediction intervals: coverage and calibration ------------------------------------------

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.15e-9).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02)
_A += (-3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01)
_B += (-1.328068155288572e01,)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00)
_C += (4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def _poly(coefficients, x: float) -> float:
  result = 0.0
  for c in coefficients:
    result = result * x + c
  return result


def normal_quantile(p: float) -> float:
  """Inverse CDF of the standard normal distribution, ``Phi^-1(p)`` for ``0 < p < 1``.

  Acklam's rational approximation, refined by one Halley step on ``math.erfc``: accurate to
  about 1e-15 relative.
  """
  p = float(p)
  if not 0.0 < p < 1.0:
    raise ValueError(f"p must be in (0, 1), got {p}")
  if p > 0.5:
    # Upper half by symmetry: 1 - p is exact here, and Phi(x) - p would cancel near p = 1.
    return -normal_quantile(1.0 - p)
  if p < _P_LOW:
    q = math.sqrt(-2.0 * math.log(p))
    x = _poly(_C, q) / (_poly(_D, q) * q + 1.0)
  else:
    q = p - 0.5
    r = q * q
    x = _poly(_A, r) * q / (_poly(_B, r) * r + 1.0)
  # Halley refinement: e = Phi(x) - p with Phi from erfc, accurate for x <= 0.
  e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
  u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
  return x - u / (1.0 + x * u / 2.0)


def central_z(level: float) -> float:
  """Half-width in SDs of the central normal interval of coverage ``level``: z(0.95) = 1.96."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  return normal_quantile(0.5 + level / 2.0)


def interval_coverage(ef, low, high, nominal: float = 0.9) -> dict:
  """How often the true EF lies in a prediction interval ``[low, high]`` (bounds included).

  Returns:
    ``{"nominal": the interval's intended coverage, "coverage": fraction of videos with
    low <= ef <= high, "mean_width": mean of high - low, "n": videos}``.
  """
  ef = _as_pair(ef, ef)[0]
  low = _like(ef, low, "low")
  high = _like(ef, high, "high")
  if np.any(low > high):
    raise ValueError("interval with low > high")
  inside = (low <= ef) & (ef <= high)
  return {
    "nominal": float(nominal),
    "coverage": float(np.mean(inside)),
    "mean_width": float(np.mean(high - low)),
    "n": int(ef.size),
  }


def calibration_curve(ef, ef_pred, ef_pred_std, levels=np.linspace(0.1, 0.99, 12)) -> list[dict]:
  """Empirical coverage of Gaussian central intervals at several nominal levels.

  At each level the interval is ``ef_pred +- z(level) * ef_pred_std`` with ``z`` from
  :func:`central_z`, bounds included; a video with std 0 has a zero-width interval (covered only
  when the prediction is exact). A calibrated model's points lie on the identity line.

  Returns:
    ``[{"nominal": level, "coverage": fraction covered}, ...]`` in the order of ``levels``.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  std = _like(ef, ef_pred_std, "ef_pred_std")
  if np.any(std < 0):
    raise ValueError("ef_pred_std must be >= 0")
  distance = np.abs(ef - ef_pred)
  return [
    {"nominal": float(level), "coverage": float(np.mean(distance <= central_z(level) * std))}
    for level in levels
  ]


# --- Metrics per stratum of the dataset -----------------------------------------------------

MISSING_STRATUM = "(missing)"  # a video whose stratum the dataset does not give


def _natural_key(text: str) -> tuple:
  """Sorts ``"2-5"`` before ``"10-18"``: digit runs compare as numbers (``re.split`` with a
  group alternates text and digits, so a number only ever meets a number), and a group
  ``"<1"`` or ``"<40"`` (the age groups' first) before the rest."""
  parts = [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]
  return (not text.startswith("<"), parts)


def strata_metrics(
  ef, ef_pred, strata: dict, *, num_resamples: int = 10_000, seed: int = 0
) -> dict[str, dict[str, dict]]:
  """RMSE, MAE and R² (with bootstrap intervals, :func:`bootstrap`), n and bias of each group
  of videos sharing a stratum value (a CAMUS image quality, a view, an age group).

  Args:
    ef: true EF, shape ``[n]``.
    ef_pred: predicted EF, shape ``[n]``.
    strata: ``{stratum name: one value per video}`` (``preparation.strata``); an empty value
      groups as ``MISSING_STRATUM``.
    num_resamples, seed: as :func:`bootstrap`, run on each group.

  Returns:
    ``{name: {value: {"n", "rmse", "mae", "r2", "bias"}}}``, the values in natural order
    (``"2-5"`` before ``"10-18"``); ``rmse``, ``mae`` and ``r2`` are ``{"value", "ci95"}``,
    and bias is the mean of ``ef_pred - ef``. R² is ``{"value": None, "ci95": None}`` for a
    group of fewer than two videos or one true EF: no variance to explain, where the
    convention of :func:`regression_metrics` (1 or 0) would read as a score.
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  result = {}
  for name, values in strata.items():
    values = np.asarray(values, dtype=str)
    if values.shape != ef.shape:
      raise ValueError(f"stratum {name!r} has shape {values.shape}, expected {ef.shape}")
    values = np.where(values == "", MISSING_STRATUM, values)
    groups = {}
    for value in sorted(set(values.tolist()), key=_natural_key):
      inside = values == value
      e, p = ef[inside], ef_pred[inside]
      scores = bootstrap(e, p, num_resamples=num_resamples, seed=seed)
      if e.size < 2 or e.min() == e.max():
        scores["r2"] = {"value": None, "ci95": None}
      groups[value] = {"n": int(e.size), **scores, "bias": float(np.mean(p - e))}
    result[str(name)] = groups
  return _json_clean(result)


# --- Everything together ---------------------------------------------------------------------


def evaluation_report(
  ef,
  ef_pred,
  *,
  low=None,
  high=None,
  ef_pred_std=None,
  num_resamples: int = 10_000,
  seed: int = 0,
  interval_nominal: float = 0.9,
) -> dict:
  """Every metric above for one split, as one JSON-serialisable dict (no NaN: None instead).

  Keys: ``n``; ``rmse``, ``mae``, ``r2`` (each ``{"value", "ci95"}``, see :func:`bootstrap`);
  ``error_by_ef_range`` (:func:`error_by_range`); ``heart_failure``
  (:func:`heart_failure_classes`); ``roc_auc`` (``{"35": auc, "40": ..., "45": ..., "50": ...}``);
  ``interval_coverage`` (only when ``low`` and ``high`` are given, with ``interval_nominal``);
  ``calibration`` (only when ``ef_pred_std`` is given: ``[{"nominal", "coverage"}, ...]``);
  ``out_of_range`` (predictions outside 0-100 %, :func:`out_of_range`, counted in the rest).
  """
  ef, ef_pred = _as_pair(ef, ef_pred)
  if (low is None) != (high is None):
    raise ValueError("give both low and high, or neither")
  report: dict = {"n": int(ef.size)}
  report.update(bootstrap(ef, ef_pred, num_resamples=num_resamples, seed=seed))
  report["error_by_ef_range"] = error_by_range(ef, ef_pred)
  report["heart_failure"] = heart_failure_classes(ef, ef_pred)
  report["roc_auc"] = roc_aucs(ef, ef_pred)
  report["out_of_range"] = int(out_of_range(ef_pred).sum())
  if low is not None:
    report["interval_coverage"] = interval_coverage(ef, low, high, nominal=interval_nominal)
  if ef_pred_std is not None:
    report["calibration"] = calibration_curve(ef, ef_pred, ef_pred_std)
  return _json_clean(report)
