"""Host memory on XLA's CPU backend: glibc's malloc and transparent huge pages.

XLA:CPU allocates one buffer for all of a step's temporaries when the step starts and frees it
when the step ends: 531 MB for I3D-mini's batch-4 train step. glibc's malloc serves a request
that large with a fresh ``mmap`` and returns it with ``munmap``, so the kernel maps (and zeroes)
every 4 KiB page of it again in every step: 139,000 page faults a step on the development
machine, a fifth of the step's CPU time (docs/benchmarks.md, "The host allocator"). Where the
kernel offers transparent huge pages on request (``madvise``, the usual default), glibc's
tunable ``glibc.malloc.hugetlb=1`` asks for them, and a step then faults 700 to 2,700 times.

A tunable is read when the process starts, so it cannot be set from Python:
``make demo``, ``make test`` and ``benchmarks/cpu_leads.sh`` export it, and
:func:`allocator_hint` says how when a CPU run goes without it.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: pathlib.Path = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or None
  where the kernel has no such setting."""
  try:
    text = path.read_text()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def allocator_hint(
  environ: dict[str, str] | None = None,
  mode: str | None = None,
  libc: str | None = None,
  backend: str | None = None,
) -> str | None:
  """What to export for faster steps on XLA's CPU backend, or None where nothing would help:
  another backend, not Linux with glibc, huge pages never or always given (``mode``), or the
  tunable already set. The arguments default to this process's environment, the kernel's mode,
  the C library and JAX's default backend."""
  if backend is None:
    import jax

    backend = jax.default_backend()
  if backend != "cpu":
    return None
  environ = os.environ if environ is None else environ
  libc = platform.libc_ver()[0] if libc is None and sys.platform == "linux" else libc
  if libc != "glibc" or "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return None
  if (thp_mode() if mode is None else mode) != "madvise":
    return None
  tunables = ":".join(t for t in (environ.get("GLIBC_TUNABLES"), TUNABLE) if t)
  return (
    f"XLA:CPU maps each step's temporaries afresh, one 4 KiB page at a time; start the process "
    f"with GLIBC_TUNABLES={tunables} to have them in huge pages, for far fewer page faults "
    f"and a faster step (docs/benchmarks.md, 'The host allocator')"
  )


def minor_page_faults() -> int | None:
  """This process's minor page faults so far (pages the kernel mapped without reading disk),
  or None where the OS does not count them for Python (no ``resource`` module)."""
  try:
    import resource
  except ImportError:
    return None
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
