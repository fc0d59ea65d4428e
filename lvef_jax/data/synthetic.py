"""Synthetic EchoNet-Dynamic-format dataset generator.

Writes `FileList.csv`, `VolumeTracings.csv` and `Videos/*.avi` in the exact layout of the real
release, so the official PyTorch `echonet` loader and this project's loader read it unchanged.
The ejection fraction is in the pixels: each video shows an apical 4-chamber-like view whose left
ventricle (LV) is a truncated prolate ellipsoid (drawn as its long-axis section) whose volume
follows a cardiac cycle between the labelled EDV and ESV. The other chambers move with the cycle,
but their sizes are random and independent of the label, so a model has to measure the LV.

Usage:
  python -m lvef_jax.data.synthetic --out /tmp/syn --num_videos 200 --seed 0 \
      --min_frames 20 --max_frames 96
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

import cv2
import numpy as np

from lvef_jax.data import echonet
from lvef_jax.data.clips import SPLITS
from lvef_jax.errors import ConfigError

VERSION = "lvef_jax.synthetic/1"
SIZE = 112
NUM_CHORDS = 20
CLIP_FRAMES = 28  # the paper's clip length; a few videos are shorter so padding gets exercised
# The real dataset's videos per split: the synthetic one keeps these proportions.
ECHONET_SPLIT_SIZES = dict(zip(SPLITS, (7465, 1288, 1277)))
MARKER = ".synthetic.json"
_SHIFT = 4  # cv2 draws in fixed point: 1/16-pixel precision for sub-pixel chamber outlines


# ------------------------------------------------------------------------------- cardiac cycle
def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _fill_fraction(phase, es_phase, early_share):
  """Normalised LV volume over the cycle (phase mod 1): 1 at end-diastole (0), 0 at `es_phase`.

  Fast ejection, then rapid early filling (`early_share` of the stroke volume), diastasis and the
  atrial kick. Monotone on either side of ES, so ED and ES are the only extremes and a frame
  sampled exactly at either holds the largest/smallest cavity of the whole video.
  """
  phase = np.mod(phase, 1.0)
  systole = 0.5 * (1.0 + np.cos(np.pi * np.clip(phase / es_phase, 0.0, 1.0)))
  y = (phase - es_phase) / (1.0 - es_phase)
  diastasis = 0.3 * (1.0 - early_share)
  diastole = (
    early_share * _smoothstep(y / 0.35)
    + diastasis * _smoothstep((y - 0.35) / 0.4)
    + (1.0 - early_share - diastasis) * _smoothstep((y - 0.75) / 0.25)
  )
  return np.where(phase < es_phase, systole, diastole)


def _truncation(beta):
  # An ellipsoid with semi-axes (a, b, b) cut a*beta past its centre holds pi*b^2*a*g(beta).
  return beta - beta**3 / 3.0 + 2.0 / 3.0


# ------------------------------------------------------------------------------------ sampling
def _sample_video(rng, min_frames, max_frames):
  """Draws every random quantity of one video: labels, timing, anatomy, image formation."""
  p = {"name": "0X" + rng.bytes(8).hex().upper()}
  # EF: a normal bulk plus a spread-out low-EF tail gives the real mean 55.7 / SD 12.4.
  ef = rng.uniform(8.0, 46.0) if rng.random() < 0.11 else np.clip(rng.normal(59.5, 6.5), 35, 88)
  ef = round(float(ef), 5)
  # Log-normal EDV, larger for low EF (dilated hearts). ESV follows exactly from EF.
  edv = np.exp(rng.normal(math.log(84.0) + 0.012 * max(0.0, 55.0 - ef), 0.28))
  edv = round(float(np.clip(edv, 30.0, 350.0)), 5)
  p.update(ef=ef, edv=edv, esv=round(edv * (1.0 - ef / 100.0), 5))
  p["fps"] = 50 if rng.random() < 0.7 else int(np.clip(round(rng.normal(50.0, 7.0)), 30, 60))
  if min_frames < CLIP_FRAMES and (max_frames < CLIP_FRAMES or rng.random() < 0.05):
    p["frames"] = int(rng.integers(min_frames, min(max_frames, CLIP_FRAMES - 1) + 1))
  else:
    p["frames"] = int(rng.integers(max(min_frames, CLIP_FRAMES), max_frames + 1))
  n, es_target, hr = p["frames"], rng.uniform(0.35, 0.40), rng.uniform(50.0, 110.0)
  # A short video needs a fast enough heart to hold both ED and ES.
  hr_min = es_target * 60.0 * p["fps"] / (n - 1.5) if n > 2 else math.inf
  traced = rng.random() >= 0.03 and hr_min <= 110.0  # ~3% untraced, like the real data
  if traced and hr < hr_min:
    hr = rng.uniform(hr_min, 110.0)
  step = hr / 60.0 / p["fps"]  # cardiac phase per frame
  # ED falls exactly on a frame and ES a whole number of frames away, so the traced frames are
  # the waveform's true extremes and their tracings give back the label EF. ES comes before or
  # after ED, as in the real data.
  fits_after, fits_before = es_target / step <= n - 1.5, (1 - es_target) / step <= n - 1.5
  after = fits_after and (not fits_before or rng.random() < 0.5)
  k = int(round((es_target if after else 1.0 - es_target) / step))
  if traced:
    first = int(rng.integers(0, n - k))
    ed_frame = first if after else first + k
  else:
    ed_frame = rng.uniform(-60.0, 60.0)  # any phase; the extremes need not be in the video
  p.update(
    hr=hr,
    es_phase=k * step if after else 1.0 - k * step,
    traced=traced,
    ed_frame=ed_frame,
    early=rng.uniform(0.55, 0.8),
  )
  # LV shape: `beta` sets how far past the widest point the mitral plane cuts; low-EF hearts are
  # rounder. The pixel scale (cm/px) varies like imaging depth, so pixel size is no volume cue.
  p["beta"] = beta = rng.uniform(0.3, 0.6)
  aspect = rng.uniform(0.48, 0.6) + 0.1 * float(np.clip(55.0 - ef, 0.0, 40.0)) / 40.0
  l_cm = (4.0 * (1 + beta) * edv / (math.pi * aspect**2 * _truncation(beta))) ** (1 / 3)
  scale = max(rng.uniform(0.12, 0.17), l_cm / 70.0)  # zoom out so that big hearts fit
  p.update(
    scale=scale,
    l_ed=l_cm / scale,
    shortening=rng.uniform(0.05, 0.20) * min(1.0, ef / 50.0),  # keeps D_es <= D_ed
    wall=rng.uniform(4.0, 7.0),
    tilt=math.radians(8.0 + rng.uniform(-12.0, 12.0)),
    apex=(SIZE / 2 + rng.uniform(0.0, 9.0), rng.uniform(12.0, 19.0)),
  )
  # Other chambers, (length, half-width, cyclic amplitude): independent of EF, no shortcut.
  p.update(
    rv=(rng.uniform(0.4, 0.6), rng.uniform(7.0, 12.0), rng.uniform(0.1, 0.35)),
    la=(rng.uniform(13.0, 19.0), rng.uniform(11.0, 16.0), rng.uniform(0.05, 0.2)),
    ra=(rng.uniform(11.0, 16.0), rng.uniform(9.0, 13.0), rng.uniform(0.05, 0.2)),
    gap=rng.uniform(3.5, 5.5),
    mv_open=rng.uniform(0.4, 0.7),
  )
  p.update(
    sector_angle=math.radians(rng.uniform(38.0, 42.0)),
    sector_radius=rng.uniform(105.0, 110.0),
    sector_x=SIZE / 2 + rng.uniform(-1.5, 1.5),
    gain=rng.uniform(0.85, 1.2),
    attenuation=rng.uniform(0.2, 0.8),
    tissue=rng.uniform(0.25, 0.38),
    myocardium=rng.uniform(0.6, 0.85),
    blood=rng.uniform(0.03, 0.09),
    speckle_contrast=rng.uniform(0.5, 0.8),
    speckle_drift=rng.uniform(0.03, 0.12),
    patchiness=rng.uniform(0.1, 0.25),
  )
  return p


# ------------------------------------------------------------------------------------ geometry
def _phase(p):
  return (np.arange(p["frames"]) - p["ed_frame"]) * p["hr"] / 60.0 / p["fps"]


def _lv_geometry(p):
  """Per-frame fill fraction, long axis L and ellipse semi-axes (A along, B across), in pixels.

  For a fixed shape (fixed `beta`) every disc volume scales as L*B^2, so V_es/V_ed of the drawn
  cavity, and of its method-of-discs tracings, equals ESV/EDV.
  """
  fill = _fill_fraction(_phase(p), p["es_phase"], p["early"])
  volume_px = (p["esv"] + (p["edv"] - p["esv"]) * fill) / p["scale"] ** 3
  length = p["l_ed"] * (1.0 - p["shortening"] * (1.0 - fill))  # the apex stays, the base moves
  semi_a = length / (1.0 + p["beta"])
  semi_b = np.sqrt(volume_px / (math.pi * semi_a * _truncation(p["beta"])))
  return fill, length, semi_a, semi_b


def _axes(p):
  along = np.array([math.sin(p["tilt"]), math.cos(p["tilt"])])  # apex -> base, downwards
  across = np.array([math.cos(p["tilt"]), -math.sin(p["tilt"])])  # towards the lateral wall
  return np.array(p["apex"]), along, across


def _tracing_rows(p, frame, length, semi_a, semi_b):
  """Long axis, then 20 perpendicular chords with endpoints on the cavity outline."""
  apex, along, across = _axes(p)
  rows = [(*apex, *(apex + length * along), frame)]
  for i in range(NUM_CHORDS):
    u = (i + 0.5) / NUM_CHORDS * length
    half = semi_b * math.sqrt(max(0.0, 1.0 - ((u - semi_a) / semi_a) ** 2))
    centre = apex + u * along
    rows.append((*(centre - half * across), *(centre + half * across), frame))
  return rows


# ----------------------------------------------------------------------------------- rendering
def _fixed(points):
  return np.rint(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _bands(apex, along, across, u_from, u_to, half_width):
  """Fixed-point corners (frames, 4, 2) of rectangles u_from <= u <= u_to, |v| <= half_width."""
  u_from, u_to, half_width = np.broadcast_arrays(u_from, u_to, half_width)
  u = np.stack([u_from, u_from, u_to, u_to], -1)[..., None]
  v = (np.array([-1.0, 1.0, 1.0, -1.0]) * half_width[:, None])[..., None]
  return _fixed(apex + u * along + v * across)


def _ellipses(centres, semi_along, semi_across):
  """Per-frame (centre, axes) in fixed point, as the nested lists cv2.ellipse takes."""
  centres = _fixed(np.broadcast_to(centres, (len(semi_along), 2))).tolist()
  return list(zip(centres, _fixed(np.stack([semi_along, semi_across], 1)).tolist()))


def _shapes(p):
  """What to draw in each frame: (kind, per-frame geometry, value) for wall and blood masks."""
  apex, along, across = _axes(p)
  fill, length, semi_a, semi_b = _lv_geometry(p)
  l_ed, gap, ed = p["l_ed"], p["gap"], int(np.argmax(fill))
  (rv_len, rv_half, rv_amp), (la_len, la_half, la_amp), (ra_len, ra_half, ra_amp) = (
    p["rv"],
    p["la"],
    p["ra"],
  )
  rv_s, la_s, ra_s = 1 - rv_amp * (1 - fill), 1 + la_amp * (1 - fill), 1 + ra_amp * (1 - fill)
  # Wall volume is roughly conserved: the wall thickens as the cavity outline shrinks.
  thickness = p["wall"] * ((length[ed] + semi_b[ed]) / (length + semi_b)) ** 1.3
  base_half = semi_b * math.sqrt(1.0 - p["beta"] ** 2)  # cavity half-width at the mitral plane
  diastole = np.clip((np.mod(_phase(p), 1.0) - p["es_phase"]) / (1 - p["es_phase"]), 0.0, 1.0)
  valve = p["mv_open"] * base_half * np.clip(1.5 * np.sin(np.pi * diastole), 0.0, 1.0) - 1.0
  lv_centre = apex + semi_a[:, None] * along
  rv_v = -(semi_b[ed] + p["wall"] + 3.0 + rv_half)  # just left of the septum
  rv_centre = apex + 0.6 * l_ed * along + rv_v * across
  la_centre = apex + (length + gap + la_len * la_s)[:, None] * along
  ra_centre = apex + (l_ed + gap + ra_len) * along + 0.85 * rv_v * across
  far = np.full_like(length, 2.0 * SIZE)
  open_ = valve > 0  # a closed valve's band is moved out of the picture
  wall = (
    ("ellipse", _ellipses(lv_centre, semi_a + thickness, semi_b + thickness), 255),
    ("poly", _bands(apex, along, across, length + 1.0, far, far), 0),  # open at the base
    # Fibrous mitral annulus and closed leaflets: a bright plane between LV and LA.
    ("poly", _bands(apex, along, across, length, length + gap, base_half + thickness), 255),
    ("ellipse", _ellipses(rv_centre, rv_len * l_ed * rv_s + 2.5, rv_half * rv_s + 2.5), 255),
  )
  blood = (
    ("ellipse", _ellipses(lv_centre, semi_a, semi_b), 255),
    ("poly", _bands(apex, along, across, length, far, far), 0),  # the mitral plane
    (
      "poly",
      _bands(
        apex,
        along,
        across,
        np.where(open_, length - 1.0, far),
        np.where(open_, length + gap + 1.0, far),
        valve,
      ),
      255,
    ),
    ("ellipse", _ellipses(la_centre, la_len * la_s, la_half * la_s), 255),
    ("ellipse", _ellipses(rv_centre, rv_len * l_ed * rv_s, rv_half * rv_s), 255),
    ("ellipse", _ellipses(ra_centre, ra_len * ra_s, ra_half * ra_s), 255),
  )
  return wall, blood


def _static_gain(p, rng):
  """Sector mask x depth attenuation x gain x patchy echogenicity: fixed for the whole clip."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  dx, dy = xx - p["sector_x"], yy + 1.0
  radius = np.sqrt(dx * dx + dy * dy)
  sector = np.clip(p["sector_radius"] - radius, 0, 1) * np.clip(
    (p["sector_angle"] - np.abs(np.arctan2(dx, dy))) * radius, 0, 1
  )
  patches = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 10.0)
  patches = np.clip(1.0 + p["patchiness"] * patches / patches.std(), 0.4, 1.6)
  gain = sector * np.exp(-p["attenuation"] * radius / 100.0) * patches * (p["gain"] * 255.0)
  return gain.astype(np.float32)


def render(p, rng):
  """Renders one video as uint8 (frames, 112, 112).

  Outlines are drawn with OpenCV's anti-aliased fixed-point fills (exact to ~0.05 px, far faster
  than distance fields in numpy) and softened; frames are composed one at a time so the 112x112
  temporaries stay in cache.
  """
  angle = 90.0 - math.degrees(p["tilt"])  # cv2's ellipse angle of the long axis, clockwise from x
  shapes = _shapes(p)
  gain = _static_gain(p, rng)
  # Speckle: |complex Gaussian| (Rayleigh), smoothed wider laterally as in ultrasound; rotating
  # between two independent fields keeps its statistics while decorrelating slowly over time.
  fields = [
    cv2.GaussianBlur(
      rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigmaX=1.1, sigmaY=0.7
    )
    for _ in range(4)
  ]
  mix = p["speckle_contrast"] / math.sqrt(np.mean([f.var() for f in fields]) * math.pi / 2.0)
  drift = np.cumsum(rng.normal(0.0, p["speckle_drift"], p["frames"]))
  video = np.empty((p["frames"], SIZE, SIZE), np.uint8)
  masks = np.empty((2, SIZE, SIZE), np.uint8)
  for n in range(p["frames"]):
    for mask, mask_shapes in zip(masks, shapes):
      mask[:] = 0
      for kind, geometry, value in mask_shapes:
        if kind == "ellipse":
          cv2.ellipse(mask, *geometry[n], angle, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)
        else:
          cv2.fillConvexPoly(mask, geometry[n], value, cv2.LINE_AA, _SHIFT)
    wall, blood = (cv2.GaussianBlur(mask, (3, 3), 0.6) for mask in masks)
    c, s = math.cos(drift[n]), math.sin(drift[n])
    speckle = cv2.magnitude(
      cv2.addWeighted(fields[0], c, fields[1], s, 0.0),
      cv2.addWeighted(fields[2], c, fields[3], s, 0.0),
    )
    speckle *= mix  # mean 1 x contrast ...
    speckle += 1.0 - p["speckle_contrast"]  # ... on a constant floor
    image = np.multiply(wall, (p["myocardium"] - p["tissue"]) / 255.0, dtype=np.float32)
    image += p["tissue"]
    image += (p["blood"] - image) * np.multiply(blood, 1.0 / 255.0, dtype=np.float32)
    image *= speckle
    image *= gain
    video[n] = cv2.convertScaleAbs(image)  # saturating cast to uint8
  return video


def _make_video(job):
  """Pool worker: samples, renders and writes one video; returns its parameters and tracings."""
  index, seed, min_frames, max_frames, videos_dir = job
  cv2.setNumThreads(1)  # the pool already uses every core
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
  p = _sample_video(rng, min_frames, max_frames)
  frames = render(p, rng)
  path = os.path.join(videos_dir, p["name"] + ".avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), float(p["fps"]), (SIZE, SIZE))
  if not writer.isOpened():
    raise RuntimeError(f"cv2.VideoWriter could not open {path}")
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
  writer.release()
  tracings = []
  if p["traced"]:
    fill, length, semi_a, semi_b = _lv_geometry(p)
    for n in (int(np.argmin(fill)), int(np.argmax(fill))):  # ES first, then ED, as released
      tracings += _tracing_rows(p, n, length[n], semi_a[n], semi_b[n])
  return p, tracings


# ------------------------------------------------------------------------------------- dataset
def assign_splits(num_videos, seed):
  """TRAIN/VAL/TEST per video in the real dataset's proportions, every split non-empty."""
  total = sum(ECHONET_SPLIT_SIZES.values())
  val = max(1, round(num_videos * ECHONET_SPLIT_SIZES["val"] / total))
  test = max(1, round(num_videos * ECHONET_SPLIT_SIZES["test"] / total))
  labels = np.array(["TRAIN"] * (num_videos - val - test) + ["VAL"] * val + ["TEST"] * test)
  rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, 0)))
  return labels[rng.permutation(num_videos)].tolist()


def _check_args(num_videos, min_frames, max_frames, workers):
  if num_videos < 3:
    raise ConfigError(f"num_videos must be >= 3 (one video per split), got {num_videos}")
  if min_frames < 1:
    raise ConfigError(f"min_frames must be >= 1, got {min_frames}")
  if max_frames < min_frames:
    raise ConfigError(f"max_frames ({max_frames}) must be >= min_frames ({min_frames})")
  if workers < 0:
    raise ConfigError(f"workers must be >= 0 (0 = one per CPU), got {workers}")


def _pool_context():
  # Forking a process whose JAX/TensorFlow/PyTorch runtimes hold threads and locks can hang the
  # children: spawn clean interpreters then, and take the cheap fork otherwise.
  threaded = any(name in sys.modules for name in ("jax", "tensorflow", "torch"))
  return multiprocessing.get_context(
    "fork" if sys.platform.startswith("linux") and not threaded else "spawn"
  )


def _write_csvs(folder, results, splits):
  with open(folder / "FileList.csv", "w", newline="") as f:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(echonet.FILE_LIST_HEADER)
    for (p, _), split in zip(results, splits):
      out.writerow(
        [
          p["name"],
          f"{p['ef']:.5f}",
          f"{p['esv']:.5f}",
          f"{p['edv']:.5f}",
          SIZE,
          SIZE,
          p["fps"],
          p["frames"],
          split,
        ]
      )
  with open(folder / "VolumeTracings.csv", "w", newline="") as f:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(echonet.TRACINGS_HEADER)
    for p, rows in results:
      for *points, frame in rows:
        out.writerow([p["name"] + ".avi", *(f"{x:.4f}" for x in points), frame])


def generate(
  out_dir,
  num_videos: int,
  seed: int,
  *,
  min_frames: int = 20,
  max_frames: int = 160,
  workers: int = 0,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a synthetic EchoNet-Dynamic dataset to `out_dir`, atomically.

  Args:
    out_dir: destination folder; built in the sibling `<out_dir>.tmp-<pid>`, then renamed.
    num_videos: number of videos (>= 3, so that every split is non-empty).
    seed: master seed; video i depends only on (seed, i), never on `workers` or `num_videos`.
    min_frames: shortest video, in frames.
    max_frames: longest video, in frames.
    workers: processes rendering videos; 0 means `os.cpu_count()`.
    overwrite: replace a non-empty `out_dir` instead of raising.

  Returns:
    The dataset root, as a `pathlib.Path`.

  Raises:
    ConfigError (a ValueError): on invalid arguments.
    FileExistsError: if `out_dir` exists, is not empty and `overwrite` is False.
  """
  _check_args(num_videos, min_frames, max_frames, workers)
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
    raise FileExistsError(f"output directory {out_dir} exists and is not empty (use overwrite)")
  tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    (tmp / "Videos").mkdir(parents=True)
    jobs = [(i, seed, min_frames, max_frames, str(tmp / "Videos")) for i in range(num_videos)]
    workers = min(workers or os.cpu_count() or 1, num_videos)
    if workers == 1:
      results = [_make_video(job) for job in jobs]
    else:
      with _pool_context().Pool(workers) as pool:
        results = pool.map(_make_video, jobs, chunksize=max(1, num_videos // (8 * workers)))
    if len({p["name"] for p, _ in results}) != num_videos:  # 64 random bits: never in practice
      raise RuntimeError(f"duplicate FileName drawn with seed {seed}; choose another seed")
    _write_csvs(tmp, results, assign_splits(num_videos, seed))
    marker = dict(
      generator=VERSION,
      num_videos=num_videos,
      seed=seed,
      min_frames=min_frames,
      max_frames=max_frames,
    )
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # last: marks it complete
    if overwrite and (out_dir.exists() or out_dir.is_symlink()):
      old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
      os.replace(out_dir, old)
      os.replace(tmp, out_dir)
      shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    else:
      os.rename(tmp, out_dir)  # fails, rather than clobbers, if a folder appeared meanwhile
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def summarize(out_dir) -> str:
  """One line describing a dataset: videos per split and the EF distribution."""
  with open(pathlib.Path(out_dir) / "FileList.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  ef = np.array([float(row["EF"]) for row in rows])
  labels = [split.upper() for split in SPLITS]  # as FileList.csv spells them
  splits = ", ".join(f"{label} {sum(row['Split'] == label for row in rows)}" for label in labels)
  return (
    f"{len(rows)} videos ({splits}), "
    f"EF {ef.mean():.1f} +/- {ef.std():.1f} [{ef.min():.1f}, {ef.max():.1f}]"
  )


def _main(argv):
  del argv
  flag, start = flags.FLAGS, time.time()
  try:
    root = generate(
      flag.out,
      flag.num_videos,
      flag.seed,
      min_frames=flag.min_frames,
      max_frames=flag.max_frames,
      workers=flag.workers,
      overwrite=flag.overwrite,
    )
  except (ValueError, FileExistsError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(f"{root}: {summarize(root)}, {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module (e.g. from another
  # absl program with its own --seed) never clashes.
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("out", None, "Output dataset directory.", required=True)
  flags.DEFINE_integer("num_videos", 200, "Number of videos (>= 3).")
  flags.DEFINE_integer("seed", 0, "Master random seed.")
  flags.DEFINE_integer("min_frames", 20, "Shortest video, in frames.")
  flags.DEFINE_integer("max_frames", 160, "Longest video, in frames.")
  flags.DEFINE_integer("workers", 0, "Worker processes; 0 = os.cpu_count().")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")
  app.run(_main)
