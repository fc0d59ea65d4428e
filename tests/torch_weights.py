"""Helpers shared by the tests of the models that load PyTorch weights (test_r2plus1d.py,
test_deeplabv3.py): what was logged, what was loaded, the jitted inference forward pass."""

import jax
import numpy as np
from flax import nnx

from lvef_jax.models import torch_import


@nnx.jit
def eval_forward(model, inputs):
  """``model``'s inference output (BatchNorm's running averages)."""
  return model(inputs, train=False)


def capture_logs(monkeypatch) -> list[str]:
  """The lines ``torch_import`` logs from now on, formatted."""
  logged = []
  monkeypatch.setattr(torch_import.logging, "info", lambda fmt, *a: logged.append(fmt % a))
  return logged


def assert_loaded(model, state_dict, *, but=()):
  """Every array of ``model`` but those named in ``but`` holds ``state_dict``'s tensor."""
  for name, (module, attribute) in model.torch_parameters().items():
    if name not in but:
      value = torch_import.to_flax(state_dict[name].numpy(), attribute)
      np.testing.assert_array_equal(np.array(getattr(module, attribute)[...]), value, name)


def arrays(model) -> list[np.ndarray]:
  """Every array of ``model``'s state, in order."""
  return [np.array(leaf) for leaf in jax.tree.leaves(nnx.state(model))]
