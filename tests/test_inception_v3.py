"""InceptionV3 backbone: Keras weight import and parity, parameter count, frozen blocks."""

import re
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax.models import inception_v3
from tests.conftest import ROOT

FRAME_SIZE = 112
# Keras' TensorFlow backend converts tensors with an outdated numpy call, hundreds of times.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras_model():
  """Keras' InceptionV3 with random weights, BatchNorm state included (fixed seed)."""
  keras = pytest.importorskip("keras")
  keras.utils.set_random_seed(0)
  model = keras.applications.InceptionV3(
    weights=None, include_top=False, pooling="avg", input_shape=(FRAME_SIZE, FRAME_SIZE, 3)
  )
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      # Fresh BNs hold beta=0, mean=0, var=1, which a broken import of the BN state would
      # reproduce by accident.
      n = layer.beta.shape[0]
      layer.beta.assign(rng.normal(0.0, 0.2, n).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0.0, 0.2, n).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
  return model


@pytest.fixture(scope="module")
def keras_weights(keras_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("keras") / "inception.weights.h5"
  keras_model.save_weights(path)
  return path


def _frames(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _model(seed: int = 1) -> inception_v3.InceptionV3:
  return inception_v3.InceptionV3(rngs=nnx.Rngs(params=seed))


def test_keras_import_gives_the_same_features(keras_model, keras_weights):
  model = _model()
  inception_v3.load_keras_weights(model, keras_weights)
  frames = _frames(3, FRAME_SIZE)
  expected = np.asarray(keras_model(frames, training=False))
  features = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, jnp.asarray(frames)))
  assert features.shape == (3, inception_v3.FEATURES) and features.dtype == np.float32
  # Relative to the largest feature magnitude: single features can be ~0 after the ReLU.
  error = np.abs(features - expected).max() / np.abs(expected).max()
  assert error < 1e-3, error  # measured: 5e-7


def test_keras2_hdf5_layout_loads_the_same_weights(keras_model, keras_weights, tmp_path):
  # The layout of the distributed `..._notop.h5` files, written by Keras' own legacy writer.
  from keras.src.legacy.saving import legacy_h5_format

  legacy_path = tmp_path / "inception_notop.h5"
  with h5py.File(legacy_path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
  from_keras3, from_legacy = _model(1), _model(2)
  inception_v3.load_keras_weights(from_keras3, keras_weights)
  inception_v3.load_keras_weights(from_legacy, legacy_path)
  for a, b in zip(jax.tree.leaves(nnx.state(from_keras3)), jax.tree.leaves(nnx.state(from_legacy))):
    np.testing.assert_array_equal(a, b)


def test_parameter_count_matches_keras_trainable_count(keras_model):
  trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
  assert trainable == 21_768_352 == keras_model.count_params() - 34_432
  model = jax.eval_shape(_model)  # shapes only
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == trainable


def test_frozen_blocks_get_no_gradient_and_keep_their_batch_stats():
  model = _model()
  frames = jnp.asarray(_frames(2, 75))  # Keras' smallest input: quick to differentiate
  trainable_blocks = 5
  first_trainable = len(inception_v3.BLOCKS) - trainable_blocks
  before = {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}

  def loss(m):
    return m(frames, train=True, trainable_blocks=trainable_blocks).sum()

  grads = nnx.jit(nnx.grad(loss))(model)
  grad_norms = {}
  for path, g in nnx.to_flat_state(grads):
    block = inception_v3.block_index(path)
    grad_norms[block] = grad_norms.get(block, 0.0) + float(jnp.abs(g[...]).sum())
  assert all(grad_norms[b] == 0.0 for b in range(first_trainable)), grad_norms
  assert any(grad_norms[b] > 0.0 for b in range(first_trainable, len(inception_v3.BLOCKS)))

  changed = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    block = inception_v3.block_index(path)
    changed[block] = changed.get(block, False) or not np.array_equal(before[path], v[...])
  assert not any(changed[b] for b in range(first_trainable)), changed
  assert all(changed[b] for b in range(first_trainable, len(inception_v3.BLOCKS))), changed


def test_bad_weight_files_raise_value_errors_naming_the_file(tmp_path):
  model = _model()
  not_hdf5 = tmp_path / "not_hdf5.weights.h5"
  not_hdf5.write_text("not an HDF5 file")
  missing = tmp_path / "missing.weights.h5"
  for path in (not_hdf5, missing):
    with pytest.raises(ValueError, match=re.escape(str(path))):
      inception_v3.load_keras_weights(model, path)


def test_shape_mismatch_raises_and_leaves_the_model_untouched(keras_weights, tmp_path):
  broken = tmp_path / "broken.weights.h5"
  broken.write_bytes(keras_weights.read_bytes())
  with h5py.File(broken, "r+") as f:
    del f["layers/conv2d/vars/0"]
    f["layers/conv2d/vars/0"] = np.zeros((3, 3, 3, 31), np.float32)
  model = _model()
  before = jax.tree.leaves(nnx.state(model))
  with pytest.raises(ValueError, match=re.escape(str(broken))):
    inception_v3.load_keras_weights(model, broken)
  for a, b in zip(before, jax.tree.leaves(nnx.state(model))):
    np.testing.assert_array_equal(a, b)


def test_block_index():
  assert inception_v3.block_index(("backbone", "blocks", 3, "conv", "kernel")) == 3
  assert inception_v3.block_index(("backbone", "head", "kernel")) is None
  paths = [path for path, _ in nnx.to_flat_state(nnx.state(jax.eval_shape(_model), nnx.Param))]
  assert {inception_v3.block_index(p) for p in paths} == set(range(len(inception_v3.BLOCKS)))


@pytest.mark.slow
def test_model_code_never_imports_tensorflow_keras_or_h5py():
  """GPU machines have JAX but no TensorFlow; h5py is needed only to load weights."""
  code = (
    "import sys, lvef_jax.models.inception_v3; "
    "bad = {'tensorflow', 'keras', 'h5py'} & set(sys.modules); assert not bad, bad"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-2000:]
