"""The device mesh and how batches and state are laid out on it (jit + NamedSharding, no pmap)."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lvef_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process) named ``data``."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, members: int = 1) -> NamedSharding:
  """The batch axis split over ``data``, everything else whole: the leading axis, or the one
  after the member axis of a several-member batch (``[members, B, ...]``)."""
  lead = (None,) if members > 1 else ()
  return NamedSharding(mesh, PartitionSpec(*lead, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> int:
  """Returns this process's share of a global batch, or explains why it cannot be split."""
  devices = mesh.devices.size
  if batch_size < 1:  # 0 would pass the divisibility test and divide by zero later.
    raise ConfigError(f"{what} must be at least 1, got {batch_size}")
  if batch_size % devices:
    raise ConfigError(f"{what} {batch_size} is not divisible by the {devices} devices of the mesh")
  return batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts this process's numpy batch on the devices as one global array per key."""
  sharding = batch_sharding(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in batch.items()
  }


def device_prefetch(
  batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, *, keys: tuple[str, ...], size: int = 2
) -> Iterator[tuple[dict, dict]]:
  """Yields ``(host_batch, device_batch)`` with ``size`` batches already in flight to devices.

  The transfers are asynchronous, so the next batches travel while the current step runs.
  Only ``keys`` go to the devices; the host batch keeps everything (file names, masks).
  """
  queue = []
  for batch in batches:
    queue.append((batch, shard_batch({k: batch[k] for k in keys}, mesh)))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue
