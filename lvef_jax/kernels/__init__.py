"""Faster forms of the models' convolutions for XLA's CPU backend.

The same mathematics as XLA's plain convolutions (``lvef_jax.models.layers.XLA_OPS``), the same
parameters, results equal up to float rounding; only the form differs, chosen for the shapes
XLA:CPU runs fastest (``conv``, ``winograd``; docs/benchmarks.md measures each). The pools are
the models' own (``lvef_jax.models.pooling``), on every backend.
``config.compute.kernels`` chooses them (``lvef_jax.models.ops_for``: ``auto`` on the CPU
backend, or ``cpu``); GPUs run XLA's plain operations, so nothing here is on their path.
"""

from lvef_jax.kernels import conv
from lvef_jax.models import layers

CPU_OPS = layers.Ops(conv=conv.Conv, each_conv=conv.each_conv, name="cpu")
