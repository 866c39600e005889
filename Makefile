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
# pytest-xdist processes for `make test` (2: the CI machine's cores; 0: one process)
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: env build test lint cuda-check demo clean test-hf-latest

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

# the import before pytest lets one process write yapf's grammar cache (mmengine's config imports
# yapf; it pickles its grammar under the user's cache folder on first use): two xdist workers
# writing and reading it at once made a fresh clone's collection fail with "Ran out of input"
test: build lint
	$(PY) -c "import mmengine.config"
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The HuggingFace tests against the newest transformers (the pins above test 4.57.6): a second
# virtualenv, .venv-hf, with the same pins except transformers and its hub/tokenizers packages.
# It keeps the transformers it was made with: `rm -rf .venv-hf` picks up a newer release.
HF_VENV := .venv-hf
HF_CONSTRAINTS := $(CURDIR)/$(HF_VENV)/constraints.txt
HF_TESTS ?= tests/test_hf_parity.py tests/test_hf_ties.py tests/analysis/test_compare_hf.py \
    tests/tools/test_hf_tools_hostile.py

$(HF_VENV)/.built: requirements/constraints.txt requirements/runtime.txt requirements/tests.txt \
		setup.py $(OP_SOURCES)
	$(PYTHON) -m venv $(HF_VENV)
	grep -v -E '^(transformers|huggingface_hub|tokenizers)==' $(CONSTRAINTS) > $(HF_CONSTRAINTS)
	PIP_CONSTRAINT=$(HF_CONSTRAINTS) $(HF_VENV)/bin/pip install -q torch==2.13.0
	PIP_CONSTRAINT=$(HF_CONSTRAINTS) $(HF_VENV)/bin/pip install -q setuptools wheel \
		-r requirements/runtime.txt -r requirements/tests.txt
	PIP_CONSTRAINT=$(HF_CONSTRAINTS) $(HF_VENV)/bin/pip install -q --no-build-isolation \
		--no-deps -e .
	touch $@

test-hf-latest: $(HF_VENV)/.built
	$(HF_VENV)/bin/python -c 'import transformers; print("transformers", transformers.__version__)'
	$(HF_VENV)/bin/python -m pytest $(HF_TESTS) $(PYTEST_ARGS)

# Compile-only check of the CUDA sources (no GPU needed, nvcc must be installed).
cuda-check: env
	$(PY) tools/check_cuda_compile.py

# The CUDA kernels emulated on the CPU under ThreadSanitizer and AddressSanitizer + UBSan
# (README, "The CUDA kernels on a CPU"); about 2 minutes, not part of `make test`.
.PHONY: cuda-emu-sanitize
cuda-emu-sanitize: build
	$(PY) -m pytest tests/ops/cuda_cpu -m cuda_emu_sanitize -v $(PYTEST_ARGS)

# Synthetic data -> training -> evaluation on the CPU; ends with a one-line summary.
demo: build
	$(PY) tools/demo.py $(DEMO_ARGS)

# The GPU path in one command (README, "Checking a GPU machine"): on a CUDA machine with its
# own python3 + torch and the wheels of .dev_scripts/gpu_wheels.sh in .whl/. DRY_RUN=1: the same
# steps on this CPU with .venv's python and tiny sizes. GPU_CHECK_ARGS: e.g. --steps build.
GPU_PYTHON ?= python3
DRY_RUN ?=
GPU_CHECK_ARGS ?=
.PHONY: gpu-check gpu-wheels
gpu-check: $(if $(filter 1,$(DRY_RUN)),build gpu-wheels)
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} \
	$(if $(filter 1,$(DRY_RUN)),$(PY) .dev_scripts/run_gpu_check.py --dry-run,$(GPU_PYTHON) .dev_scripts/run_gpu_check.py) \
	$(GPU_CHECK_ARGS)

# .whl/ for the GPU machine, downloaded where pip reaches an index, only when it holds no wheel
# (a dry run on a clean clone fetches them itself; the GPU machine reaches no index: carry .whl)
gpu-wheels:
	@ls .whl/*.whl >/dev/null 2>&1 || bash .dev_scripts/gpu_wheels.sh

clean:
	rm -rf build *.egg-info mmdeform/_C*.so .cache $(VENV)/.built $(HF_VENV)/.built
