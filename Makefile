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
DEMO_ARGS ?=

.PHONY: env build test lint cuda-check demo clean

$(VENV)/.deps: requirements/constraints.txt requirements/runtime.txt requirements/tests.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel -r requirements/runtime.txt -r requirements/tests.txt
	touch $@

OP_SOURCES := $(wildcard ops/*.cpp ops/*/*.h ops/*/*.cpp ops/*/*.cu ops/*/*.cuh)

env: $(VENV)/.deps

# Rebuilt only when the op sources or setup.py change.
$(VENV)/.built: $(VENV)/.deps setup.py $(OP_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

lint: env
	$(VENV)/bin/ruff check .

test: build lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Compile-only check of the CUDA sources (no GPU needed, nvcc must be installed).
cuda-check: env
	$(PY) tools/check_cuda_compile.py

# Synthetic data -> training -> evaluation on the CPU; ends with a one-line summary.
demo: build
	$(PY) tools/demo.py $(DEMO_ARGS)

# The GPU path in one command (README, "Checking a GPU machine"): on a CUDA machine with its
# own python3 + torch and the wheels of .dev_scripts/gpu_wheels.sh in .whl/. DRY_RUN=1: the same
# steps on this CPU with .venv's python and tiny sizes. GPU_CHECK_ARGS: e.g. --steps build.
GPU_PYTHON ?= python3
DRY_RUN ?=
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check: $(if $(filter 1,$(DRY_RUN)),build)
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} \
	$(if $(filter 1,$(DRY_RUN)),$(PY) .dev_scripts/run_gpu_check.py --dry-run,$(GPU_PYTHON) .dev_scripts/run_gpu_check.py) \
	$(GPU_CHECK_ARGS)

clean:
	rm -rf build *.egg-info mmdeform/_C*.so .cache $(VENV)/.built
