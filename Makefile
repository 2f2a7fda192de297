# Set-up for a fresh machine, then the main job or the tests. See README.md.
PY ?= python3
# The CPU build of torch: an unpinned torch pulls several GB of CUDA wheels. On a GPU machine,
# install the torch you want first and run `make setup TORCH_SPEC=` to keep it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup browser postgres quickstart test test-fast

setup: browser postgres
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"

# Headless chromium renders the report PNGs (kaleido) and is used by the report tests.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "note: chromium not found and cannot be installed here; report PNGs will be skipped"; fi; }

# A PostgreSQL server for the Optuna-storage test (tests/study/test_postgres.py starts its own).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	    else echo "note: PostgreSQL not found and cannot be installed here; its storage test will be skipped"; fi; }

# The main job: the quickstart study (built-in tiny model, local Ray, SQLite stores in ./), its
# Pareto front printed, the best configuration under the budget exported to exported/quickstart.
quickstart: setup
	$(PY) -m automix search studies/quickstart.yaml --export exported/quickstart

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
