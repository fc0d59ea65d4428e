"""Faster forms of the models' convolutions and pooling for XLA's CPU backend.

The same mathematics as XLA's plain operations (``lvef_jax.models.layers.XLA_OPS``), the same
parameters, results equal up to float rounding; only the form differs, chosen for the shapes
XLA:CPU runs fastest (``conv``, ``pool``, ``winograd``; docs/benchmarks.md measures each).
``config.compute.kernels`` chooses them (``lvef_jax.models.ops_for``: ``auto`` on the CPU
backend, or ``cpu``); GPUs run XLA's plain operations, so nothing here is on their path.
"""

from lvef_jax.kernels import conv, pool
from lvef_jax.models import layers

CPU_OPS = layers.Ops(conv=conv.Conv, max_pool=pool.max_pool, each_conv=conv.each_conv, name="cpu")
