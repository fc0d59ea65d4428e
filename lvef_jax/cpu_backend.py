"""XLA's CPU backend: the one flag this project sets before JAX starts its backends.

By default XLA:CPU hands convolutions to YNNPACK. On the development machine (2 cores) YNNPACK
ran most of I3D-mini's convolutions on one core: the stem's 7x7 stride-2 convolution took
40 ms on two cores and on one (its CPU time equal to its wall time). XLA's own (Eigen)
convolutions use every core: 29 ms for the stem, 39 against 66 ms for a 3x3 convolution of 56
frames of 56x56 (64 channels), and its kernel gradient 58 against 240 ms. YNNPACK stays in
charge of matmuls and reductions: without it, XLA's own reductions (the BatchNorm statistics)
took ten times as long. So :func:`configure` takes convolutions out of YNNPACK's list,
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``. The I3D-mini train step
ran about 5 % faster (docs/benchmarks.md, "YNNPACK's convolutions").

XLA reads ``XLA_FLAGS`` when JAX starts its backends (the first computation or device query),
not when the process starts, so the entry points (``launch.py``, ``python -m lvef_jax.bench``)
call :func:`configure` first thing; code that imports the package itself can do the same. A
user's own ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins. The flag concerns
computations on the CPU only: on GPUs it changes nothing.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
FLAG = f"{YNN_FLAG}=-individual_convolution"


def configure(environ: MutableMapping[str, str] | None = None) -> bool:
  """Adds :data:`FLAG` to ``XLA_FLAGS`` in ``environ`` (default: this process's environment)
  unless it already sets YNNPACK's fusion types. Returns whether it added the flag.

  Raises RuntimeError when JAX's backends have already started in this process with
  ``environ`` being this process's environment: the flag would then be silently ignored.
  """
  own = environ is None
  environ = os.environ if environ is None else environ
  if _chooses_ynn(environ):
    return False
  if own:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      raise RuntimeError(
        "lvef_jax.cpu_backend.configure() must run before JAX starts its backends "
        "(the first computation or device query)"
      )
  environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {FLAG}".strip()
  return True


def _chooses_ynn(environ: Mapping[str, str]) -> bool:
  """Whether ``XLA_FLAGS`` in ``environ`` already chooses YNNPACK's fusion types."""
  return YNN_FLAG in environ.get("XLA_FLAGS", "")
