"""Evaluation metrics: bootstrap intervals, EF ranges, heart-failure classes, ROC, calibration."""

from __future__ import annotations

import csv
import json
import pathlib
import math

import numpy as np
import pytest

from lvef_jax.evaluation import metrics
from lvef_jax.reporting import plots


def _noisy(n: int, seed: int = 0, sd: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
  """True EF in [20, 75] and a prediction with Gaussian error of SD ``sd``."""
  rng = np.random.default_rng(seed)
  ef = rng.uniform(20, 75, n)
  return ef, ef + rng.normal(0, sd, n)


def _reference_bootstrap(ef, pred, num_resamples, seed, level, rows_per_chunk):
  """A plain loop over resamples, drawing the indices as ``bootstrap`` does."""
  rng = np.random.default_rng(seed)
  scores = []
  for start in range(0, num_resamples, rows_per_chunk):
    rows = min(rows_per_chunk, num_resamples - start)
    for idx in rng.integers(0, ef.size, size=(rows, ef.size)):
      scores.append(metrics.regression_metrics(ef[idx], pred[idx]))
  tail = (1 - level) / 2
  return {k: np.quantile([s[k] for s in scores], [tail, 1 - tail]) for k in ("rmse", "mae", "r2")}


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_value_is_the_full_split_metric_and_lies_in_its_interval():
  ef, pred = _noisy(300)
  result = metrics.bootstrap(ef, pred, num_resamples=2000)
  full = metrics.regression_metrics(ef, pred)
  assert set(result) == {"rmse", "mae", "r2"}
  for k, entry in result.items():
    assert entry["value"] == full[k]
    lo, hi = entry["ci95"]
    assert lo < entry["value"] < hi
    assert isinstance(lo, float) and isinstance(hi, float)


@pytest.mark.parametrize("chunk_elements", [None, 100])  # one chunk; chunks of 3 rows + a rest
def test_bootstrap_matches_a_loop_over_resamples(monkeypatch, chunk_elements):
  """Includes resamples with a constant EF (3 videos, two equal): R² as regression_metrics."""
  if chunk_elements is not None:
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk_elements)
  for ef, pred in [
    (np.array([50.0, 50.0, 60.0]), np.array([52.0, 50.0, 55.0])),
    (np.array([0.1, 0.1, 0.3]), np.array([0.1, 0.1, 0.25])),  # 0.1 * 3 / 3 != 0.1 in floats
    _noisy(30, seed=4),
  ]:
    level = 0.9
    result = metrics.bootstrap(ef, pred, num_resamples=500, seed=7, level=level)
    rows = max(1, metrics._CHUNK_ELEMENTS // ef.size)
    expected = _reference_bootstrap(ef, pred, 500, 7, level, rows)
    for k in ("rmse", "mae", "r2"):
      np.testing.assert_allclose(result[k]["ci95"], expected[k], rtol=1e-12, atol=1e-12)


def test_bootstrap_constant_ef():
  ef = np.full(5, 55.0)
  exact = metrics.bootstrap(ef, ef, num_resamples=200)
  assert exact["r2"] == {"value": 1.0, "ci95": [1.0, 1.0]}
  off = metrics.bootstrap(ef, ef + 1.0, num_resamples=200)
  assert off["r2"] == {"value": 0.0, "ci95": [0.0, 0.0]}
  assert off["rmse"]["ci95"] == pytest.approx([1.0, 1.0])


def test_bootstrap_interval_narrows_with_more_videos():
  small = metrics.bootstrap(*_noisy(50, seed=1), num_resamples=1000)
  large = metrics.bootstrap(*_noisy(2000, seed=2), num_resamples=1000)
  for k in ("rmse", "mae", "r2"):
    width_small = np.diff(small[k]["ci95"])[0]
    width_large = np.diff(large[k]["ci95"])[0]
    # Widths scale as 1 / sqrt(n): a factor of about sqrt(40) = 6.3.
    assert width_large < width_small / 3, (k, width_small, width_large)


def test_bootstrap_is_seeded():
  ef, pred = _noisy(100)
  a = metrics.bootstrap(ef, pred, num_resamples=500, seed=3)
  assert metrics.bootstrap(ef, pred, num_resamples=500, seed=3) == a
  b = metrics.bootstrap(ef, pred, num_resamples=500, seed=4)
  assert all(a[k]["ci95"] != b[k]["ci95"] for k in a)
  assert all(a[k]["value"] == b[k]["value"] for k in a)


def test_bootstrap_single_video_and_bad_input():
  result = metrics.bootstrap([40.0], [43.0], num_resamples=100)
  assert result["rmse"] == {"value": 3.0, "ci95": [3.0, 3.0]}
  assert result["mae"] == {"value": 3.0, "ci95": [3.0, 3.0]}
  assert result["r2"] == {"value": 0.0, "ci95": [0.0, 0.0]}  # constant EF, not exact
  with pytest.raises(ValueError):
    metrics.bootstrap([40.0, 50.0], [40.0])
  with pytest.raises(ValueError):
    metrics.bootstrap([40.0, np.nan], [40.0, 50.0])


# --- error_by_range / heart-failure classes ---------------------------------------------------


def test_error_by_range_by_hand():
  ef = np.array([25.0, 30.0, 39.9, 40.0, 50.0, 69.0, 70.0, 80.0])
  pred = np.array([29.0, 32.0, 35.9, 46.0, 45.0, 69.0, 60.0, 82.0])
  rows = metrics.error_by_range(ef, pred)
  assert [r["range"] for r in rows] == ["<30", "30-40", "40-50", "50-70", ">=70"]
  assert [r["n"] for r in rows] == [1, 2, 1, 2, 2]
  by = {r["range"]: r for r in rows}
  assert by["<30"] == {"range": "<30", "n": 1, "mae": 4.0, "rmse": 4.0, "bias": 4.0}
  # 30 -> +2, 39.9 -> -4
  assert by["30-40"]["mae"] == pytest.approx(3.0)
  assert by["30-40"]["rmse"] == pytest.approx(math.sqrt((4 + 16) / 2))
  assert by["30-40"]["bias"] == pytest.approx(-1.0)
  assert by["40-50"]["bias"] == pytest.approx(6.0)  # 40 belongs to 40-50
  # 50 -> -5, 69 -> 0
  assert by["50-70"]["mae"] == pytest.approx(2.5) and by["50-70"]["bias"] == pytest.approx(-2.5)
  # 70 -> -10, 80 -> +2
  assert by[">=70"]["rmse"] == pytest.approx(math.sqrt((100 + 4) / 2))


def test_error_by_range_empty_range_and_custom_edges():
  rows = metrics.error_by_range([60.0, 61.0], [58.0, 61.0])
  assert rows[0] == {"range": "<30", "n": 0, "mae": None, "rmse": None, "bias": None}
  assert rows[3]["n"] == 2 and rows[3]["bias"] == pytest.approx(-1.0)
  rows = metrics.error_by_range([10.0, 42.5], [10.0, 42.5], edges=(42.5,))
  assert [(r["range"], r["n"]) for r in rows] == [("<42.5", 1), (">=42.5", 1)]


def test_heart_failure_classes_by_hand():
  ef = np.array([30.0, 39.9, 40.0, 45.0, 49.99, 50.0, 60.0, 70.0])
  pred = np.array([35.0, 40.0, 39.0, 45.0, 50.0, 49.0, 55.0, 65.0])
  # true:  R  R  M  M  M  P  P  P;  predicted:  R  M  R  M  P  M  P  P
  result = metrics.heart_failure_classes(ef, pred)
  assert result["classes"] == ["reduced", "mildly_reduced", "preserved"]
  assert result["confusion"] == [[1, 1, 0], [1, 1, 1], [0, 1, 2]]
  assert result["accuracy"] == pytest.approx(4 / 8)
  pc = result["per_class"]
  assert pc["reduced"] == {"n": 2, "precision": 0.5, "recall": 0.5}
  assert pc["mildly_reduced"]["n"] == 3
  assert pc["mildly_reduced"]["precision"] == pytest.approx(1 / 3)
  assert pc["mildly_reduced"]["recall"] == pytest.approx(1 / 3)
  assert pc["preserved"] == {"n": 3, "precision": pytest.approx(2 / 3), "recall": 2 / 3}


def test_heart_failure_classes_undefined_precision_and_recall():
  result = metrics.heart_failure_classes([60.0, 65.0], [45.0, 70.0])
  assert result["confusion"] == [[0, 0, 0], [0, 0, 0], [0, 1, 1]]
  assert result["per_class"]["reduced"] == {"n": 0, "precision": None, "recall": None}
  assert result["per_class"]["mildly_reduced"] == {"n": 0, "precision": 0.0, "recall": None}
  assert result["per_class"]["preserved"] == {"n": 2, "precision": 1.0, "recall": 0.5}


# --- ROC -------------------------------------------------------------------------------------


def _pairwise_auc(ef, pred, threshold):
  """Mann-Whitney by brute force: P(score_pos > score_neg) + P(tie) / 2, score = -pred."""
  pos, neg = -pred[ef < threshold], -pred[ef >= threshold]
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_is_mann_whitney_with_ties(seed):
  rng = np.random.default_rng(seed)
  ef = np.round(rng.uniform(20, 75, 400))
  pred = np.round(ef + rng.normal(0, 12, ef.size) / 5) * 5  # coarse: many tied scores
  for threshold in (35, 40, 45, 50):
    curve = metrics.roc(ef, pred, threshold)
    expected = _pairwise_auc(ef, pred, threshold)
    assert curve["auc"] == pytest.approx(expected, abs=1e-12)
    fpr, tpr = np.array(curve["fpr"]), np.array(curve["tpr"])
    # The tie-aware curve: trapezoids give the same area, monotone from (0,0) to (1,1).
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(expected)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(fpr) == len(np.unique(pred)) + 1
    assert curve["n_positive"] == int(np.sum(ef < threshold))
    assert curve["n_positive"] + curve["n_negative"] == ef.size


def test_roc_extremes():
  ef = np.array([20.0, 30.0, 39.0, 40.0, 55.0, 60.0])
  assert metrics.roc(ef, ef, 40)["auc"] == 1.0
  assert metrics.roc(ef, -ef, 40)["auc"] == 0.0
  assert metrics.roc(ef, np.full(6, 50.0), 40)["auc"] == 0.5  # all tied
  empty = metrics.roc(ef, ef, 10)
  assert (empty["auc"], empty["n_positive"], empty["n_negative"]) == (None, 0, 6)
  assert empty["fpr"] == [] and empty["tpr"] == []
  assert metrics.roc(ef, ef, 90)["auc"] is None
  aucs = metrics.roc_aucs(ef, ef)
  assert aucs == {"35": 1.0, "40": 1.0, "45": 1.0, "50": 1.0}


# --- intervals and calibration ---------------------------------------------------------------


def test_normal_quantile_accuracy():
  assert metrics.central_z(0.9) == pytest.approx(1.6448536269514722, abs=1e-12)
  assert metrics.central_z(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
  assert metrics.central_z(0.99) == pytest.approx(2.5758293035489004, abs=1e-12)
  assert metrics.normal_quantile(0.5) == pytest.approx(0.0, abs=1e-15)
  assert metrics.normal_quantile(0.9) == pytest.approx(1.2815515655446004, abs=1e-12)
  assert metrics.normal_quantile(1e-10) == pytest.approx(-6.361340902404056, rel=1e-10)
  # Round trip through the CDF, in both tails and the centre.
  for p in np.r_[1e-12, 1e-6, 0.01, 0.02425, np.linspace(0.03, 0.97, 50), 0.99, 1 - 1e-6]:
    x = metrics.normal_quantile(p)
    assert 0.5 * math.erfc(-x / math.sqrt(2)) == pytest.approx(p, rel=1e-12)
    q = 1 - p  # rounded; 1 - q is exact, so the mirror image is at 1 - q
    assert metrics.normal_quantile(q) == pytest.approx(-metrics.normal_quantile(1 - q), abs=1e-12)
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError):
      metrics.normal_quantile(bad)


def test_interval_coverage_by_hand():
  ef = np.array([40.0, 50.0, 60.0, 70.0])
  low = np.array([35.0, 50.0, 61.0, 60.0])
  high = np.array([45.0, 55.0, 65.0, 70.0])  # bounds are inside; 60 is not in [61, 65]
  result = metrics.interval_coverage(ef, low, high, nominal=0.8)
  assert result == {"nominal": 0.8, "coverage": 0.75, "mean_width": 7.25, "n": 4}
  with pytest.raises(ValueError):
    metrics.interval_coverage(ef, high, low)


def test_gaussian_intervals_with_the_right_std_are_calibrated():
  rng = np.random.default_rng(0)
  n = 20_000
  ef = rng.uniform(20, 75, n)
  std = rng.uniform(2, 8, n)  # heteroscedastic, and the model knows its std
  pred = ef + rng.normal(0, 1, n) * std
  z90 = metrics.central_z(0.9)
  result = metrics.interval_coverage(ef, pred - z90 * std, pred + z90 * std, nominal=0.9)
  assert abs(result["coverage"] - 0.9) < 0.03
  assert result["mean_width"] == pytest.approx(2 * z90 * np.mean(std))
  curve = metrics.calibration_curve(ef, pred, std)
  assert len(curve) == 12 and curve[0]["nominal"] == pytest.approx(0.1)
  for point in curve:
    assert abs(point["coverage"] - point["nominal"]) < 0.03, point
  # Overconfident (std halved): coverage well below nominal.
  for point in metrics.calibration_curve(ef, pred, std / 2, levels=[0.5, 0.9]):
    assert point["coverage"] < point["nominal"] - 0.1


def test_calibration_curve_zero_std():
  curve = metrics.calibration_curve([50.0, 60.0], [50.0, 61.0], [0.0, 0.0], levels=[0.5, 0.99])
  assert curve == [{"nominal": 0.5, "coverage": 0.5}, {"nominal": 0.99, "coverage": 0.5}]


# --- per stratum -----------------------------------------------------------------------------


def test_strata_metrics_by_hand():
  ef = np.array([40.0, 50.0, 60.0, 55.0, 55.0, 30.0, 70.0])
  pred = np.array([42.0, 47.0, 61.0, 50.0, 58.0, 30.0, 66.0])
  strata = {
    "image_quality": ["Good", "Good", "Good", "Poor", "Poor", "Medium", ""],
    "age_group": ["10-14", "5-9", "10-14", "5-9", "<1", "10-14", "5-9"],
  }
  result = metrics.strata_metrics(ef, pred, strata, num_resamples=200, seed=3)
  assert json.loads(json.dumps(result, allow_nan=False)) == result
  assert list(result) == ["image_quality", "age_group"]
  quality = result["image_quality"]
  # Sorted; the video without a value is a group of its own. Natural order: 5-9 before 10-14,
  # and the youngest group, "<1", first.
  assert list(quality) == ["(missing)", "Good", "Medium", "Poor"]
  assert list(result["age_group"]) == ["<1", "5-9", "10-14"]
  good = quality["Good"]
  error = np.array([2.0, -3.0, 1.0])
  assert good["n"] == 3
  assert good["rmse"]["value"] == pytest.approx(np.sqrt(np.mean(error**2)))
  assert good["mae"]["value"] == pytest.approx(2.0)
  assert good["bias"] == pytest.approx(0.0)
  assert good["r2"]["value"] == pytest.approx(1 - 14 / 200)
  # The group's own bootstrap, seeded as the split's.
  expected = metrics.bootstrap(ef[:3], pred[:3], num_resamples=200, seed=3)
  for k in ("rmse", "mae", "r2"):
    assert good[k] == expected[k]
    lo, hi = good[k]["ci95"]
    assert lo <= good[k]["value"] <= hi
  # No variance to explain: one video (Medium), or one true EF (Poor: 55 twice). R² is null.
  for value in ("Medium", "Poor", "(missing)"):
    assert quality[value]["r2"] == {"value": None, "ci95": None}, value
  assert quality["Poor"]["bias"] == pytest.approx(-1.0)
  assert quality["Poor"]["mae"]["value"] == pytest.approx(4.0)
  assert quality["Medium"]["rmse"] == {"value": 0.0, "ci95": [0.0, 0.0]}
  assert sum(g["n"] for g in result["age_group"].values()) == ef.size
  assert metrics.strata_metrics(ef, pred, {}) == {}
  with pytest.raises(ValueError, match="stratum 'view' has shape"):
    metrics.strata_metrics(ef, pred, {"view": ["4CH"] * 3})


def test_strata_csv_and_summary_lines(tmp_path):
  from lvef_jax.evaluation import commands
  from lvef_jax.reporting import evaluation as eval_files

  ef, pred = _noisy(40, seed=8)
  view = np.array(["2CH", "4CH"] * 20)
  report = metrics.evaluation_report(ef, pred, num_resamples=50)
  report.update(split="test", clips="one", clips_scored=40, interval={"source": "none"})
  report["strata"] = metrics.strata_metrics(
    ef, pred, {"view": view, "sex": ["F"] + ["M"] * 39}, num_resamples=50
  )
  path = eval_files.write_strata(tmp_path / "test_one_strata.csv", report["strata"])
  with path.open(newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(eval_files.STRATA_COLUMNS)
  assert list(rows[0]) == [
    "stratum", "value", "n", "rmse", "rmse_low", "rmse_high", "mae", "r2", "bias"
  ]  # fmt: skip
  assert [(r["stratum"], r["value"], r["n"]) for r in rows] == [
    ("view", "2CH", "20"),
    ("view", "4CH", "20"),
    ("sex", "F", "1"),
    ("sex", "M", "39"),
  ]
  four = report["strata"]["view"]["4CH"]
  assert float(rows[1]["rmse"]) == pytest.approx(four["rmse"]["value"], abs=1e-4)
  assert float(rows[1]["rmse_low"]) <= float(rows[1]["rmse"]) <= float(rows[1]["rmse_high"])
  assert float(rows[1]["bias"]) == pytest.approx(four["bias"], abs=1e-4)
  assert rows[2]["r2"] == "" and rows[3]["r2"] != ""
  text = commands._summary(report, tmp_path / "test_one.json")
  lines = text.splitlines()
  (by_view,) = [line for line in lines if line.startswith("  by view: ")]
  assert "2CH (n=20) RMSE " in by_view and "; 4CH (n=20) RMSE " in by_view
  (by_sex,) = [line for line in lines if line.startswith("  by sex: ")]
  assert "F (n=1) RMSE " in by_sex and "R² -" in by_sex
  assert "strata CSV" in lines[-1]


# --- the report and the plots ----------------------------------------------------------------


def test_evaluation_report_is_json_and_complete():
  ef, pred = _noisy(200, seed=5)
  std = np.full(ef.size, 5.0)
  report = metrics.evaluation_report(
    ef, pred, low=pred - 8, high=pred + 8, ef_pred_std=std, num_resamples=300
  )
  decoded = json.loads(json.dumps(report, allow_nan=False))
  assert decoded == report
  assert set(report) == {
    "n",
    "rmse",
    "mae",
    "r2",
    "error_by_ef_range",
    "heart_failure",
    "roc_auc",
    "interval_coverage",
    "calibration",
    "out_of_range",
  }
  assert report["n"] == 200 and report["out_of_range"] == 0
  for k in ("rmse", "mae", "r2"):
    assert set(report[k]) == {"value", "ci95"} and len(report[k]["ci95"]) == 2
  assert set(report["roc_auc"]) == {"35", "40", "45", "50"}
  assert all(0.5 < auc <= 1 for auc in report["roc_auc"].values())
  assert report["interval_coverage"]["nominal"] == 0.9
  assert set(report["calibration"][0]) == {"nominal", "coverage"}
  assert len(report["error_by_ef_range"]) == 5 and report["heart_failure"]["classes"]


def test_evaluation_report_without_intervals_and_with_undefined_metrics():
  # Everything preserved: the ROC and some ranges are undefined and must come out as None.
  report = metrics.evaluation_report([60.0, 62.0, 70.0], [58.0, 65.0, 71.0], num_resamples=50)
  assert "interval_coverage" not in report and "calibration" not in report
  assert report["roc_auc"] == {"35": None, "40": None, "45": None, "50": None}
  json.dumps(report, allow_nan=False)
  with pytest.raises(ValueError):
    metrics.evaluation_report([60.0], [60.0], low=[50.0])


def test_plots_write_png(tmp_path):
  ef, pred = _noisy(200, seed=6)
  curves = [metrics.roc(ef, pred, t) for t in (35, 40, 45, 50)] + [metrics.roc(ef, pred, 10)]
  plots.roc_curves(curves, "ROC", tmp_path / "roc.png")
  plots.calibration(
    metrics.calibration_curve(ef, pred, np.full(200, 5.0)), "calibration", tmp_path / "cal.png"
  )
  plots.calibration([], "no uncertainty", tmp_path / "sub" / "empty.png")
  for name in ("roc.png", "cal.png", "sub/empty.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  assert sorted(p.name for p in tmp_path.rglob("*.tmp.png")) == []


def test_predictions_outside_0_100_are_counted_and_drawn_at_the_edge(tmp_path, monkeypatch):
  ef, pred = np.array([10.0, 50.0, 95.0, 60.0]), np.array([-9.0, 52.0, 104.0, 100.0])
  assert metrics.out_of_range(pred).tolist() == [True, False, True, False]
  assert metrics.evaluation_report(ef, pred, num_resamples=50)["out_of_range"] == 2
  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
  plots.scatter(ef, pred, "scatter", tmp_path / "scatter.png")
  plots.bland_altman(ef, pred, "bland-altman", tmp_path / "ba.png")
  scatter_ax, ba_ax = (figure.axes[0] for figure in figures)
  assert scatter_ax.get_xlim() == (0.0, 100.0) and scatter_ax.get_ylim() == (0.0, 100.0)
  inside, edge = scatter_ax.collections
  np.testing.assert_array_equal(inside.get_offsets(), [[50.0, 52.0], [60.0, 100.0]])
  np.testing.assert_array_equal(edge.get_offsets(), [[10.0, 0.0], [95.0, 100.0]])
  assert edge.get_label() == "2 predicted outside 0-100 % (at the edge)"
  assert ba_ax.get_xlim() == (0.0, 100.0)
  np.testing.assert_array_equal(ba_ax.collections[1].get_offsets(), [[0.5, -19.0], [99.5, 9.0]])
  for figure in figures:
    plots.plt.close(figure)


def test_the_printed_summary_explains_an_interval_of_no_width():
  from lvef_jax.evaluation import commands

  ef, pred = _noisy(50, seed=7)
  for width, expected in (
    (0.0, "no 90 % interval: one clip a video has no spread"),
    (8.0, "covers"),
  ):
    report = metrics.evaluation_report(
      ef, pred, low=pred - width / 2, high=pred + width / 2, num_resamples=50
    )
    report.update(split="test", clips="one", clips_scored=50, interval={"source": "clips"})
    text = commands._summary(report, pathlib.Path("test_one.json"))
    assert expected in text and ("mean width 8.0" in text) == (width > 0), text
