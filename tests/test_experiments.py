"""The benchmark registry: every printed row of Tables 1-9 is a named, buildable experiment, and
EchoNet-Dynamic's models past the paper too."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lvef_jax import experiments
from lvef_jax.reporting import summary
from tests.conftest import ROOT, shrink


ECHONET = ["echonet/r2plus1d_32_2", "echonet/r3d_32_2", "echonet/mc3_32_2"]


def test_every_printed_row_is_listed_once_with_its_repeats_as_aliases():
  names = experiments.names()
  assert len(names) == len(set(names)) == 50
  paper = [name for name in names if experiments.in_paper(name)]
  assert len(paper) == 47  # the result rows of Tables 1-9
  assert len(experiments.names(include_aliases=False)) == 45  # distinct runs
  assert len([n for n in experiments.names(include_aliases=False) if n in paper]) == 42
  for alias, run in experiments.ALIASES.items():
    assert alias not in experiments.names(include_aliases=False)
    assert run in experiments.names(include_aliases=False)
    assert experiments.canonical(alias) == run
  assert names[:4] == ["table1/stem", "table1/mini", "table1/stem_im3_im4", "table1/original"]
  # The paper's rows in table order (an alias in its own table), then EchoNet-Dynamic's models.
  assert names[:47] == paper and paper[-1] == "table9/LSTM-Mixed1"
  assert names.index("table2/A") < names.index("table2/OG") < names.index("table3/B1")
  assert names[47:] == ECHONET == experiments.names(include_aliases=False)[42:]
  assert not any(experiments.in_paper(name) for name in ECHONET)
  assert {experiments.get(name).group for name in ECHONET} == {"echonet"}
  labels = [experiments.get(name).label for name in ECHONET]
  assert labels[0] == "R(2+1)D-18, EchoNet-Dynamic's recipe"
  assert [experiments.get(name).arg for name in ECHONET] == [
    "arch=r2plus1d_18",
    "arch=r3d_18",
    "arch=mc3_18",
  ]
  with pytest.raises(experiments.ConfigError, match="no experiment 'table3/B9'"):
    experiments.canonical("table3/B9")


@pytest.mark.slow
def test_list_experiments_prints_one_name_per_line():
  done = subprocess.run(
    [sys.executable, "launch.py", "--list_experiments"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.split("\n") == [*experiments.names(), ""]


def test_every_experiment_builds_its_model_at_the_paper_shape():
  counts = {}
  for name in experiments.names():
    config = experiments.get_config(name)
    shape = (config.data.clip_frames, config.data.period, config.data.image_size)
    assert shape == ((28, 1, 112) if experiments.in_paper(name) else (32, 2, 112)), name
    table = summary.parameter_table(config)
    counts[name] = int(table.splitlines()[-1].removeprefix("trainable_params: "))
  for alias, run in experiments.ALIASES.items():
    assert counts[alias] == counts[run]
  # A few counts documented in docs/models.md.
  assert counts["table1/mini"] == 1_536_001
  assert counts["table1/original"] == 13_919_617
  assert counts["table3/B2"] == 1_855_489
  assert counts["table5/L1"] == 86_710_403
  assert counts["table8/CNN_RNN-1"] == 99_873  # the InceptionV3 backbone frozen
  assert counts["table8/TO-a"] > counts["table8/TO-b7"] > counts["table8/TO-b5"] > 99_873
  # torchvision's video ResNets with one output in place of the 400 classes.
  assert counts["echonet/r2plus1d_32_2"] == 31_505_325 - 400 * 512 - 400 + 513
  assert counts["echonet/r3d_32_2"] == 33_371_472 - 400 * 512 - 400 + 513
  assert counts["echonet/mc3_32_2"] == 11_695_440 - 400 * 512 - 400 + 513


@pytest.mark.slow
def test_experiment_flag_builds_the_same_config_as_the_registry():
  done = subprocess.run(
    [
      sys.executable,
      "launch.py",
      "--experiment=table4/mini-B2",
      "--mode=summary",
      "--config.train.batch_size=8",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().endswith("trainable_params: 1855489")
  assert "conv2=3x3x3" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
  "argv,message",
  [
    (["--experiment=table3/B9"], "no experiment 'table3/B9'"),
    (["--experiment=table3/B2", "--recipe=fancy"], "recipe"),
    (["--experiment=table3/B2", "--config=configs/i3d.py"], "not both"),
  ],
)
def test_bad_experiment_arguments_are_one_error(argv, message):
  done = subprocess.run(
    [sys.executable, "launch.py", *argv, "--mode=summary"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode != 0
  assert message in done.stderr
  assert "Traceback" not in done.stderr


def test_each_family_keeps_the_papers_training_settings():
  def train(name):
    return experiments.get_config(name).train

  assert (train("table1/mini").batch_size, train("table1/mini").learning_rate) == (4, 1e-3)
  assert train("table1/original").batch_size == 2
  assert train("table4/original-L2").batch_size == 2
  assert (train("table5/L1").batch_size, train("table5/L1").learning_rate) == (16, 5e-4)
  si = train("table6/SI-B2")
  assert (si.batch_size, si.learning_rate, si.grad_clip_norm) == (4, 1e-4, 1.0)
  assert (train("table6/NC-L1").batch_size, train("table6/NC-L1").learning_rate) == (16, 1e-3)
  assert train("table9/GRU-B1").batch_size == 4
  assert train("table9/LSTM-B1").batch_size == 8
  assert train("table8/TO-b5").batch_size == 8
  for name in filter(experiments.in_paper, experiments.names()):
    t = train(name)
    assert (t.num_epochs, t.early_stopping_patience, t.lr_decay_epochs) == (50, 20, 10), name
    assert t.lr_decay_factor == 0.5 and t.optimizer == "adam"
  model = experiments.get_config("table9/LSTM-Mixed1").model
  assert (model.rnn, model.norm, model.dropout) == ("lstm", "mixed", 0.4)
  assert experiments.get_config("table2/OG").model.head == "og"


def test_recipes():
  paper = experiments.get_config("table3/B2", "paper")
  improved = experiments.get_config("table3/B2", "improved")
  assert paper.data.train_clip_start == "first" and paper.data.augment_pad == 0
  assert paper.train.bn_recalibration_batches == 0
  assert paper.model.bn_momentum == 0.99  # Keras' default, as the paper's code
  assert improved.data.train_clip_start == "random" and improved.data.augment_pad > 0
  assert improved.train.bn_recalibration_batches > 0
  assert (paper.eval.clips, improved.eval.clips) == ("one", "all")
  assert paper.model.to_dict() == improved.model.to_dict()
  assert paper.experiment.to_dict() == dict(name="table3/B2", recipe="paper", runlocal=False)
  with pytest.raises(experiments.ConfigError, match="recipe 'fancy'"):
    experiments.get_config("table3/B2", "fancy")


@pytest.mark.parametrize("name", ECHONET)
def test_echonet_models_train_with_echonet_dynamic_s_recipe_under_either_recipe(name):
  """EchoNet-Dynamic's recipe (configs/r2plus1d.py) whatever --recipe says; the recipe asked
  for is still recorded (a root holds one), and an unknown one is still an error."""
  paper = experiments.get_config(name, "paper")
  improved = experiments.get_config(name, "improved")
  for section in ("model", "data", "train", "eval"):
    assert paper[section].to_dict() == improved[section].to_dict(), section
  data, train, evaluation = paper.data, paper.train, paper.eval
  assert (data.clip_frames, data.period, data.augment_pad) == (32, 2, 12)
  assert data.train_clip_start == "random"
  assert (train.optimizer, train.momentum, train.learning_rate, train.weight_decay) == (
    "sgd",
    0.9,
    1e-4,
    1e-4,
  )
  assert (train.lr_decay_epochs, train.lr_decay_factor, train.num_epochs) == (15, 0.1, 45)
  assert (train.batch_size, train.bn_recalibration_batches) == (20, 0)
  assert train.early_stopping_patience >= train.num_epochs  # the best of all 45 epochs
  assert (evaluation.clips, evaluation.clip_stride) == ("all", 1)
  assert paper.model.name == "r2plus1d"
  assert paper.model.arch == experiments.get(name).arg.removeprefix("arch=")
  assert (paper.experiment.recipe, improved.experiment.recipe) == ("paper", "improved")
  with pytest.raises(experiments.ConfigError, match="recipe 'fancy'"):
    experiments.get_config(name, "fancy")


def test_runlocal_shrinks_every_experiment_to_synthetic_data():
  for name in experiments.names(include_aliases=False):
    config = experiments.get_config(name, "paper", runlocal=True)
    config_with_root = experiments.get_config(name, "paper", runlocal=True)
    assert config.data.root == config_with_root.data.root == ""
    assert config.train.num_epochs * config.train.steps_per_epoch <= 4
    assert config.train.batch_size % 8 == 0  # shards over 8 fake devices
    assert config.data.image_size >= (75 if config.model.get("backbone") == "inception_v3" else 1)
    assert (config.data.clip_frames, config.data.synthetic_max_frames) == (8, 40)
    # All-clips evaluation of clips that follow each other: a few a video, not one a frame.
    assert config.eval.clip_stride == 0 and config.eval.batch_size == 8
  echonet = experiments.get_config("echonet/r2plus1d_32_2", "paper", runlocal=True)
  assert (echonet.data.image_size, echonet.data.period, echonet.eval.clips) == (32, 2, "all")


def test_paper_recipe_trains_on_the_first_frames_of_each_video(data_cache):
  from lvef_jax.data import pipeline, preparation

  config = shrink(experiments.get_config("table1/stem", "paper"), data_cache)
  config.data.augment_pad = 0  # the paper's recipe (shrink adds augmentation)
  builder = preparation.prepare(config.data)

  def clips_by_ef(batches):
    return {float(ef): video for b in batches for ef, video in zip(b["ef"], b["video"])}

  def epoch(seed):
    return clips_by_ef(pipeline.train_batches(builder, config.data, batch_size=8, seed=seed))

  listing = preparation.split_listing(builder, "train")
  evaluation = {
    float(np.float32(listing["ef"][i])): video
    for b in pipeline.clip_batches(builder, "train", config.data, batch_size=8)
    for i, video, mask in zip(b["video_index"], b["video"], b["mask"])
    if mask
  }
  first, second = epoch(1), epoch(2)
  assert len(set(first) & set(second)) >= 8
  for ef in set(first) & set(second):
    np.testing.assert_array_equal(first[ef], second[ef])  # the same clip every epoch
    np.testing.assert_array_equal(first[ef], evaluation[ef])  # = the clip from frame 0
  config.data.update(train_clip_start="random")
  first, second = epoch(1), epoch(2)
  assert any(not np.array_equal(first[ef], second[ef]) for ef in set(first) & set(second))
