# `make demo` and `make test` work on a fresh clone with only Python >= 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Optional extras installed with the project (pyproject.toml): `make test EXTRAS=test,peer` also
# runs the PyTorch peer's tests (CI does; torch's CPU build is a large download elsewhere).
EXTRAS ?= test
# Test processes (pytest-xdist): the tests keep about one core busy each, so two use CI's two
# cores (`make test TEST_WORKERS=auto` for one per core elsewhere). Each test file runs whole in
# one process (`--dist loadfile`): a file's shared runs (module fixtures) are trained once, not
# once in each process that gets some of its tests.
TEST_WORKERS ?= 2
TEST_DIST := -n $(TEST_WORKERS) --dist loadfile

# glibc's malloc asks for transparent huge pages: XLA:CPU maps each step's temporaries afresh,
# and in 4 KiB pages that costs a fifth of a step's CPU time (lvef_jax/hostmem.py). Read at process start.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install demo test test-fast gpu-check lint format clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	$(PY) launch.py --config=configs/quickstart.py --workdir=runs/quickstart

# One style: the formatter and linter configured in pyproject.toml ([tool.ruff]).
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Eight fake CPU devices, so the sharded code paths run as they do on a multi-GPU machine; on
# two cores they may reach a collective minutes apart, so XLA may wait that long (see conftest).
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8 \
	--xla_cpu_collective_call_terminate_timeout_seconds=600
test: install lint
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -q $(TEST_DIST) --durations=10

# For iterating: the in-process unit tests only (no launched processes, no whole runs).
test-fast: install
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -q $(TEST_DIST) -m "not slow" --durations=5

# The GPU program without a GPU: JAX's CUDA build (the `gpu` extra, 3 GB of wheels) in a
# virtual environment of its own, so the everyday one stays as it is; one train step of every
# model family compiled for an H100 (docs/benchmarks.md, "The GPU program on paper"), then the
# tests that need the CUDA build.
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_INSTALLED := $(GPU_VENV)/.installed
GPU_TARGET ?= h100

$(GPU_INSTALLED): pyproject.toml
	test -x $(GPU_PY) || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install --quiet --upgrade pip
	$(GPU_PY) -m pip install --quiet -e ".[gpu,test]"
	touch $(GPU_INSTALLED)

gpu-check: $(GPU_INSTALLED)
	$(GPU_PY) -m lvef_jax.bench --target=$(GPU_TARGET) --check
	JAX_PLATFORMS=cpu JAX_ENABLE_COMPILATION_CACHE=false $(GPU_PY) -m pytest -q -m gpu_compile \
		-p no:cacheprovider tests/test_gpu_program.py

clean:
	rm -rf runs/quickstart data
