"""The member axis of a several-member train step: the loop and vmap forms compute the same."""

import jax
import numpy as np
import pytest

from lvef_jax import sharding
from lvef_jax.errors import ConfigError
from lvef_jax.training import state as state_lib, steps
from tests.conftest import load_config
from tests.test_members import _first_moments


def _members_config():
  """Two members as training builds them: seeds 0 and 1, and grid values (one point) that the
  step reads as arrays (the optimizer's learning rate, the model's dropout). Its conv2 is a
  pointwise convolution, which XLA alone gets wrong vmapped over split members (below)."""
  config = load_config("i3d", "variant=stem")
  config.data.update(clip_frames=8, image_size=16)
  config.train.update(batch_size=8, seeds=2, grid="learning_rate=1e-3;dropout=0.4")
  return config


def _member_batch(members: int, batch_size: int = 8) -> dict:
  rng = np.random.default_rng(3)
  video = rng.integers(0, 256, (members, batch_size, 8, 16, 16, 1), dtype=np.uint8)
  ef = (20 + 60 * video.mean(axis=(2, 3, 4, 5)) / 255).astype(np.float32)
  return {"video": video, "ef": ef}


def test_the_loop_and_vmap_forms_give_the_same_two_member_step():
  """On the 8-device members mesh (2 x 4) and on one device: two steps of each form from the
  same stacked state give the same metrics (the second step's loss is of the first step's
  weights), BatchNorm statistics after the first and gradients (Adam's first moments) after
  both to 1e-5. (The weights themselves move by about the rate times each gradient's sign,
  and rounding flips the sign of gradients near 0, such as that of the stem's bias before
  BatchNorm: it changes no output, but the next running means of that BatchNorm.)"""
  config = _members_config()
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=10)
  state = jax.device_get(state)
  assert jax.tree.leaves(state.params)[0].shape[0] == 2
  assert set(state.hparams) == {"learning_rate", "dropout"}
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices, members=2)
    assert mesh.shape[sharding.MEMBERS_AXIS] == (2 if len(devices) == 8 else 1)
    batch = sharding.shard_batch(_member_batch(2), mesh, members=2)
    for form in ("vmap", "loop"):
      step = steps.make_train_step(graphdef, tx, mesh, members=2, member_map=form)
      current, metrics = jax.device_put(state, sharding.state_sharding(mesh, 2)), []
      first, out = step(current, batch)
      metrics.append(jax.device_get(out))
      first = jax.device_get(first)
      current, out = step(jax.device_put(first, sharding.state_sharding(mesh, 2)), batch)
      metrics.append(jax.device_get(out))
      results.append((len(devices), form, first, jax.device_get(current), metrics))
  _, _, want_first, want_state, want_metrics = results[0]  # vmap on 8 devices
  assert not np.allclose(want_metrics[0]["loss"][0], want_metrics[0]["loss"][1])  # two runs
  for devices, form, got_first, got_state, got_metrics in results[1:]:
    where = f"{form} on {devices} device(s)"
    assert got_state.step.tolist() == [2, 2]
    for got, want in zip(got_metrics, want_metrics):
      assert got["skipped"].tolist() == [0, 0]
      for key in ("loss", "penalty", "grad_norm"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=where)
    for got, want in zip(
      jax.tree.leaves(got_first.batch_stats), jax.tree.leaves(want_first.batch_stats), strict=True
    ):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=where)
    moments = [_first_moments(got_state.opt_state), _first_moments(want_state.opt_state)]
    scale = max(float(np.max(np.abs(m))) for m in moments[1])
    for got, want in zip(*moments, strict=True):
      np.testing.assert_allclose(got, want, atol=1e-5 * scale, err_msg=where)


def test_the_member_map_is_chosen_per_platform():
  assert steps.member_map_for("auto", "cpu") == "loop"
  assert steps.member_map_for("auto", "gpu") == "vmap"
  assert steps.member_map_for("auto", "cuda") == "vmap"
  assert steps.member_map_for("vmap", "cpu") == "vmap"
  assert steps.member_map_for("loop", "gpu") == "loop"
  with pytest.raises(ConfigError, match="compute.members must be one of auto, vmap, loop"):
    steps.member_map_for("scan", "cpu")


@pytest.mark.xfail(
  strict=True,
  reason="XLA's SPMD partitioner (jax 0.10.2): a grouped 1x1 convolution whose groups are "
  "split over devices all-gathers the input and keeps the global group count with one "
  "partition's kernel",
)
def test_vmapped_pointwise_convolutions_over_the_members_axis():
  """Why the CPU maps members with the loop, and why the members test above has no pointwise
  convolution: vmapped over members, a 1x1 convolution becomes a grouped one, and with the
  member (group) axis split over the mesh's ``members`` axis XLA computes it wrongly (3x3
  kernels come out right). When this passes, XLA has fixed it."""
  mesh = sharding.make_mesh(members=2)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 4, 4, 16)).astype(np.float32)  # members, batch, H, W, C
  w = rng.normal(size=(2, 1, 1, 16, 8)).astype(np.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  want = np.stack([conv(x[i], w[i]) for i in range(2)])
  got = jax.jit(
    jax.vmap(conv),
    in_shardings=(sharding.batch_sharding(mesh, 2), sharding.state_sharding(mesh, 2)),
  )(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
