# The README's commands. Everything a fresh clone needs is created here:
# a virtualenv in .venv with pinned dependencies and the compiled op library.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := $(CURDIR)/requirements/constraints.txt
export PIP_CONSTRAINT := $(CONSTRAINTS)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
PYTEST_ARGS ?=

.PHONY: env build test lint cuda-check demo clean

$(VENV)/.deps: requirements/constraints.txt requirements/runtime.txt requirements/tests.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel -r requirements/runtime.txt -r requirements/tests.txt
	touch $@

env: $(VENV)/.deps

build: env
	$(PIP) install -q --no-build-isolation --no-deps -e .

lint: env
	$(VENV)/bin/ruff check .

test: build lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Compile-only check of the CUDA sources (no GPU needed, nvcc must be installed).
cuda-check: env
	$(PY) tools/check_cuda_compile.py

clean:
	rm -rf build *.egg-info mmdeform/_C*.so .cache
