"""The device mesh and how batches and state are laid out on it (jit + NamedSharding, no pmap)."""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lvef_jax.errors import ConfigError

DATA_AXIS = "data"
# A several-member run's mesh (lvef_jax/training/members.py) also splits the members.
MEMBERS_AXIS = "members"


def member_devices(members: int, devices: int) -> int:
  """How many ways a run of ``members`` members splits them over ``devices`` devices: the
  largest count dividing both (8 members on 8 GPUs: one each, every batch whole on its GPU;
  2 members on 8: 2 x 4 devices), and 1 with several processes (each process feeds its rows
  of every member's batch)."""
  if members <= 1 or jax.process_count() > 1:
    return 1
  return math.gcd(members, devices)


def make_mesh(devices=None, members: int = 1) -> Mesh:
  """The device mesh (default devices: every device of every process): 1-D, ``data``, for one
  run; ``members`` x ``data`` for a run of several members (`member_devices`)."""
  devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
  if members <= 1:
    return Mesh(devices, (DATA_AXIS,))
  split = member_devices(members, devices.size)
  return Mesh(devices.reshape(split, -1), (MEMBERS_AXIS, DATA_AXIS))


def _member_axis(mesh: Mesh, members: int) -> tuple:
  if members <= 1:
    return ()
  return (MEMBERS_AXIS if MEMBERS_AXIS in mesh.axis_names else None,)


def batch_sharding(mesh: Mesh, members: int = 1) -> NamedSharding:
  """The batch axis split over ``data``, everything else whole: the leading axis, or the one
  after the member axis of a several-member batch (``[members, B, ...]``; the member axis
  split over the mesh's ``members`` axis, where it has one)."""
  return NamedSharding(mesh, PartitionSpec(*_member_axis(mesh, members), DATA_AXIS))


def state_sharding(mesh: Mesh, members: int = 1) -> NamedSharding:
  """A train state's layout: replicated, or for several members each member's arrays on its
  part of the ``members`` axis (replicated over ``data``)."""
  return NamedSharding(mesh, PartitionSpec(*_member_axis(mesh, members)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> int:
  """Returns this process's share of a global batch, or explains why it cannot be split."""
  devices = mesh.shape[DATA_AXIS]  # a batch is split over `data` (each member's, with members)
  if batch_size < 1:  # 0 would pass the divisibility test and divide by zero later.
    raise ConfigError(f"{what} must be at least 1, got {batch_size}")
  if batch_size % devices:
    raise ConfigError(
      f"{what} {batch_size} is not divisible by the {devices} devices of the mesh's data axis"
    )
  return batch_size // jax.process_count()


def shard_batch(
  batch: Mapping[str, np.ndarray], mesh: Mesh, members: int = 1
) -> dict[str, jax.Array]:
  """Puts this process's numpy batch on the devices as one global array per key (a
  several-member batch: ``[members, B, ...]``)."""
  sharding = batch_sharding(mesh, members)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in batch.items()
  }


def device_prefetch(
  batches: Iterable[Mapping[str, np.ndarray]],
  mesh: Mesh,
  *,
  keys: tuple[str, ...],
  size: int = 2,
  members: int = 1,
) -> Iterator[tuple[dict, dict]]:
  """Yields ``(host_batch, device_batch)`` with ``size`` batches already in flight to devices.

  The transfers are asynchronous, so the next batches travel while the current step runs.
  Only ``keys`` go to the devices; the host batch keeps everything (file names, masks).
  """
  queue = []
  for batch in batches:
    queue.append((batch, shard_batch({k: batch[k] for k in keys}, mesh, members)))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue
