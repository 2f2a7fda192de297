# Set-up for a fresh machine, then the main job or the tests. See README.md.
PY ?= python3
# The CPU build of torch: an unpinned torch pulls several GB of CUDA wheels. On a GPU machine,
# install the torch you want first and run `make setup TORCH_SPEC=` to keep it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup quickstart test test-fast

setup:
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"

quickstart: setup
	$(PY) -m automix bench kernels --quick

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
