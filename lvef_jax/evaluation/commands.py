"""``launch.py --mode=eval`` and ``--mode=predict``: checkpoints scored and applied, no trainer.

Both read the run's own ``config.json`` (``launch.py`` loads it when ``--config`` is not
given), restore only the weights (:class:`~lvef_jax.evaluation.predictor.Predictor`), and
average an ensemble of runs when ``ensemble`` names more run directories. A run of several
members (``train.seeds``, ``train.grid``) is an ensemble of its members, or its member
``member`` alone; every member of an ``ensemble`` run joins.
"""

from __future__ import annotations

import pathlib
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging

from lvef_jax import sharding
from lvef_jax.config_base import load_run_config
from lvef_jax.data import clips as clip_layout
from lvef_jax.errors import LvefError
from lvef_jax.evaluation import evaluator, metrics
from lvef_jax.evaluation.predictor import check_same_inputs, predictors_from_run
from lvef_jax.reporting import evaluation as eval_files
from lvef_jax.training import members as members_lib

EVAL_DIR = "eval"
MEMBERS_DIR = "members"  # one member's evaluation of a several-member run: members/<i>/eval/


def _predictors(
  config, workdir, checkpoint: str, ensemble: Sequence[str], mesh, member: int | None = None
):
  """The prediction functions averaged: ``workdir``'s members (or its ``member``), then every
  member of each ``ensemble`` run."""
  members = predictors_from_run(workdir, checkpoint, config=config, mesh=mesh, member=member)
  for other in ensemble:
    other_config = load_run_config(other)
    other_config.compute = config.compute  # this command's hardware choice, for every member
    members += predictors_from_run(other, checkpoint, config=other_config, mesh=mesh)
  check_same_inputs(members)
  for predictor in members:
    logging.info("weights: %s", predictor.source)
  return members


def _interval_source(clips: str, mc_samples: int, members: int) -> str:
  parts = (["clips"] if clips == "all" else []) + (
    [f"mc_dropout({mc_samples})"] if mc_samples > 0 else []
  )
  parts += [f"ensemble({members})"] if members > 1 else []
  return "+".join(parts) or "none"


def evaluate(
  config,
  workdir: str | pathlib.Path,
  *,
  split: str = "test",
  clips: str | None = None,
  checkpoint: str = "best",
  ensemble: Sequence[str] = (),
  member: int | None = None,
) -> dict[str, dict]:
  """Scores ``split`` (or ``all`` splits) and writes ``workdir/eval/{split}_{clips}.*``.

  A several-member run is scored as the ensemble of its members; ``member`` scores that member
  alone, into ``workdir/members/<member>/eval/`` (a solo run's member 0: ``workdir/eval/``).

  Returns:
    The report of each split.
  """
  names = clip_layout.check_split(split, "eval split")
  clips = clip_layout.check_clip_mode(clips or config.eval.clips, "eval clips")
  from lvef_jax.data import preparation  # TensorFlow: only where data are read

  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  members = _predictors(config, workdir, checkpoint, ensemble, mesh, member)
  out = workdir / EVAL_DIR
  if member is not None and members_lib.count(config) > 1:
    out = workdir / MEMBERS_DIR / str(member) / EVAL_DIR
  builder = preparation.prepare(config.data)
  mc_samples = int(config.eval.mc_dropout_samples)
  stride = clip_layout.clip_stride(
    config.eval.clip_stride, config.data.clip_frames, config.data.period
  )
  reports = {}
  for name in names:
    start = time.perf_counter()
    split_evaluator = evaluator.Evaluator(
      name,
      clips=clips,
      stride=stride,
      batch_size=config.eval.batch_size,
      mc_samples=mc_samples,
      seed=config.seed,
    )
    predictions = split_evaluator.run(members, builder, config.data, mesh)
    low, high = predictions.interval()
    # Intervals need several predictions per video: clips, dropout samples or members.
    several_clips = clips == "all" and predictions.n_clips.max() > 1
    source = _interval_source("all" if several_clips else "one", mc_samples, len(members))
    spread = source != "none"
    report = metrics.evaluation_report(
      predictions.ef,
      predictions.ef_pred,
      low=low if spread else None,
      high=high if spread else None,
      ef_pred_std=predictions.ef_pred_std if spread else None,
      seed=config.seed,
      interval_nominal=evaluator.INTERVAL_LEVEL,
    )
    report = {
      "split": name,
      "clips": clips,
      "clip_stride": stride,
      "clips_scored": int(predictions.n_clips.sum()),
      "checkpoints": [m.source for m in members],
      "data_root": config.data.root or "(synthetic)",
      "interval": {"level": evaluator.INTERVAL_LEVEL, "source": source},
      "seconds": round(time.perf_counter() - start, 1),
      **report,
    }
    reports[name] = report
    if jax.process_index() == 0:
      title = f"{name}, {clips} clip{'s' if clips == 'all' else ''}"
      curves = [metrics.roc(predictions.ef, predictions.ef_pred, t) for t in (35, 40, 45, 50)]
      written = eval_files.write_evaluation(
        out, f"{name}_{clips}", report, predictions, low, high, curves, title
      )
      print(_summary(report, written[0]))
  return reports


def _summary(report: dict, path: pathlib.Path) -> str:
  def ci(key, digits):
    m = report[key]
    return f"{m['value']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"

  aucs = ", ".join(
    f"EF<{t}: {'-' if auc is None else f'{auc:.3f}'}" for t, auc in report["roc_auc"].items()
  )
  coverage = report.get("interval_coverage")
  lines = [
    f"{report['split']} ({report['clips']} clips, n={report['n']}, "
    f"{report['clips_scored']} clips scored): RMSE {ci('rmse', 2)}, MAE {ci('mae', 2)}, "
    f"R² {ci('r2', 3)} (95 % bootstrap CI)",
    f"  ROC AUC {aucs}; heart-failure class accuracy {report['heart_failure']['accuracy']:.3f}",
  ]
  if coverage:
    lines.append(
      f"  90 % interval ({report['interval']['source']}) covers "
      f"{coverage['coverage']:.1%} of true EFs, mean width {coverage['mean_width']:.1f}"
    )
  lines.append(f"  written: {path} (+ predictions CSV and plots)")
  return "\n".join(lines)


def predict(
  config,
  workdir: str | pathlib.Path,
  videos: str,
  output: str | pathlib.Path,
  *,
  clips: str = "all",
  checkpoint: str = "best",
  ensemble: Sequence[str] = (),
  member: int | None = None,
) -> int:
  """Predicts EF for every video of ``videos`` (a file, a folder or a glob) into ``output``.

  Each video is read the way the training data were (grey, resized to the training resolution,
  resampled in time when its frame rate is far from ``data.typical_fps``), cut into clips (all
  starts ``eval.clip_stride`` apart, or the clip from frame 0) and averaged. A file that cannot
  be read gets a row with its error; the others go on. A several-member run predicts as the
  ensemble of its members, or as its ``member`` alone.

  Returns:
    The number of videos scored (the caller exits non-zero when it is 0).
  """
  from lvef_jax.data import video_io

  clip_layout.check_clip_mode(clips, "predict clips")
  found = video_io.find_videos(videos)
  mesh = sharding.make_mesh()
  members = _predictors(config, pathlib.Path(workdir), checkpoint, ensemble, mesh, member)
  data = config.data
  stride = clip_layout.clip_stride(config.eval.clip_stride, data.clip_frames, data.period)
  batch_size = config.eval.batch_size
  sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
  mc_samples = int(config.eval.mc_dropout_samples)
  rows, scored = [], 0
  for path, name in found:
    row = {"FileName": name}
    try:
      frames, info = video_io.load_for_model(
        path, image_size=data.image_size, target_fps=data.typical_fps
      )
    except LvefError as e:
      row["error"] = str(e)
      logging.warning("%s", e)
      rows.append(row)
      continue
    starts = (
      clip_layout.clip_starts(len(frames), data.clip_frames, data.period, stride)
      if clips == "all"
      else np.zeros(1, np.int64)
    )
    video = np.stack(
      [clip_layout.take_clip(frames, start, data.clip_frames, data.period) for start in starts]
    )
    ((mean, std, n_clips),) = evaluator.predict_clips(
      members, [video], mesh, batch_size=batch_size, mc_samples=mc_samples, seed=config.seed
    )
    z = metrics.central_z(evaluator.INTERVAL_LEVEL)
    row.update(
      EF_pred=mean,
      EF_pred_std=std,
      EF_low=mean - z * std,
      EF_high=mean + z * std,
      hf_class=metrics.HF_CLASSES[int(metrics.hf_class(np.array([mean]))[0])],
      n_clips=str(n_clips),
    )
    if info["frames"] != info["frames_read"]:
      logging.info(
        "%s: %d frames at %.1f fps resampled to %d",
        name,
        info["frames_read"],
        info["fps"],
        info["frames"],
      )
    rows.append(row)
    scored += 1
  if jax.process_index() == 0:
    eval_files.write_predictions(pathlib.Path(output), rows)
  failed = len(rows) - scored
  print(
    f"predicted {scored} of {len(rows)} videos into {output}"
    + (f"; {failed} could not be read (see the error column)" if failed else "")
  )
  return scored
