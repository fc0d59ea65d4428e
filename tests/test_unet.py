"""The U-Net of configs/segmentation.py:model=unet: its shapes, counts and checks (fast; its
training is tests/test_segmentation.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvef_jax import models
from lvef_jax.errors import ConfigError
from lvef_jax.models import unet
from lvef_jax.reporting import summary
from tests.conftest import load_config


def _config(arg="model=unet", image_size=32, **model):
  config = load_config("segmentation", arg)
  config.data.image_size = image_size
  config.model.update(model)
  return config


@pytest.mark.parametrize(
  ("arg", "params"), [("model=unet", 8_633_345), ("model=unet,features=16", 2_160_129)]
)
def test_parameter_counts(arg, params):
  # docs/segmentation.md: 32 wide (the config) and the demo's 16, both 4 levels deep.
  config = _config(arg)
  assert models.count_params(jax.eval_shape(lambda: models.create_model(config))) == params
  assert summary.parameter_table(config).splitlines()[-1] == f"trainable_params: {params}"


def test_logits_have_the_frames_shape_and_see_the_normalisation():
  config = _config(image_size=16, features=4, depth=2, input_mean=30.0, input_std=40.0)
  model = models.create_model(config)
  frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), np.uint8)
  logits = model(jnp.asarray(frames), train=False)
  assert logits.shape == (2, 16, 16) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert model.input_mean == (30.0,) and model.input_std == (40.0,)
  # uint8 pixels and the same pixels as floats in 0-1 are one input
  again = model(jnp.asarray(frames, jnp.float32) / 255.0, train=False)
  np.testing.assert_allclose(again, logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
  ("model", "image_size", "message"),
  [
    (dict(depth=3), 20, "data.image_size=20 must be divisible by 2\\*\\*model.depth=8"),
    (dict(features=0), 32, "model.depth and model.features must be positive"),
    (dict(input_mean=(1.0, 2.0, 3.0)), 32, "model.input_mean must be one number"),
    (dict(input_std=0.0), 32, "model.input_std must be positive"),
  ],
)
def test_bad_settings_are_config_errors(model, image_size, message):
  with pytest.raises(ConfigError, match=message):
    jax.eval_shape(lambda: models.create_model(_config(image_size=image_size, **model)))


def test_the_registry_names_it_a_segmentation_family():
  assert "unet" in models.SEGMENTATION_FAMILIES and "unet" not in models.EF_FAMILIES
  assert models.model_class("unet") is unet.Model
