"""The dataset formats ``data.format`` names, and the settings they share.

``echonet`` is EchoNet-Dynamic's layout (`lvef_jax.data.echonet`), ``echonet_pediatric``
EchoNet-Pediatric's (`lvef_jax.data.pediatric`), ``camus`` the CAMUS half cycles in NIfTI or
MetaImage (`lvef_jax.data.camus`). Each reader returns the same `echonet.VideoRecord`s, so one
prepared copy (`preparation`, `tfds_builder`) and one evaluation serve them all.

EchoNet-Pediatric numbers its videos' folds 0-9, and CAMUS's patients are put in folds 0-9 by
number (patients 1-50 fold 0, ..., 451-500 fold 9: the challenge's test patients);
``data.val_folds`` and ``data.test_folds`` name which folds are the val and test splits, the
rest is train. Only numpy here: the readers run where TensorFlow prepares the data.
"""

from __future__ import annotations

import dataclasses

from lvef_jax.errors import ConfigError

ECHONET, PEDIATRIC, CAMUS = "echonet", "echonet_pediatric", "camus"
FORMATS = (ECHONET, PEDIATRIC, CAMUS)
NAMES = {ECHONET: "EchoNet-Dynamic", PEDIATRIC: "EchoNet-Pediatric", CAMUS: "CAMUS"}
NUM_FOLDS = 10
CAMUS_VIEWS = ("4CH", "2CH", "both")
# How a CAMUS half cycle (end-diastole to end-systole) becomes a video (docs/external.md):
# "mirror" plays it forward then backward (ED, ES, ED; the rest of a clip is zero frames, as
# for a short video in training); "loop" the same over and over, to at least one clip's
# length; "once" forward only.
HALF_CYCLES = ("mirror", "loop", "once")


def parse_folds(text: str, what: str) -> tuple[int, ...]:
  """``"8"`` or ``"7,8"`` -> (7, 8); "" -> ().

  Raises:
    ConfigError: a part that is not a whole number 0-9.
  """
  folds = []
  for part in str(text).replace(" ", "").split(","):
    if not part:
      continue
    if not part.isdigit() or int(part) >= NUM_FOLDS:
      raise ConfigError(
        f"{what}={text!r}: expected fold numbers 0-{NUM_FOLDS - 1}, e.g. '8' or '7,8'"
      )
    folds.append(int(part))
  return tuple(sorted(set(folds)))


@dataclasses.dataclass(frozen=True)
class FormatSettings:
  """``data.format`` and the keys its readers use, read and checked in one place."""

  format: str
  val_folds: tuple[int, ...]
  test_folds: tuple[int, ...]
  camus_view: str
  half_cycle: str
  typical_fps: float
  image_size: int
  clip_frames: int
  period: int

  @classmethod
  def from_cfg(cls, data_cfg) -> "FormatSettings":
    get = data_cfg.get
    settings = cls(
      format=str(get("format", ECHONET)),
      val_folds=parse_folds(get("val_folds", "8"), "data.val_folds"),
      test_folds=parse_folds(get("test_folds", "9"), "data.test_folds"),
      camus_view=str(get("camus_view", "4CH")),
      half_cycle=str(get("half_cycle", "mirror")),
      typical_fps=float(get("typical_fps", 50.0)),
      image_size=int(data_cfg["image_size"]),
      clip_frames=int(data_cfg["clip_frames"]),
      period=int(data_cfg["period"]),
    )
    if settings.format not in FORMATS:
      raise ConfigError(f"data.format={settings.format!r}: expected one of {', '.join(FORMATS)}")
    if settings.camus_view not in CAMUS_VIEWS:
      raise ConfigError(
        f"data.camus_view={settings.camus_view!r}: expected one of {', '.join(CAMUS_VIEWS)}"
      )
    if settings.half_cycle not in HALF_CYCLES:
      raise ConfigError(
        f"data.half_cycle={settings.half_cycle!r}: expected one of {', '.join(HALF_CYCLES)}"
      )
    if settings.format != ECHONET:
      both = set(settings.val_folds) & set(settings.test_folds)
      if both:
        raise ConfigError(
          f"data.val_folds={get('val_folds')!r} and data.test_folds={get('test_folds')!r} "
          f"share fold(s) {sorted(both)}: a video would be in two splits"
        )
      if not settings.val_folds or not settings.test_folds:
        raise ConfigError("data.val_folds and data.test_folds must each name at least one fold")
      if len(settings.val_folds) + len(settings.test_folds) >= NUM_FOLDS:
        raise ConfigError("data.val_folds and data.test_folds leave no fold for training")
    return settings

  @property
  def name(self) -> str:
    """The dataset's name, for messages: "CAMUS", ..."""
    return NAMES[self.format]

  def split_of_fold(self, fold: int) -> str:
    if fold in self.test_folds:
      return "test"
    return "val" if fold in self.val_folds else "train"

  def identity(self) -> dict:
    """What a prepared copy depends on besides its folder's content: part of its folder's name,
    so that copies with other splits or another clip construction never mix. {} for EchoNet-
    Dynamic, whose copies keep the names they always had."""
    if self.format == ECHONET:
      return {}
    out = {"format": self.format, "val_folds": self.val_folds, "test_folds": self.test_folds}
    if self.format == CAMUS:
      out.update(
        camus_view=self.camus_view,
        half_cycle=self.half_cycle,
        typical_fps=self.typical_fps,
        image_size=self.image_size,
        clip_span=self.clip_frames * self.period,
      )
    return out


def load_index(root, data_cfg, *, skipped: dict[str, str] | None = None):
  """The validated `echonet.VideoRecord`s of ``root`` in the configured format.

  Raises:
    echonet.EchoNetFormatError: every problem of the folder, listed.
  """
  from lvef_jax.data import camus, echonet, pediatric

  settings = FormatSettings.from_cfg(data_cfg)
  if settings.format == PEDIATRIC:
    return pediatric.load_dataset_index(root, settings, skipped=skipped)
  if settings.format == CAMUS:
    return camus.load_dataset_index(root, settings)
  return echonet.load_dataset_index(root, skipped=skipped)
