"""``launch.py --mode=eval`` and ``--mode=predict``: checkpoints scored and applied, no trainer.

Both read the run's own ``config.json`` (``launch.py`` loads it when ``--config`` is not
given), restore only the weights (:class:`~lvef_jax.evaluation.predictor.Predictor`), and
average an ensemble of runs when ``ensemble`` names more run directories. A run of several
members (``train.seeds``, ``train.grid``) is an ensemble of its members, or its member
``member`` alone; every member of an ``ensemble`` run joins.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging

from lvef_jax import sharding
from lvef_jax.config_base import load_run_config
from lvef_jax.data import clips as clip_layout
from lvef_jax.errors import ConfigError, LvefError, MissingCheckpointError
from lvef_jax.evaluation import beat_to_beat, evaluator, metrics, segmentation as frame_scores
from lvef_jax.evaluation.predictor import check_same_inputs, predictors_from_run
from lvef_jax.reporting import evaluation as eval_files, files
from lvef_jax.training import members as members_lib

EVAL_DIR = "eval"
# Another dataset's evaluation: eval/external/<dataset>/ (`_data_source`), beside the run's own.
EXTERNAL_DIR = "external"
MEMBERS_DIR = "members"  # one member's evaluation of a several-member run: members/<i>/eval/
# --eval_clips=beats: the clips ending at each end-systole a segmentation run finds.
BEATS = "beats"
# Area curves drawn per split by an evaluation with --segmentation (every video gets a row in
# the split's segmentation CSV; a picture each of 1,277 test videos would bury the few read).
PLOTTED_VIDEOS = 16
SEGMENTATION_COLUMNS = ("n_beats", "ES_frames", "EF_masks", "beat_clips")


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


def _data_source(config, workdir: pathlib.Path) -> dict:
  """``data_format``, ``external`` and ``dataset`` of the data ``config`` reads.

  The data are external when their format or root differs from the run's own (its
  ``config.json``); ``dataset`` names them ``{format}-{root's folder name}`` (``synthetic``
  without a root), in the characters a folder name can safely hold.
  """
  data = config.data
  data_format = data.get("format", "echonet")
  try:
    own = load_run_config(workdir).data
  except MissingCheckpointError:  # no config.json: the data given are all this run has
    own = data

  def where(root: str) -> str:
    # Spelled differently, one folder ("CAMUS/" and "./CAMUS") is still the run's own.
    return str(pathlib.Path(root).expanduser().resolve()) if root else ""

  external = data_format != own.get("format", "echonet") or where(data.root) != where(own.root)
  folder = pathlib.Path(data.root).expanduser().resolve().name if data.root else "synthetic"
  dataset = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{data_format}-{folder}")
  return {"data_format": data_format, "external": bool(external), "dataset": dataset}


def _concatenated(predictions: Sequence[evaluator.VideoPredictions]):
  """The videos of several splits as one `evaluator.VideoPredictions`, split after split."""
  return evaluator.VideoPredictions(
    **{
      field.name: np.concatenate([getattr(p, field.name) for p in predictions])
      for field in dataclasses.fields(evaluator.VideoPredictions)
    }
  )


def evaluate(
  config,
  workdir: str | pathlib.Path,
  *,
  split: str = "test",
  clips: str | None = None,
  checkpoint: str = "best",
  ensemble: Sequence[str] = (),
  member: int | None = None,
  segmentation: str | pathlib.Path | None = None,
) -> dict[str, dict]:
  """Scores ``split`` (or ``all`` splits) and writes ``workdir/eval/{split}_{clips}.*``.

  A several-member run is scored as the ensemble of its members; ``member`` scores that member
  alone, into ``workdir/members/<member>/eval/`` (a solo run's member 0: ``workdir/eval/``).

  Data other than the run's own (another ``data.format`` or ``data.root``, `_data_source`)
  are an external dataset: their files go to ``eval/external/<dataset>/``, so the run's own
  evaluation stays, and ``split="all"`` adds ``all_{clips}.*``, every video of every split
  scored as one set. A dataset with strata (``preparation.strata``: CAMUS image quality, view,
  ...) gets the metrics of each stratum value in the report's ``strata`` and in
  ``{split}_{clips}_strata.csv``.

  ``segmentation`` (a segmentation run's directory) segments every frame of every video too
  and writes ``{split}_segmentation.csv`` (beats, end-systolic frames, EF from the masks),
  the area curves of the first videos (``segmentation/{split}/``) and the masks' EF scores in
  the report; with ``clips="beats"`` the EF model scores the clips that end at each detected
  end-systole, averaged per video (EchoNet-Dynamic's beat-to-beat estimate). A segmentation
  run itself is scored by its Dice (`evaluate_segmentation_run`).

  Returns:
    The report of each split (and ``"all"``'s, for an external dataset's ``split="all"``).
  """
  if config.get("task", "ef") == "segmentation":
    return evaluate_segmentation_run(config, workdir, split=split, checkpoint=checkpoint)
  names = clip_layout.check_split(split, "eval split")
  clips = clips or config.eval.clips
  if clips == BEATS and not segmentation:
    raise ConfigError(
      "--eval_clips=beats needs --segmentation=SEGDIR, a segmentation run that finds the beats"
    )
  if clips != BEATS:
    clip_layout.check_clip_mode(clips, "eval clips")
  from lvef_jax.data import preparation  # TensorFlow: only where data are read

  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  members = _predictors(config, workdir, checkpoint, ensemble, mesh, member)
  segmenter = None
  if segmentation:
    beat_to_beat.only_one_process("--segmentation")
    segmenter = beat_to_beat.Segmenter(segmentation, mesh)
    logging.info("segmentation: %s", segmenter.source)
  out = workdir / EVAL_DIR
  if member is not None and members_lib.count(config) > 1:
    out = workdir / MEMBERS_DIR / str(member) / EVAL_DIR
  source = _data_source(config, workdir)
  if source["external"]:
    out = out / EXTERNAL_DIR / source["dataset"]
  builder = preparation.prepare(config.data)
  mc_samples = int(config.eval.mc_dropout_samples)
  stride = clip_layout.clip_stride(
    config.eval.clip_stride, config.data.clip_frames, config.data.period
  )

  def score(name: str, predictions, strata: dict, start: float, segmented=None) -> dict:
    """The report of ``name``'s predictions (with ``segmented``'s masks' scores), its files
    written and its summary printed; ``start``: when its scoring began."""
    low, high = predictions.interval()
    # Intervals need several predictions per video: clips, dropout samples or members.
    several_clips = clips in ("all", BEATS) and predictions.n_clips.max() > 1
    interval_source = _interval_source("all" if several_clips else "one", mc_samples, len(members))
    spread = interval_source != "none"
    scores = metrics.evaluation_report(
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
      **source,
      "interval": {"level": evaluator.INTERVAL_LEVEL, "source": interval_source},
      "seconds": round(time.perf_counter() - start, 1),
      **scores,
    }
    if strata:
      report["strata"] = metrics.strata_metrics(
        predictions.ef, predictions.ef_pred, strata, seed=config.seed
      )
    if segmented is not None:
      report["segmentation"] = segmented["report"]
    if jax.process_index() == 0:
      title = f"{name}, {clips} clip{'s' if clips == 'all' else ''}"
      if clips == BEATS:
        title = f"{name}, clips ending at each end-systole"
      if source["external"]:
        title = f"{source['dataset']} {title}"
      curves = [metrics.roc(predictions.ef, predictions.ef_pred, t) for t in (35, 40, 45, 50)]
      written = eval_files.write_evaluation(
        out, f"{name}_{clips}", report, predictions, low, high, curves, title
      )
      print(_summary(report, written[0]))
    return report

  reports, scored = {}, []
  for name in names:
    start = time.perf_counter()
    segmented = None
    if segmenter is not None:
      segmented = _segment_split(
        config, builder, name, members, segmenter, mesh, out, beat_clips=clips == BEATS
      )
    if clips == BEATS:
      predictions = segmented["predictions"]
    else:
      split_evaluator = evaluator.Evaluator(
        name,
        clips=clips,
        stride=stride,
        batch_size=config.eval.batch_size,
        mc_samples=mc_samples,
        seed=config.seed,
      )
      predictions = split_evaluator.run(members, builder, config.data, mesh)
    strata = preparation.strata(builder, name)
    reports[name] = score(name, predictions, strata, start, segmented)
    scored.append((predictions, strata, start))
  if source["external"] and split == clip_layout.EVERY_SPLIT:
    # An external set is scored as a whole: no model was trained on any of its splits.
    strata = {k: np.concatenate([s[k] for _, s, _ in scored]) for k in scored[0][1]}
    predictions = _concatenated([p for p, _, _ in scored])
    reports[split] = score(split, predictions, strata, scored[0][2])
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
  if coverage and coverage["mean_width"] == 0:
    lines.append(
      "  no 90 % interval: one clip a video has no spread (score several clips, e.g. "
      "--eval_clips=all, or set eval.mc_dropout_samples)"
    )
  elif coverage:
    lines.append(
      f"  90 % interval ({report['interval']['source']}) covers "
      f"{coverage['coverage']:.1%} of true EFs, mean width {coverage['mean_width']:.1f}"
    )
  for stratum, groups in report.get("strata", {}).items():
    lines.append(f"  by {stratum}: " + "; ".join(_group(v, m) for v, m in groups.items()))
  extra = ", strata CSV" if report.get("strata") else ""
  lines.append(f"  written: {path} (+ predictions CSV{extra} and plots)")
  return "\n".join(lines)


def _group(value: str, scores: dict) -> str:
  """One stratum value's line part: ``Good (n=12) RMSE 5.10, R² 0.712, bias -0.40``."""
  r2 = scores["r2"]["value"]
  return (
    f"{value} (n={scores['n']}) RMSE {scores['rmse']['value']:.2f}, "
    f"R² {'-' if r2 is None else f'{r2:.3f}'}, bias {scores['bias']:+.2f}"
  )


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
  segmentation: str | pathlib.Path | None = None,
) -> int:
  """Predicts EF for every video of ``videos`` (a file, a folder or a glob) into ``output``.

  Each video is read the way the training data were (grey, resized to the training resolution,
  resampled in time when its frame rate is far from ``data.typical_fps``), cut into clips (all
  starts ``eval.clip_stride`` apart, or the clip from frame 0) and averaged. A file that cannot
  be read gets a row with its error; the others go on. A several-member run predicts as the
  ensemble of its members, or as its ``member`` alone.

  ``segmentation`` (a segmentation run's directory) also segments every frame: the CSV gains
  the number of beats, the end-systolic frames and the EF of the masks, and
  ``<output>_segmentation/`` each file's area curve (``<name>_area.png``) and the mask outline
  over the echo (``<name>_overlay.avi``); ``clips="beats"`` averages the clips that end at each
  end-systole.

  Returns:
    The number of videos scored (the caller exits non-zero when it is 0).
  """
  from lvef_jax.data import video_io

  if clips == BEATS and not segmentation:
    raise ConfigError(
      "--eval_clips=beats needs --segmentation=SEGDIR, a segmentation run that finds the beats"
    )
  if clips != BEATS:
    clip_layout.check_clip_mode(clips, "predict clips")
  found = video_io.find_videos(videos)
  mesh = sharding.make_mesh()
  members = _predictors(config, pathlib.Path(workdir), checkpoint, ensemble, mesh, member)
  segmenter, pictures = None, None
  if segmentation:
    beat_to_beat.only_one_process("--segmentation")
    segmenter = beat_to_beat.Segmenter(segmentation, mesh)
    output = pathlib.Path(output)
    pictures = output.with_name(output.stem + "_segmentation")
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
        path,
        image_size=data.image_size,
        target_fps=data.typical_fps,
        other_sizes=(segmenter.image_size,) if segmenter else (),
      )
    except LvefError as e:
      row["error"] = str(e)
      logging.warning("%s", e)
      rows.append(row)
      continue
    seg = None
    if segmenter is not None:
      seg = _segment_file(segmenter, info, data.typical_fps or info["fps"], pictures, name)
      row.update(
        n_beats=str(seg.num_beats),
        ES_frames=" ".join(map(str, seg.es_frames)),
        EF_masks=float(seg.mask_ef["ef"]) if seg.num_beats else None,
      )
    if clips == BEATS:
      video, whole = beat_to_beat.beat_clips(frames, seg.es_frames, data.clip_frames, data.period)
      row["beat_clips"] = "yes" if whole else "no (clip from frame 0)"
    else:
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
      out_of_range=str(int(metrics.out_of_range(mean))),
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
    columns = eval_files.PREDICT_COLUMNS + (SEGMENTATION_COLUMNS if segmenter else ())
    eval_files.write_predictions(pathlib.Path(output), rows, columns)
  failed = len(rows) - scored
  print(
    f"predicted {scored} of {len(rows)} videos into {output}"
    + (f"; {failed} could not be read (see the error column)" if failed else "")
  )
  return scored


def _segment_file(segmenter, info: dict, fps: float, pictures: pathlib.Path, name: str):
  """One predicted file segmented: its area curve and overlay video under ``pictures``."""
  from lvef_jax.reporting import segmentation_plots

  stem = pathlib.Path(name).stem
  seg = segmenter.analyse(
    info["resized"][segmenter.image_size], fps, overlay=pictures / f"{stem}_overlay.avi"
  )
  segmentation_plots.area_curve(
    pictures / f"{stem}_area.png",
    seg.area,
    fps,
    es_frames=seg.es_frames,
    ed_frames=[ed for ed, _ in seg.beats],
    title=f"{name}: {seg.num_beats} beats, EF from the masks {seg.mask_ef['ef']:.1f} %",
  )
  return seg


def _segment_split(
  config, builder, split: str, members, segmenter, mesh, out: pathlib.Path, *, beat_clips: bool
) -> dict:
  """Segments every video of ``split`` (`beat_to_beat.Segmenter`), writes its segmentation
  CSV and first area curves, and with ``beat_clips`` scores the EF model's clips ending at
  each end-systole. Returns ``{"report": the masks' scores, "predictions": the beat
  clips' VideoPredictions or None}``."""
  from lvef_jax.data import preparation  # TensorFlow: only where data are read
  from lvef_jax.reporting import segmentation_plots

  data = config.data
  listing = preparation.split_listing(builder, split)
  count = len(listing["ef"])
  mean, std, n_clips = np.zeros(count), np.zeros(count), np.zeros(count, np.int64)
  mask_ef, n_beats, rows = np.full(count, np.nan), np.zeros(count, np.int64), []
  without_beat_clips = 0
  sizes = tuple(dict.fromkeys((data.image_size, segmenter.image_size)))
  for video in beat_to_beat.split_videos(builder, split, sizes):
    i, name = video["index"], listing["file_name"][video["index"]]
    seg = segmenter.analyse(video["frames"][segmenter.image_size], video["fps"])
    mask_ef[i], n_beats[i] = seg.mask_ef["ef"], seg.num_beats
    whole = None
    if beat_clips:
      clips, whole = beat_to_beat.beat_clips(
        video["frames"][data.image_size], seg.es_frames, data.clip_frames, data.period
      )
      ((mean[i], std[i], n_clips[i]),) = evaluator.predict_clips(
        members,
        [clips],
        mesh,
        batch_size=config.eval.batch_size,
        mc_samples=int(config.eval.mc_dropout_samples),
        seed=config.seed,
      )
      without_beat_clips += not whole
    rows.append(
      [
        name,
        f"{listing['ef'][i]:.4f}",
        len(seg.area),
        f"{video['fps']:g}",
        seg.num_beats,
        " ".join(map(str, seg.es_frames)),
        "" if np.isnan(mask_ef[i]) else f"{mask_ef[i]:.4f}",
        f"{mean[i]:.4f}" if beat_clips else "",
        "" if whole is None else int(n_clips[i]) if whole else 0,
      ]
    )
    if i < PLOTTED_VIDEOS and jax.process_index() == 0:
      traced = video["ed_frame"] >= 0
      segmentation_plots.area_curve(
        out / "segmentation" / split / f"{name}_area.png",
        seg.area,
        video["fps"],
        es_frames=seg.es_frames,
        ed_frames=[ed for ed, _ in seg.beats],
        traced_ed=video["ed_frame"] if traced else None,
        traced_es=video["es_frame"] if traced else None,
        title=f"{name}: EF {listing['ef'][i]:.1f} %, from the masks {mask_ef[i]:.1f} %",
      )
  header = [
    "FileName",
    "EF",
    "Frames",
    "FPS",
    "Beats",
    "ES_frames",
    "EF_masks",
    "EF_pred_beats",
    "BeatClips",
  ]
  files.write_text(out / f"{split}_segmentation.csv", files.csv_text(header, rows))
  found = np.isfinite(mask_ef)
  report = {
    "run": segmenter.source,
    "videos": int(count),
    "beats_per_video": float(n_beats.mean()) if count else 0.0,
    "videos_without_beats": int(np.sum(n_beats == 0)),
    "mask_ef": (
      metrics.regression_metrics(listing["ef"][found], mask_ef[found]) if found.sum() > 1 else None
    ),
  }
  predictions = None
  if beat_clips:
    report["videos_scored_from_frame_0"] = int(without_beat_clips)
    predictions = evaluator.VideoPredictions(
      file_name=listing["file_name"],
      ef=listing["ef"],
      ef_pred=mean,
      ef_pred_std=std,
      n_clips=n_clips,
    )
  return {"report": report, "predictions": predictions}


def evaluate_segmentation_run(
  config, workdir: str | pathlib.Path, *, split: str = "test", checkpoint: str = "best"
) -> dict[str, dict]:
  """``--mode=eval`` of a segmentation run: Dice overall, at ED and at ES, of ``split``'s
  traced frames (or every split's), into ``workdir/eval/{split}_dice.json`` and
  ``segmentation_{split}.csv`` there."""
  from lvef_jax.data import preparation  # TensorFlow: only where data are read

  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  predictors = predictors_from_run(workdir, checkpoint, config=config, mesh=mesh)
  builder = preparation.prepare(config.data)
  out = workdir / EVAL_DIR
  reports = {}
  for name in clip_layout.check_split(split, "eval split"):

    def predict(image):
      return sum(p(image) for p in predictors) / len(predictors)

    (scored,) = frame_scores.score_frames(
      predict, builder, name, config.data, mesh, batch_size=config.eval.batch_size
    )
    report = {
      "split": name,
      "checkpoints": [p.source for p in predictors],
      "data_root": config.data.root or "(synthetic)",
      **scored.summary(),
    }
    reports[name] = report
    if jax.process_index() == 0:
      names = preparation.split_listing(builder, name)["file_name"]
      frame_scores.write_split(out, name, scored, names)
      files.write_text(out / f"{name}_dice.json", json.dumps(report, indent=2) + "\n")
      print(
        f"{name} ({report['n']} traced frames): Dice {report['dice']:.3f} (ED "
        f"{report['dice_ed']:.3f}, ES {report['dice_es']:.3f}); written: {out}"
      )
  return reports
