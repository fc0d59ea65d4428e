"""TensorBoard event files, written with TensorFlow's summary writer on CPU.

Imported only by the training driver (which already runs the tf.data pipeline), never by model or
step code.
"""

from __future__ import annotations

import pathlib


class SummaryWriter:
  """Scalar summaries for one run directory; a no-op when ``enabled`` is False (other processes)."""

  def __init__(self, logdir: pathlib.Path, enabled: bool = True):
    self._writer = None
    if enabled:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      self._tf = tf
      self._writer = tf.summary.create_file_writer(str(logdir))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
