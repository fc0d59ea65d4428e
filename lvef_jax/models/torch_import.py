"""PyTorch weights into a model that names its arrays as torchvision does.

``config.model.init_from=PATH`` reads a file written by ``torch.save``: torchvision's
``state_dict`` (``r2plus1d_18`` trained on Kinetics-400, ...), or an EchoNet-Dynamic checkpoint
(a dict whose ``state_dict`` has DataParallel's ``module.`` prefix). A model that can take them
has ``torch_parameters() -> {torch name: (module, attribute)}``. Its output layer (the names
under its ``torch_head`` prefix: ``fc.`` unless the model says otherwise, DeepLabV3's
``classifier.4.``) of another width (Kinetics' 400 classes, COCO's 21) is skipped with a log
line and keeps its fresh initialisation, as are torchvision's auxiliary classifier's tensors
(``aux_classifier.``) where the model has none; every other tensor must match a parameter in
name and shape, and every parameter must be in the file, or nothing is loaded and one error
lists every mismatch.

torch is needed only here, to read the file (the ``peer`` extra, or any PyTorch install).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from absl import logging
from flax import nnx

from lvef_jax.errors import ConfigError

DATA_PARALLEL_PREFIX = "module."
SKIPPED_SUFFIXES = ("num_batches_tracked",)  # PyTorch's BatchNorm step counter: no weight
DEFAULT_HEAD = "fc."  # the output layer's prefix of a model without ``torch_head``
AUX_PREFIX = "aux_classifier."  # torchvision's segmentation models' training-only classifier


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch weights file as float32 numpy arrays, names without
  DataParallel's prefix."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"model.init_from={path}: no such file")
  try:
    import torch
  except ImportError:
    raise ConfigError(
      f"model.init_from={path}: reading PyTorch weights needs torch "
      "(pip install -e .[peer], or any PyTorch build)"
    ) from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many kinds for a file that is not its own
    raise ConfigError(f"model.init_from={path}: not a PyTorch weights file ({e})") from e
  if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
    loaded = loaded["state_dict"]  # an EchoNet-Dynamic checkpoint: epoch, optimizer, ...
  if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
    raise ConfigError(
      f"model.init_from={path}: expected a state_dict (names to tensors) or a checkpoint "
      "dict holding one under 'state_dict'"
    )
  tensors = {}
  for name, tensor in loaded.items():
    if name.startswith(DATA_PARALLEL_PREFIX):
      name = name[len(DATA_PARALLEL_PREFIX) :]
    if name.endswith(SKIPPED_SUFFIXES):
      continue
    tensors[name] = tensor.detach().to(torch.float32).numpy()
  return tensors


def to_flax(array: np.ndarray, attribute: str) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax array it fills: convolution kernels
  ``[out, in, *k]`` to ``[*k, in, out]``, dense ``[out, in]`` to ``[in, out]``."""
  if attribute == "kernel" and array.ndim >= 3:
    return np.transpose(array, (*range(2, array.ndim), 1, 0))
  if attribute == "kernel" and array.ndim == 2:
    return array.T
  return array


def load_into(model: nnx.Module, path: str | pathlib.Path) -> None:
  """Fills ``model``'s arrays from the PyTorch file at ``path`` (see the module docstring)."""
  if not hasattr(model, "torch_parameters"):
    raise ConfigError(
      f"model.init_from={path}: model {type(model).__module__} has no PyTorch layout; "
      "only the torchvision models (the video ResNets, DeepLabV3) import PyTorch weights"
    )
  tensors = read_state_dict(path)
  targets = model.torch_parameters()
  head = getattr(model, "torch_head", DEFAULT_HEAD)
  has_aux = any(name.startswith(AUX_PREFIX) for name in targets)
  problems, values, skipped, aux = [], {}, [], []
  for name, array in tensors.items():
    if name.startswith(AUX_PREFIX) and not has_aux:
      aux.append(f"{name} {tuple(array.shape)}")
      continue
    if name not in targets:
      problems.append(f"{name} {tuple(array.shape)}: no such parameter in the model")
      continue
    module, attribute = targets[name]
    current = getattr(module, attribute)
    value = to_flax(array, attribute)
    if value.shape != tuple(current.shape):
      if name.startswith(head):
        skipped.append(f"{name} {tuple(array.shape)}")
        continue
      problems.append(
        f"{name}: shape {tuple(array.shape)} in the file, the model's is "
        f"{tuple(to_torch_shape(current.shape, attribute))}"
      )
      continue
    values[name] = value
  missing = sorted(set(targets) - set(tensors))
  problems += [f"{name}: not in the file" for name in missing]
  if problems:
    listed = "\n  ".join(problems)
    raise ConfigError(
      f"model.init_from={path}: {len(problems)} tensor(s) do not match the model "
      f"({type(model).__name__} {getattr(model, 'arch', '')}):\n  {listed}"
    )
  for name, value in values.items():
    module, attribute = targets[name]
    variable = getattr(module, attribute)
    old = variable[...]  # keep the array's dtype and placement (it may be sharded)
    variable[...] = jax.device_put(np.asarray(value, dtype=old.dtype), old.sharding)
  if aux:
    logging.info(
      "model.init_from=%s: %s skipped (the auxiliary classifier; the model has none)",
      path,
      ", ".join(aux),
    )
  if skipped:
    logging.info(
      "model.init_from=%s: %s skipped (another classifier; the output layer starts fresh)",
      path,
      ", ".join(skipped),
    )
  logging.info("model.init_from=%s: %d tensors loaded", path, len(values))


def to_torch_shape(shape, attribute: str) -> tuple[int, ...]:
  """The PyTorch shape of a Flax array's shape (for messages)."""
  shape = tuple(shape)
  if attribute == "kernel" and len(shape) >= 3:
    return (shape[-1], shape[-2], *shape[:-2])
  if attribute == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return shape
