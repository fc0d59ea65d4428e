"""The host-allocator hint (lvef_jax/hostmem.py) and the bench's page-fault count."""

import mmap
import pathlib

import pytest

from lvef_jax import hostmem

CPU_GLIBC = {"libc": "glibc", "backend": "cpu"}


@pytest.mark.parametrize(
  "text, mode",
  [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("garbage\n", None),
  ],
)
def test_thp_mode_reads_the_kernel_s_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert hostmem.thp_mode(path) == mode
  assert hostmem.thp_mode(tmp_path / "missing") is None


def test_the_hint_names_the_tunable_only_where_it_would_help():
  hint = hostmem.allocator_hint({}, "madvise", **CPU_GLIBC)
  assert f"GLIBC_TUNABLES={hostmem.TUNABLE}" in hint
  # The user's own tunables are kept in front of ours.
  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert f"GLIBC_TUNABLES=glibc.malloc.arena_max=2:{hostmem.TUNABLE}" in hostmem.allocator_hint(
    other, "madvise", **CPU_GLIBC
  )
  # Already set, huge pages always or never given, another C library or another backend.
  assert hostmem.allocator_hint({"GLIBC_TUNABLES": hostmem.TUNABLE}, "madvise", **CPU_GLIBC) is None
  assert hostmem.allocator_hint({}, "always", **CPU_GLIBC) is None
  assert hostmem.allocator_hint({}, "never", **CPU_GLIBC) is None
  assert hostmem.allocator_hint({}, "madvise", libc="", backend="cpu") is None
  assert hostmem.allocator_hint({}, "madvise", libc="glibc", backend="gpu") is None


def test_make_exports_the_tunable_the_hint_names():
  makefile = (pathlib.Path(__file__).resolve().parents[1] / "Makefile").read_text()
  assert f"export GLIBC_TUNABLES ?= {hostmem.TUNABLE}" in makefile


def test_minor_page_faults_count_pages_first_touched():
  # A fresh anonymous mapping, not malloc's memory (which a long test session may have touched
  # before), written once in every 4 KiB page.
  size = 64 << 20
  with mmap.mmap(-1, size) as pages:
    before = hostmem.minor_page_faults()
    for offset in range(0, size, 4096):
      pages[offset] = 1
    after = hostmem.minor_page_faults()
  assert after - before >= 32  # 16,384 pages at 4 KiB, at least 32 in 2 MiB huge pages
