"""The paper's benchmark as named experiments: one entry per printed result row of Tables 1-9,
then the models past the paper.

Each experiment is a family config (``configs/<family>.py`` with its arguments) plus the
few training settings the paper gives for that row; the family configs already carry each
family's learning rate, batch size, dropout, clipping and regularisation. A row that repeats
the run of an earlier table is an alias of that run: one run, one directory.

Names are ``tableN/<row>`` for the paper's rows (47 rows, 42 distinct runs) and
``echonet/<model>_<frames>_<period>`` for EchoNet-Dynamic's video ResNets (Ouyang et al.,
Nature 2020; ``configs/r2plus1d.py``), trained with EchoNet-Dynamic's own recipe: 50 names,
45 runs in all.

  python launch.py --list_experiments
  python launch.py --experiment=table3/B2 --workdir=runs/paper/table3/B2 \
      --config.data.root=/path/to/EchoNet-Dynamic
  python -m lvef_jax.sweep --root=runs/paper --config.data.root=/path/to/EchoNet-Dynamic

Two recipes (``--recipe``) for the paper's rows:
  paper:    what the paper did: the first clip of each video (frames 0..27), no augmentation,
            Keras BatchNorm averages (momentum 0.99) without recalibration.
  improved: this project's defaults: a random clip start and EchoNet-Dynamic's pad-and-crop
            augmentation in training, BatchNorm averages recalibrated after each epoch, and
            the final results averaged over every clip of each video.

The ``echonet/`` experiments keep their family config's recipe, EchoNet-Dynamic's, under
either ``--recipe`` (``Experiment.takes_recipe``): 32-frame clips every 2nd frame from a random
start, pad-12 crops, SGD, PyTorch's BatchNorm averages, every clip (one frame apart) of each
video averaged. A sweep of each recipe trains them alike; ``--filter=^table`` leaves them out of
the second.

Adding a row is one line in ``EXPERIMENTS`` (and its paper values in
``lvef_jax/reporting/paper_results.csv``, if it has any). ``COMPARISONS`` lists the pairs of
rows the paper compares; the report tests each against the spread over seeds.
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections

from lvef_jax.config_base import load_config
from lvef_jax.errors import ConfigError

RECIPES = ("paper", "improved")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One run of the benchmark.

  Attributes:
    name: ``tableN/<row>``, the paper's row label, or ``echonet/<model>`` past the paper.
    family: the config file ``configs/<family>.py``.
    arg: its argument (``key=value,...``).
    label: the row as the paper (or the report's block past the paper) prints it.
    train: training settings the paper gives for this row beyond the family's defaults.
    takes_recipe: whether ``--recipe`` applies (`apply_recipe`); False: the family config's own
      recipe whatever ``--recipe`` says (the ``echonet/`` rows: EchoNet-Dynamic's).
  """

  name: str
  family: str
  arg: str
  label: str
  train: tuple[tuple[str, object], ...] = ()
  takes_recipe: bool = True

  @property
  def group(self) -> str:
    """The part of the name before ``/``: ``tableN``, or ``echonet``."""
    return self.name.partition("/")[0]


def _experiment(name, family, arg, label, *, takes_recipe=True, **train):
  """One row of `EXPERIMENTS`; ``train`` is sorted so that equal settings compare equal."""
  return Experiment(name, family, arg, label, tuple(sorted(train.items())), takes_recipe)


# The paper runs "selected I3D variants" at batch 4 and "the remaining I3D models" at batch 2
# without saying which; this project's reading: the two deeper bodies (IM3+IM4, I3D-original)
# at 2, the rest at 4 (configs/i3d.py's default).
_DEEP = dict(batch_size=2)

EXPERIMENTS: tuple[Experiment, ...] = (
  # Table 1: which Inception stages follow the stem (conv2 1x1x1, BatchNorm, head A).
  _experiment("table1/stem", "i3d", "variant=stem", "Stem"),
  _experiment("table1/mini", "i3d", "variant=mini", "Stem + IM3 (I3D-mini)"),
  _experiment("table1/stem_im3_im4", "i3d", "variant=stem_im3_im4", "Stem + IM3 + IM4", **_DEEP),
  _experiment(
    "table1/original", "i3d", "variant=original", "Stem + IM3 + IM4 + IM5 (I3D-original)", **_DEEP
  ),
  # Table 2: regression heads of I3D-mini.
  _experiment("table2/OG", "i3d", "variant=mini,head=og", "Dropout + Flatten + Dense (OG)"),
  _experiment("table2/B", "i3d", "variant=mini,head=b", "Dropout + 1x1x1 Conv + GAP (B)"),
  _experiment("table2/C", "i3d", "variant=mini,head=c", "GAP + Dense + Dropout + Dense (C)"),
  # Table 3: conv2 kernels of I3D-mini.
  _experiment("table3/B2", "i3d", "variant=mini,conv2=3x3x3", "3x3x3 (B2)"),
  _experiment("table3/B3", "i3d", "variant=mini,conv2=3x1x1", "3x1x1 (B3)"),
  _experiment("table3/B4", "i3d", "variant=mini,conv2=2x3x3x3", "2 3x3x3 (B4)"),
  # Table 4: norm x conv2 for I3D-original and I3D-mini.
  _experiment(
    "table4/original-L1", "i3d", "variant=original,norm=layer", "LayerNorm (L1)", **_DEEP
  ),
  _experiment(
    "table4/original-B2",
    "i3d",
    "variant=original,conv2=3x3x3",
    "3x3x3 Conv2 + BatchNorm (B2)",
    **_DEEP,
  ),
  _experiment(
    "table4/original-L2",
    "i3d",
    "variant=original,conv2=3x3x3,norm=layer",
    "3x3x3 Conv2 + LayerNorm (L2)",
    **_DEEP,
  ),
  _experiment("table4/mini-L1", "i3d", "variant=mini,norm=layer", "LayerNorm (L1)"),
  _experiment(
    "table4/mini-L2", "i3d", "variant=mini,conv2=3x3x3,norm=layer", "3x3x3 Conv2 + LayerNorm (L2)"
  ),
  # Table 5: Two-Stream.
  _experiment("table5/B1", "two_stream", "norm=batch", "BatchNorm (B1)"),
  _experiment("table5/L1", "two_stream", "norm=layer", "LayerNorm (L1)"),
  # Table 6: New Combination, Dual Input and Single Input, norm x conv2.
  *(
    _experiment(
      f"table6/{short}-{norm[0].upper()}{number}",
      "fusion",
      f"kind={kind},norm={norm},conv2={conv2}",
      label,
    )
    for short, kind in (("NC", "new_combination"), ("DI", "dual_input"), ("SI", "single_input"))
    for number, conv2, norm, label in (
      (1, "1x1x1", "batch", "BatchNorm (B1)"),
      (1, "1x1x1", "layer", "LayerNorm (L1)"),
      (2, "3x3x3", "batch", "3x3x3 Conv2 + BatchNorm (B2)"),
      (2, "3x3x3", "layer", "3x3x3 Conv2 + LayerNorm (L2)"),
    )
  ),
  # Table 7: Combination and Dual Input Truncated (its LayerNorm row is printed "-").
  _experiment("table7/Comb-B1", "fusion", "kind=combination,norm=batch", "BatchNorm (B1)"),
  _experiment("table7/Comb-L1", "fusion", "kind=combination,norm=layer", "LayerNorm (L1)"),
  _experiment("table7/DIT-B1", "fusion", "kind=dual_input_truncated,norm=batch", "BatchNorm (B1)"),
  # Table 8: InceptionV3 + GRU; what T(O)-a/b(5)/b(7) unfreeze is this project's reading
  # (docs/models.md). Pass the ImageNet weights with --config.model.backbone_weights=FILE.
  _experiment(
    "table8/CNN_RNN-1", "cnn_rnn", "backbone=inception_v3,train_backbone=frozen", "CNN_RNN-1"
  ),
  _experiment(
    "table8/TO-a", "cnn_rnn", "backbone=inception_v3,train_backbone=all", "CNN_RNN T(O)-a"
  ),
  _experiment(
    "table8/TO-b5", "cnn_rnn", "backbone=inception_v3,train_backbone=last5", "CNN_RNN T(O)-b(5)"
  ),
  _experiment(
    "table8/TO-b7", "cnn_rnn", "backbone=inception_v3,train_backbone=last7", "CNN_RNN T(O)-b(7)"
  ),
  # Table 9: scratch 2-D I3D-mini + GRU or LSTM, norms.
  *(
    _experiment(
      f"table9/{rnn.upper()}-{short}",
      "cnn_rnn",
      f"backbone=i3d_mini_2d,rnn={rnn},norm={norm}",
      label,
    )
    for rnn in ("gru", "lstm")
    for short, norm, label in (
      ("B1", "batch", "BatchNorm (B1)"),
      ("L1", "layer", "LayerNorm (L1)"),
      ("Mixed1", "mixed", "MixedNorm (Mixed1)"),
    )
  ),
  # Past the paper: EchoNet-Dynamic's video ResNets, 32 frames every 2nd, trained as
  # EchoNet-Dynamic trained them (configs/r2plus1d.py); the report's block beside its figures.
  *(
    _experiment(
      f"echonet/{model}_32_2",
      "r2plus1d",
      f"arch={arch}",
      f"{label}, EchoNet-Dynamic's recipe",
      takes_recipe=False,
    )
    for model, arch, label in (
      ("r2plus1d", "r2plus1d_18", "R(2+1)D-18"),
      ("r3d", "r3d_18", "R3D-18"),
      ("mc3", "mc3_18", "MC3-18"),
    )
  ),
)

# Rows that print the result of a run listed above.
ALIASES: dict[str, str] = {
  "table2/A": "table1/mini",
  "table3/B1": "table1/mini",
  "table4/mini-B1": "table1/mini",
  "table4/original-B1": "table1/original",
  "table4/mini-B2": "table3/B2",
}

_BY_NAME = {experiment.name: experiment for experiment in EXPERIMENTS}


@dataclasses.dataclass(frozen=True)
class PairedComparison:
  """A comparison the paper draws between two rows: does ``a`` or ``b`` have the lower test RMSE?

  Attributes:
    topic: what the pair varies, as the report's table groups it.
    context: what the two rows share (the family, the other settings).
    a, b: experiment names (aliases allowed: the row as the paper prints it); the report shows
      the test RMSE difference ``a - b``.
  """

  topic: str
  context: str
  a: str
  b: str


_CONV2 = "Conv2 1x1x1 vs 3x3x3"
_NORM = "BatchNorm vs LayerNorm"
_HEADS = "Regression heads"
_DEPTH = "I3D-original vs I3D-mini"
_FUSION = "Fusion kinds"
_RNN = "GRU vs LSTM"

# The paper's comparisons, in the report's order: one entry per pair of rows it sets side by
# side. Adding one is one line here; the paper's difference comes from paper_results.csv.
COMPARISONS: tuple[PairedComparison, ...] = (
  PairedComparison(_CONV2, "I3D-mini, BatchNorm", "table3/B1", "table3/B2"),
  PairedComparison(_CONV2, "I3D-mini, LayerNorm", "table4/mini-L1", "table4/mini-L2"),
  PairedComparison(_CONV2, "I3D-original, BatchNorm", "table4/original-B1", "table4/original-B2"),
  PairedComparison(_CONV2, "Fusion New Combination, BatchNorm", "table6/NC-B1", "table6/NC-B2"),
  PairedComparison(_CONV2, "Fusion Dual Input, BatchNorm", "table6/DI-B1", "table6/DI-B2"),
  PairedComparison(_CONV2, "Fusion Single Input, BatchNorm", "table6/SI-B1", "table6/SI-B2"),
  PairedComparison(_NORM, "I3D-mini", "table4/mini-B1", "table4/mini-L1"),
  PairedComparison(_NORM, "I3D-mini, conv2 3x3x3", "table4/mini-B2", "table4/mini-L2"),
  PairedComparison(_NORM, "I3D-original", "table4/original-B1", "table4/original-L1"),
  PairedComparison(_NORM, "Two-Stream", "table5/B1", "table5/L1"),
  PairedComparison(_NORM, "Fusion New Combination", "table6/NC-B1", "table6/NC-L1"),
  PairedComparison(_NORM, "Fusion Dual Input", "table6/DI-B1", "table6/DI-L1"),
  PairedComparison(_NORM, "Fusion Single Input", "table6/SI-B1", "table6/SI-L1"),
  PairedComparison(_NORM, "Fusion Combination", "table7/Comb-B1", "table7/Comb-L1"),
  PairedComparison(_NORM, "CNN-RNN GRU", "table9/GRU-B1", "table9/GRU-L1"),
  PairedComparison(_NORM, "CNN-RNN LSTM", "table9/LSTM-B1", "table9/LSTM-L1"),
  PairedComparison(_HEADS, "I3D-mini, head A vs OG", "table2/A", "table2/OG"),
  PairedComparison(_HEADS, "I3D-mini, head A vs B", "table2/A", "table2/B"),
  PairedComparison(_HEADS, "I3D-mini, head A vs C", "table2/A", "table2/C"),
  PairedComparison(_HEADS, "I3D-mini, head B vs C", "table2/B", "table2/C"),
  PairedComparison(_DEPTH, "conv2 1x1x1, BatchNorm", "table1/original", "table1/mini"),
  PairedComparison(_DEPTH, "conv2 3x3x3, BatchNorm", "table4/original-B2", "table4/mini-B2"),
  PairedComparison(
    _FUSION, "Single Input vs Dual Input, BatchNorm", "table6/SI-B1", "table6/DI-B1"
  ),
  PairedComparison(
    _FUSION, "Single Input vs New Combination, BatchNorm", "table6/SI-B1", "table6/NC-B1"
  ),
  PairedComparison(
    _FUSION, "Dual Input vs New Combination, BatchNorm", "table6/DI-B1", "table6/NC-B1"
  ),
  PairedComparison(
    _FUSION, "New Combination vs Combination, BatchNorm", "table6/NC-B1", "table7/Comb-B1"
  ),
  PairedComparison(
    _FUSION, "Dual Input vs Dual Input Truncated, BatchNorm", "table6/DI-B1", "table7/DIT-B1"
  ),
  PairedComparison(_RNN, "2-D I3D-mini, BatchNorm", "table9/GRU-B1", "table9/LSTM-B1"),
  PairedComparison(_RNN, "2-D I3D-mini, LayerNorm", "table9/GRU-L1", "table9/LSTM-L1"),
  PairedComparison(_RNN, "2-D I3D-mini, MixedNorm", "table9/GRU-Mixed1", "table9/LSTM-Mixed1"),
)


def names(include_aliases: bool = True) -> list[str]:
  """Every experiment name (aliases included unless asked otherwise), in table order: the
  paper's Tables 1-9, then the groups past the paper (``echonet/``) in registry order."""
  all_names = [experiment.name for experiment in EXPERIMENTS]
  all_names += list(ALIASES) if include_aliases else []
  return sorted(all_names, key=_table_order)


def in_paper(name: str) -> bool:
  """Whether ``name`` (an experiment or an alias) is a row of the paper's Tables 1-9."""
  return re.fullmatch(r"table\d+", name.partition("/")[0]) is not None


def _table_order(name: str) -> tuple[int, int, int]:
  """(0, table, row) for the paper's rows; (1, group, row) after them for the others, each
  group at its first row's place in `EXPERIMENTS`. An alias sorts in its own table at its
  run's row."""
  rows = [experiment.name for experiment in EXPERIMENTS]
  order = {row: position for position, row in enumerate(rows)}
  row = order.get(name, order.get(ALIASES.get(name, ""), 0))
  group = name.partition("/")[0]
  if in_paper(name):
    return 0, int(group.removeprefix("table")), row
  groups = list(dict.fromkeys(other.partition("/")[0] for other in rows))
  return 1, groups.index(group) if group in groups else len(groups), row


def canonical(name: str) -> str:
  """The run that ``name`` reports (itself unless it is an alias); unknown names are an error."""
  name = ALIASES.get(name, name)
  if name not in _BY_NAME:
    raise ConfigError(
      f"no experiment {name!r}; `python launch.py --list_experiments` prints the names"
    )
  return name


def get(name: str) -> Experiment:
  return _BY_NAME[canonical(name)]


def apply_recipe(config: ml_collections.ConfigDict, recipe: str) -> None:
  """Sets the data and BatchNorm settings of ``recipe`` (see the module docstring)."""
  if recipe == "paper":
    config.data.train_clip_start = "first"
    config.data.augment_pad = 0
    config.train.bn_recalibration_batches = 0
  elif recipe == "improved":
    config.eval.clips = "all"  # results.json averages every clip of each video
  else:
    raise ConfigError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
  """Shrinks a run to seconds on a 2-core CPU: a smoke test of the whole pipeline, no result.

  Synthetic data (whatever ``data.root`` says), 8-frame 32x32 clips (80x80 for InceptionV3,
  which needs 75), two epochs of two steps of 8 clips; all-clips evaluation with clips that
  follow each other (``eval.clip_stride=0``: a few a video, not one a frame).
  """
  inception = config.model.get("backbone") == "inception_v3"
  config.data.update(
    root="",
    synthetic_num_videos=48,
    synthetic_min_frames=16,
    synthetic_max_frames=40,
    clip_frames=8,
    period=2,
    image_size=80 if inception else 32,
    augment_pad=min(config.data.augment_pad, 3),
    cache_in_memory=True,
  )
  config.train.update(
    batch_size=8,
    num_epochs=2,
    steps_per_epoch=2,
    lr_decay_epochs=1,
    early_stopping_patience=2,
    bn_recalibration_batches=min(config.train.bn_recalibration_batches, 2),
    log_every_steps=1,
  )
  config.eval.update(batch_size=8, clip_stride=0)


def get_config(name: str, recipe: str = "paper", runlocal: bool = False):
  """The full config of experiment ``name`` (an alias gives its run's config)."""
  experiment = get(name)
  config = load_config(experiment.family, experiment.arg)
  config.train.update(dict(experiment.train))
  if recipe not in RECIPES:
    raise ConfigError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
  if experiment.takes_recipe:
    apply_recipe(config, recipe)
  if runlocal:
    apply_runlocal(config)
  config.experiment = ml_collections.ConfigDict(
    dict(name=experiment.name, recipe=recipe, runlocal=bool(runlocal))
  )
  return config
