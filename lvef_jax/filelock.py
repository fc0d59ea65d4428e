"""Advisory file locks between processes (``fcntl.flock``): released by the kernel when the
holder exits, however it exits (SIGKILL included), so a crash never leaves a stale lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from typing import Iterator


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, wait: bool = True) -> Iterator[bool]:
  """Holds an exclusive lock on ``path`` (created if needed) for the ``with`` block.

  Args:
    path: the lock file; its folder is created.
    wait: block until the lock is free; if False, yield False at once when another process
      holds it (the block then runs without the lock and should do nothing).

  Yields:
    Whether this process holds the lock.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
