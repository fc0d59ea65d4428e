"""Train step, sharding, checkpoints and metrics on small real inputs."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from lvef_jax.config_base import base_config
from lvef_jax.data.echonet import EchoNetFormatError
from lvef_jax.errors import ConfigError, LvefError, MissingCheckpointError, NonFiniteLossError
from lvef_jax.evaluation import metrics
from lvef_jax import checkpoints, config_base, models, sharding
from lvef_jax.training import state as state_lib, steps, trainer
from tests.conftest import load_config, shrink


def _config(variant="stem", norm="batch"):
  config = load_config("i3d", f"variant={variant},norm={norm}")
  config.data.update(clip_frames=8, image_size=16)
  config.train.update(batch_size=8)
  return config


def _batch(seed=0, batch_size=8):
  """A fixed batch whose EF is a function of the clip (mean brightness), so it can be learnt."""
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (batch_size, 8, 16, 16, 1), dtype=np.uint8)
  ef = (20 + 60 * video.mean(axis=(1, 2, 3, 4)) / 255).astype(np.float32)
  return {"video": video, "ef": ef}


def _setup(config, mesh, steps_per_epoch=10):
  graphdef, state, tx = state_lib.create(config, steps_per_epoch)
  state = jax.device_put(state, sharding.replicated(mesh))
  return graphdef, tx, state


def test_mesh_uses_all_eight_fake_devices():
  assert jax.device_count() == 8
  assert sharding.make_mesh().devices.size == 8


def test_train_step_lowers_the_loss_on_a_fixed_batch():
  config = _config()
  mesh = sharding.make_mesh()
  graphdef, tx, state = _setup(config, mesh)
  train_step = steps.make_train_step(graphdef, tx, mesh)
  batch = sharding.shard_batch(_batch(), mesh)
  losses = []
  for _ in range(30):
    state, out = train_step(state, batch)
    losses.append(float(out["loss"]))
  assert int(state.step) == 30
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_members_train_in_one_program_as_they_do_alone():
  """Two runs (their own weights, seeds and batches) vmapped into one step on the 8-device mesh
  give each run's solo step: the same metrics, weights and BatchNorm statistics, up to float
  rounding (the batched convolutions add in another order). Plain SGD at a rate so large that
  the new weights are the update, -1e4 times the gradient, so the gradients are compared:
  Adam's first step is about the gradient's sign, which rounding may flip where one is near 0."""
  config = _config()
  mesh = sharding.make_mesh()
  tx = optax.sgd(1e4)
  solos, states, batches = [], [], []
  for seed in (0, 1):

    def fresh():
      model = models.create_model(config, seed=seed)
      graphdef, state = state_lib.create_train_state(model, tx, seed)
      return graphdef, jax.device_put(state, sharding.replicated(mesh))

    graphdef, state = fresh()
    solo_state, solo_out = steps.make_train_step(graphdef, tx, mesh)(
      state, sharding.shard_batch(_batch(seed), mesh)
    )
    solos.append((jax.device_get(solo_state), jax.device_get(solo_out)))
    states.append(fresh()[1])  # the solo step donated the first copy
    batches.append(_batch(seed))
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(states))
  batch = {k: np.stack([b[k] for b in batches]) for k in ("video", "ef")}
  member_batch = {
    k: jax.device_put(v, sharding.batch_sharding(mesh, members=2)) for k, v in batch.items()
  }
  both = steps.make_train_step(graphdef, tx, mesh, members=2)
  new_state, out = both(jax.device_put(stacked, sharding.replicated(mesh)), member_batch)
  new_state, out = jax.device_get(new_state), jax.device_get(out)
  assert out["loss"].shape == (2,) and new_state.step.tolist() == [1, 1]
  for member, (solo_state, solo_out) in enumerate(solos):
    for key in ("loss", "grad_norm", "skipped"):
      np.testing.assert_allclose(out[key][member], solo_out[key], rtol=1e-4)
    mine = jax.tree.map(lambda x: x[member], new_state)
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(solo_state.params))
    for got, want in zip(jax.tree.leaves(mine), jax.tree.leaves(solo_state), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_step(norm):
  config = _config(variant="mini", norm=norm)
  config.train.update(grad_clip_norm=10.0, weight_decay=1e-4)  # the full optimizer chain
  probe = _batch(seed=7)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    graphdef, tx, state = _setup(config, mesh)
    train_step = steps.make_train_step(graphdef, tx, mesh)
    predict = steps.make_predict_step(graphdef, mesh)
    outputs = []
    for seed in (0, 1):
      state, out = train_step(state, sharding.shard_batch(_batch(seed), mesh))
      outputs.append([float(out["loss"]), float(out["grad_norm"])])
      if seed == 0:
        first_stats = jax.device_get(state.batch_stats)
    # The batch really is split: each device holds 1/len(devices) of it.
    sharded = sharding.shard_batch(probe, mesh)["video"]
    assert sharded.addressable_shards[0].data.shape[0] == 8 // len(devices)
    results.append(
      (
        outputs,
        first_stats,
        np.asarray(predict(state, sharding.shard_batch(probe, mesh))),
        jax.device_get(state),
      )
    )
  (out_1, stats_1, pred_1, state_1), (out_8, stats_8, pred_8, state_8) = results
  # Step 1 starts from identical states: loss, gradient norm and the updated BatchNorm
  # statistics agree to rounding. Step 2 inherits the rounding noise that Adam amplifies in
  # step 1 (see the parameters below), so it is compared more loosely.
  np.testing.assert_allclose(out_1[0], out_8[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_1), jax.tree.leaves(stats_8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out_1[1], out_8[1], rtol=1e-3)
  np.testing.assert_allclose(pred_1, pred_8, rtol=1e-3)
  # Parameters: a few (conv2's bias, which a max-pool and BatchNorm make redundant) have
  # gradients that are pure rounding noise, and Adam turns noise into full-size steps; all
  # others must agree closely, and none can differ by more than the two runs' largest
  # possible Adam steps (lr * (1 - b1) / sqrt(1 - b2) each; Kingma & Ba, section 2.1).
  max_adam_step = config.train.learning_rate * (1 - 0.9) / np.sqrt(1 - 0.999)
  close, total = 0, 0
  for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_8.params)):
    assert np.max(np.abs(a - b)) <= 2 * 2 * max_adam_step
    close += np.sum(np.isclose(a, b, rtol=1e-3, atol=1e-6))
    total += a.size
  assert close / total > 0.995, (close, total)


def test_predictions_identical_after_checkpoint_restore(tmp_path):
  config = _config(variant="stem")
  mesh = sharding.make_mesh()
  graphdef, tx, state = _setup(config, mesh)
  train_step = steps.make_train_step(graphdef, tx, mesh)
  predict = steps.make_predict_step(graphdef, mesh)
  batch = sharding.shard_batch(_batch(), mesh)
  for _ in range(3):
    state, _ = train_step(state, batch)
  expected = np.asarray(predict(state, batch))
  saver = checkpoints.Checkpoints(tmp_path / "checkpoints")
  saver.save("latest", 3, state, {"epoch": 3, "note": "x"})
  saver.wait()
  saver.close()

  _, _, fresh = _setup(config, mesh)  # a different run's template: same shapes, other values
  assert not np.allclose(np.asarray(predict(fresh, batch)), expected)
  restorer = checkpoints.Checkpoints(tmp_path / "checkpoints")
  assert restorer.epoch("latest") == 3 and restorer.epoch("best") is None
  restored, meta = restorer.restore("latest", fresh)
  assert meta == {"epoch": 3, "note": "x"}
  np.testing.assert_array_equal(np.asarray(predict(restored, batch)), expected)
  assert int(restored.step) == 3
  with pytest.raises(MissingCheckpointError, match="best"):
    restorer.restore("best", fresh)


def test_a_half_written_save_is_moved_out_of_orbax_s_folder(tmp_path):
  """Kept beside Orbax's folder, ``2.orbax-checkpoint-tmp`` would be what Orbax deletes when
  it later drops epoch 2 (it deletes ``2.*``), leaving epoch 2 itself behind for good."""
  state = {"w": jax.numpy.arange(4.0)}
  saver = checkpoints.Checkpoints(tmp_path)
  saver.save("latest", 1, state, {"epoch": 1})
  saver.close()
  (tmp_path / "latest" / "2.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  saver = checkpoints.Checkpoints(tmp_path, writer=True)
  assert (tmp_path / "incomplete" / "latest" / "2.orbax-checkpoint-tmp" / "state").is_dir()
  for epoch in (2, 3):
    saver.save("latest", epoch, state, {"epoch": epoch})
    saver.wait()
  saver.close()
  assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["3"]
  assert (tmp_path / "incomplete" / "latest" / "2.orbax-checkpoint-tmp").is_dir()


def test_batch_norm_recalibration_stores_the_batch_statistics():
  """After recalibrating on a batch, inference on it equals training-mode normalisation."""
  config = _config(variant="mini")
  config.model.dropout = 0.0
  mesh = sharding.make_mesh()
  graphdef, _, state = _setup(config, mesh)
  batch = _batch(seed=3)
  stats = steps.make_batch_stats_step(graphdef, mesh)(state, sharding.shard_batch(batch, mesh))
  before = nnx.merge(graphdef, state.params, state.batch_stats)
  after = nnx.merge(graphdef, state.params, stats)
  eval_before = np.asarray(before(batch["video"], train=False))
  eval_after = np.asarray(after(batch["video"], train=False))
  train_mode = np.asarray(after(batch["video"], train=True, dropout_key=jax.random.key(0)))
  np.testing.assert_allclose(eval_after, train_mode, rtol=1e-4, atol=1e-3)
  assert not np.allclose(eval_before, train_mode, rtol=1e-2)


def test_learning_rate_halves_every_ten_epochs():
  config = base_config()
  schedule = state_lib.learning_rate_schedule(config.train, steps_per_epoch=7)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(69)) == pytest.approx(1e-3)
  assert float(schedule(70)) == pytest.approx(5e-4)
  assert float(schedule(140)) == pytest.approx(2.5e-4)


def test_batch_size_must_divide_over_the_devices():
  with pytest.raises(ConfigError, match="train.batch_size 6 is not divisible by the 8 devices"):
    sharding.check_batch_size(6, sharding.make_mesh(), "train.batch_size")
  with pytest.raises(ConfigError, match="eval.batch_size must be at least 1, got 0"):
    sharding.check_batch_size(0, sharding.make_mesh(), "eval.batch_size")


def test_user_errors_are_lvef_errors_and_keep_their_builtin_base():
  """launch.py reports LvefErrors in one line; older `except ValueError` code still works."""
  for error, builtin in (
    (ConfigError, ValueError),
    (EchoNetFormatError, ValueError),
    (NonFiniteLossError, FloatingPointError),
    (MissingCheckpointError, FileNotFoundError),
  ):
    assert issubclass(error, LvefError) and issubclass(error, builtin), error


def test_regression_metrics_match_their_definitions():
  ef = np.array([30.0, 45.0, 60.0, 70.0])
  pred = np.array([35.0, 40.0, 62.0, 70.0])
  m = metrics.regression_metrics(ef, pred)
  assert m["rmse"] == pytest.approx(np.sqrt((25 + 25 + 4) / 4))
  assert m["mae"] == pytest.approx(3.0)
  # sklearn.metrics.r2_score(ef, pred): 1 - SS_res / SS_tot
  assert m["r2"] == pytest.approx(1 - 54 / np.sum((ef - ef.mean()) ** 2))
  assert m["n"] == 4
  assert metrics.regression_metrics(ef, ef)["r2"] == 1.0
  with pytest.raises(ValueError):
    metrics.regression_metrics(ef, pred[:3])


def test_format_seconds_never_prints_a_negative_time():
  assert trainer._format_seconds(3725.9) == "1:02:05"
  assert trainer._format_seconds(0) == "0:00:00"
  assert trainer._format_seconds(-7184) == "0:00:00"  # was "-2:00:16"


@pytest.mark.parametrize("first_epoch", [0, 3])
def test_etas_count_only_what_is_left_of_this_run(first_epoch):
  """A simulated run: 1 s per step and 2 s of validation after each epoch, 10 steps x 5 epochs."""
  steps_per_epoch, total_epochs, overhead = 10, 5, 2.0
  for epoch in range(first_epoch + 1, total_epochs + 1):
    epoch_seconds = steps_per_epoch + overhead
    for step in range(1, steps_per_epoch + 1):
      run_elapsed = (epoch - first_epoch - 1) * epoch_seconds + step
      epoch_eta, run_eta = trainer._etas(
        step=step,
        steps_per_epoch=steps_per_epoch,
        epoch=epoch,
        first_epoch=first_epoch,
        total_epochs=total_epochs,
        epoch_elapsed=step,
        run_elapsed=run_elapsed,
      )
      assert epoch_eta == pytest.approx(steps_per_epoch - step)
      # Validation cost is known once this run has finished an epoch.
      later = epoch_seconds if epoch > first_epoch + 1 else steps_per_epoch
      assert run_eta == pytest.approx(epoch_eta + (total_epochs - epoch) * later)
  # The last step of the last epoch: nothing left (the old estimate was negative here).
  assert trainer._etas(
    step=10,
    steps_per_epoch=10,
    epoch=5,
    first_epoch=first_epoch,
    total_epochs=5,
    epoch_elapsed=10.0,
    run_elapsed=60.0,
  ) == (0, 0)
  # In the last epoch the run ETA is the epoch ETA.
  assert trainer._etas(
    step=4,
    steps_per_epoch=10,
    epoch=5,
    first_epoch=first_epoch,
    total_epochs=5,
    epoch_elapsed=4.0,
    run_elapsed=100.0,
  ) == (6.0, 6.0)


@pytest.mark.slow
def test_a_workdir_of_another_config_is_refused_unless_overwritten(tmp_path, data_cache):
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, workdir)
  results = (workdir / "results.json").read_text()

  typo = shrink(load_config("i3d", "variant=stem"), data_cache)
  typo.train.learning_rate = 1e-2
  typo.model.dropout = 0.1
  with pytest.raises(ConfigError) as refused:
    trainer.train_and_evaluate(typo, workdir)
  message = str(refused.value)
  assert "model.dropout (0.5 there, 0.1 now)" in message and "train.learning_rate" in message
  assert "--overwrite" in message
  assert (workdir / "results.json").read_text() == results  # nothing lost

  # Training longer, or reading the data from elsewhere, is the same run: it resumes.
  longer = shrink(load_config("i3d", "variant=stem"), data_cache)
  longer.train.num_epochs = 3
  assert trainer.train_and_evaluate(longer, workdir)["best_epoch"] >= 1
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3

  # A run saved before a key was added to the project resumes: it ran as the default does. So
  # does one whose model had a key since retired (such as the old switch for how the stem ran
  # on CPUs, now a compute choice), or that ran with other kernels: config.json holds none.
  saved = json.loads((workdir / "config.json").read_text())
  assert "compute" not in saved
  del saved["data"]["device_resident"]
  saved["model"]["a_key_since_retired"] = "auto"
  (workdir / "config.json").write_text(json.dumps(saved))
  trainer.check_workdir(longer, workdir, overwrite=False)
  old = config_base.load_run_config(workdir)
  assert "a_key_since_retired" not in old.model and old.compute.kernels == "auto"
  longer.compute.kernels = "cpu"
  trainer.check_workdir(longer, workdir, overwrite=False)

  trainer.train_and_evaluate(typo, workdir, overwrite=True)
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2  # started again
  assert trainer.config_differences({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b"]


def test_a_non_finite_step_is_skipped_and_leaves_the_state_as_it_was():
  config = _config()
  mesh = sharding.make_mesh()
  graphdef, tx, state = _setup(config, mesh)
  train_step = steps.make_train_step(graphdef, tx, mesh)
  good = _batch()
  bad = dict(good, ef=np.full_like(good["ef"], np.nan))
  before = jax.device_get(state)
  state, out = train_step(state, sharding.shard_batch(bad, mesh))
  assert int(out["skipped"]) == 1 and not np.isfinite(float(out["loss"]))
  after = jax.device_get(state)
  for old, new in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(old, new)
  for old, new in zip(jax.tree.leaves(before.opt_state), jax.tree.leaves(after.opt_state)):
    np.testing.assert_array_equal(old, new)
  assert int(after.step) == 1
  state, out = train_step(state, sharding.shard_batch(good, mesh))
  assert int(out["skipped"]) == 0 and np.isfinite(float(out["loss"]))


@pytest.mark.slow
def test_non_finite_steps_in_a_row_stop_the_run_with_a_clear_message(tmp_path, data_cache):
  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.train.update(learning_rate=1e38, max_bad_steps=2, num_epochs=3)
  with pytest.raises(NonFiniteLossError, match="2 train steps in a row had a non-finite"):
    trainer.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
def test_results_can_average_every_clip_of_each_video(tmp_path, data_cache):
  from lvef_jax.data import preparation
  from lvef_jax.evaluation import evaluator
  from lvef_jax.evaluation.predictor import Predictor

  config = shrink(load_config("i3d", "variant=stem"), data_cache)
  config.eval.update(clips="all", clip_stride=3)
  results = trainer.train_and_evaluate(config, tmp_path)
  assert results["eval_clips"] == "all"
  predictor = Predictor.from_run(tmp_path, "best", config=config)
  builder, mesh = preparation.prepare(config.data), sharding.make_mesh()

  def rmse(clips):
    p = evaluator.Evaluator("test", clips=clips, stride=3, batch_size=8).run(
      predictor, builder, config.data, mesh
    )
    assert clips == "one" or p.n_clips.max() > 1
    return metrics.regression_metrics(p.ef, p.ef_pred)["rmse"]

  assert results["splits"]["test"]["rmse"] == pytest.approx(rmse("all"), abs=1e-5)
  assert results["splits"]["test"]["rmse"] != pytest.approx(rmse("one"), abs=1e-5)


def test_a_second_train_step_compilation_is_reported(caplog):
  config = _config()
  mesh = sharding.make_mesh()
  graphdef, tx, state = _setup(config, mesh)
  train_step = steps.make_train_step(graphdef, tx, mesh)
  state, _ = train_step(state, sharding.shard_batch(_batch(), mesh))
  state, _ = train_step(state, sharding.shard_batch(_batch(seed=1), mesh))
  assert trainer._log_compilations(train_step) == 1
  state, _ = train_step(state, sharding.shard_batch(_batch(batch_size=16), mesh))
  caplog.set_level("WARNING")
  assert trainer._log_compilations(train_step) == 2
  assert "the train step was compiled 2 times in this process" in caplog.text


@pytest.mark.slow
def test_bfloat16_and_float32_train_steps_agree_within_bfloat16_precision():
  """The same weights and batch: bf16 compute gives the fp32 step's loss, gradient norm and
  updated weights within bf16's precision (8 bits of mantissa), parameters staying float32."""
  mesh = sharding.make_mesh()
  batch = sharding.shard_batch(_batch(), mesh)
  outputs = {}
  for dtype in ("float32", "bfloat16"):
    config = _config("mini")
    config.model.dtype = dtype
    graphdef, tx, state = _setup(config, mesh)
    before = jax.device_get(state.params)
    state, out = steps.make_train_step(graphdef, tx, mesh)(state, batch)
    after = jax.device_get(state.params)
    assert {x.dtype for x in jax.tree.leaves(after)} == {np.dtype("float32")}
    moved = [a - b for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
    outputs[dtype] = (float(out["loss"]), float(out["grad_norm"]), moved)
  (loss32, norm32, moved32), (loss16, norm16, moved16) = outputs["float32"], outputs["bfloat16"]
  assert loss16 == pytest.approx(loss32, rel=5e-3)  # measured: 4e-4
  assert norm16 == pytest.approx(norm32, rel=2e-2)  # measured: 6e-3
  # Adam's first step moves each weight by about the learning rate times the gradient's sign:
  # the two steps must move (nearly) every weight the same way.
  signs32 = np.concatenate([np.sign(m).ravel() for m in moved32])
  signs16 = np.concatenate([np.sign(m).ravel() for m in moved16])
  assert np.mean(signs32 == signs16) > 0.9  # measured: 0.96
