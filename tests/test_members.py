"""Several members in one program (train.seeds, train.grid): each member is its solo run.

Whole runs on the 24-video synthetic dataset of `shrink` (8 fake CPU devices), steps on tiny
random batches."""

import json
import pathlib

import jax
import numpy as np
import pytest

from lvef_jax import sharding
from lvef_jax.errors import ConfigError
from lvef_jax.training import members as members_lib, state as state_lib, steps, trainer
from tests.conftest import load_config, shrink


def _config(cache, seeds=1, grid="", seed=0, arg="variant=stem"):
  config = shrink(load_config("i3d", arg), cache)
  config.train.update(seeds=seeds, grid=grid)
  config.seed = seed
  return config


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _batches(config, members, seed=0):
  rng = np.random.default_rng(seed)
  size = (members, config.train.batch_size, config.data.clip_frames) + (config.data.image_size,) * 2
  video = rng.integers(0, 256, size + (1,), dtype=np.uint8)
  return {"video": video, "ef": rng.uniform(20, 80, size[:2]).astype(np.float32)}


def test_members_are_the_grid_times_the_seeds_each_its_solo_config():
  config = load_config("two_stream")
  config.seed = 5
  config.train.update(seeds=2, grid="learning_rate=1e-3,3e-4; l2=0.05")
  listed = members_lib.members(config)
  assert [(m.index, m.seed, m.hparams) for m in listed] == [
    (0, 5, {"learning_rate": 1e-3, "l2": 0.05}),
    (1, 6, {"learning_rate": 1e-3, "l2": 0.05}),
    (2, 5, {"learning_rate": 3e-4, "l2": 0.05}),
    (3, 6, {"learning_rate": 3e-4, "l2": 0.05}),
  ]
  solo = members_lib.member_config(config, listed[3])
  assert (solo.seed, solo.train.seeds, solo.train.grid) == (6, 1, "")
  assert (solo.train.learning_rate, solo.model.l2) == (3e-4, 0.05)
  for grid, message in [
    ("norm=batch,layer", "cannot differ between members"),
    ("dropout=0.1;dropout=0.2", "twice"),
    ("learning_rate=fast", "not a number"),
    ("learning_rate", "name=value"),
  ]:
    config.train.grid = grid
    with pytest.raises(ConfigError, match=message):
      members_lib.members(config)
  i3d = load_config("i3d")
  i3d.train.grid = "l2=0.1"
  with pytest.raises(ConfigError, match="has no model.l2"):
    members_lib.members(i3d)


@pytest.mark.parametrize("member_map", ["vmap", "loop"])
def test_a_member_step_is_its_solo_step_on_one_or_eight_devices(data_cache, member_map):
  """Member 1 of a 2-member program takes the step the solo run with seed+1 takes, to 1e-5,
  on a mesh of 2 members x 4 devices and on one device; predictions too."""
  config = _config(data_cache, seeds=2)
  graphdef, stacked, tx = state_lib.create(config, steps_per_epoch=10)
  solo_graphdef, solo, solo_tx = state_lib.create(_config(data_cache, seed=1), steps_per_epoch=10)
  batch = _batches(config, 2)
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices, members=2)
    assert dict(mesh.shape) == (
      {"members": 2, "data": 4} if len(devices) == 8 else {"members": 1, "data": 1}
    )
    step = steps.make_train_step(graphdef, tx, mesh, 2, member_map=member_map)
    state = jax.device_put(jax.device_get(stacked), sharding.state_sharding(mesh, 2))
    new, out = step(state, sharding.shard_batch(batch, mesh, 2))
    video = sharding.shard_batch({"video": batch["video"][0]}, mesh)
    predicted = steps.make_predict_step(graphdef, mesh, 2)(new, video)
    results.append(jax.device_get((new, out, predicted)))
  mesh = sharding.make_mesh()
  solo_step = steps.make_train_step(solo_graphdef, solo_tx, mesh)
  solo_batch = sharding.shard_batch({k: v[1] for k, v in batch.items()}, mesh)
  solo_new, solo_out = jax.device_get(
    solo_step(jax.device_put(solo, sharding.replicated(mesh)), solo_batch)
  )
  solo_predicted = steps.make_predict_step(solo_graphdef, mesh)(
    jax.device_put(solo_new, sharding.replicated(mesh)),
    sharding.shard_batch({"video": batch["video"][0]}, mesh),
  )
  for new, out, predicted in results:
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(out[key][1], solo_out[key], rtol=1e-5)
    # Adam's first moment after one step is a tenth of the gradient: the gradients agree to
    # 1e-5 of the largest. (The new weights are about the gradients' signs times the rate, and
    # rounding may flip the sign of a gradient near 0, such as the bias before BatchNorm.)
    mine = state_lib.member_state(new, 1)
    moments = [_first_moments(mine.opt_state), _first_moments(solo_new.opt_state)]
    scale = max(float(np.max(np.abs(m))) for m in moments[1])
    for got, want in zip(*moments, strict=True):
      np.testing.assert_allclose(got, want, atol=1e-5 * scale)
    np.testing.assert_allclose(predicted[1], np.asarray(solo_predicted), atol=1e-3)
    assert not np.allclose(predicted[0], predicted[1])  # the members are different runs


def _first_moments(opt_state):
  """Adam's first moments (``mu``) in an optimizer state, wherever the chain keeps them."""
  found = []
  for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")):
    if hasattr(node, "mu"):
      found += jax.tree.leaves(node.mu)
  assert found
  return found


def test_grid_members_take_their_own_learning_rates(data_cache):
  """Adam's first step moves a weight by about its learning rate: the members' median moves
  are their rates."""
  config = _config(data_cache, grid="learning_rate=1e-3,1e-2", arg="variant=stem,norm=layer")
  graphdef, stacked, tx = state_lib.create(config, steps_per_epoch=10)
  assert stacked.hparams["learning_rate"].tolist() == pytest.approx([1e-3, 1e-2])
  mesh = sharding.make_mesh(members=2)
  state = jax.device_put(stacked, sharding.state_sharding(mesh, 2))
  before = jax.device_get(state.params)
  new, _ = steps.make_train_step(graphdef, tx, mesh, 2)(
    state, sharding.shard_batch(_batches(config, 2), mesh, 2)
  )
  kernel = lambda p: p["head"]["out"]["kernel"]  # noqa: E731
  moved = np.abs(kernel(jax.device_get(new.params)) - kernel(before))
  for member, rate in enumerate([1e-3, 1e-2]):
    assert np.median(moved[member]) == pytest.approx(rate, rel=0.05)


@pytest.fixture(scope="module")
def member_runs(data_cache, tmp_path_factory):
  """A 2-member run and the solo run of its member 1 (seed 1), 2 epochs each."""
  root = tmp_path_factory.mktemp("members")
  both = trainer.train_and_evaluate(_config(data_cache, seeds=2), root / "two")
  alone = trainer.train_and_evaluate(_config(data_cache, seed=1), root / "seed1")
  return root, both, alone


def test_a_two_member_run_writes_means_spreads_members_and_the_ensemble(member_runs):
  root, both, alone = member_runs
  on_disk = json.loads((root / "two" / "results.json").read_text())
  assert on_disk == both
  assert [(m["member"], m["seed"], m["hparams"]) for m in both["members"]] == [
    (0, 0, {}),
    (1, 1, {}),
  ]
  assert both["best_epochs"] == [m["best_epoch"] for m in both["members"]]
  for split in ("train", "val", "test"):
    values = [m["splits"][split]["rmse"] for m in both["members"]]
    assert both["splits"][split]["rmse"] == pytest.approx(np.mean(values))
    assert both["splits"][split]["rmse_sd"] == pytest.approx(np.std(values, ddof=1))
    assert values[0] != values[1]  # different runs
    assert set(both["ensemble"][split]) == {"rmse", "mae", "r2", "n"}
    for member in (0, 1):
      assert (root / "two" / "members" / str(member) / f"predictions_{split}.csv").is_file()
      assert (root / "two" / "members" / str(member) / "plots" / f"scatter_{split}.png").is_file()
    # The top-level predictions are the ensemble's: the mean of the members' predictions.
    frames = [
      np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
      for path in [root / "two" / "members" / str(m) / f"predictions_{split}.csv" for m in (0, 1)]
    ]
    ensemble = np.genfromtxt(
      root / "two" / f"predictions_{split}.csv",
      delimiter=",",
      names=True,
      dtype=None,
      encoding="utf-8",
    )
    np.testing.assert_allclose(
      ensemble["EF_pred"], (frames[0]["EF_pred"] + frames[1]["EF_pred"]) / 2, atol=2e-4
    )
  records = _records(root / "two")
  assert [len(r["members"]) for r in records] == [2, 2]


def test_member_one_of_a_run_is_the_solo_run_with_seed_plus_one(member_runs):
  """The same clips in the same order: losses and scores as the solo run's, within the
  tolerance docs/training.md states (0.05 RMSE on the shrunk runs of these tests)."""
  root, both, alone = member_runs
  member, solo = both["members"][1], alone
  assert member["best_epoch"] == solo["best_epoch"]
  for split in ("train", "val", "test"):
    for key in ("rmse", "mae"):
      assert member["splits"][split][key] == pytest.approx(solo["splits"][split][key], abs=0.05)
  for mine, theirs in zip(_records(root / "two"), _records(root / "seed1")):
    assert mine["members"][1]["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
    assert mine["members"][1]["val_rmse"] == pytest.approx(theirs["val_rmse"], abs=0.05)


def test_a_resumed_two_member_run_ends_as_an_uninterrupted_one(member_runs, data_cache, tmp_path):
  root, both, _ = member_runs
  config = _config(data_cache, seeds=2)
  config.train.num_epochs = 1
  trainer.train_and_evaluate(config, tmp_path)
  # As if killed while saving the best checkpoint, after the latest one (the same epoch).
  best = tmp_path / "checkpoints" / "best"
  (best / "1").rename(best / "1.orbax-checkpoint-tmp-1795000000")
  config.train.num_epochs = 2  # the same command with more epochs continues from epoch 1
  resumed = trainer.train_and_evaluate(config, tmp_path)
  assert resumed["best_epochs"] == both["best_epochs"]
  for split, scores in both["splits"].items():
    for key in ("rmse", "rmse_sd", "mae", "r2"):
      assert resumed["splits"][split][key] == pytest.approx(scores[key], abs=1e-4), (split, key)


def test_each_member_stops_early_on_its_own(data_cache, tmp_path):
  """Learning rate 0 (LayerNorm: nothing else changes the weights) leaves member 0's
  validation error as it was, so with patience 1 it stops after epoch 2 and keeps its epoch-1
  weights while member 1 trains on."""
  config = _config(data_cache, grid="learning_rate=0,3e-3", arg="variant=stem,norm=layer")
  config.train.update(num_epochs=4, early_stopping_patience=1)
  results = trainer.train_and_evaluate(config, tmp_path)
  records = _records(tmp_path)
  still = records[0]["members"][0]["val_rmse"]
  assert [r["members"][0]["val_rmse"] for r in records[:2]] == pytest.approx([still] * 2)
  assert [r["members"][0]["stopped"] for r in records] == [False, False, True, True][: len(records)]
  assert len(records) > 2 and not records[2]["members"][1]["stopped"]
  assert results["members"][0]["best_epoch"] == 1
  assert results["members"][0]["splits"]["val"]["rmse"] == pytest.approx(still, abs=1e-4)
  # Member 1's stopping replays from its own history.
  replay = trainer.EarlyStopping()
  for record in records:
    if not record["members"][1]["stopped"]:
      replay.update(record["epoch"], record["members"][1]["val_rmse"])
  assert results["members"][1]["best_epoch"] == replay.best_epoch
