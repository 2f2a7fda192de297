# Set-up for a fresh machine, then the main job or the tests. See README.md ("Set-up").
#
# Everything goes into a virtual environment ($(VENV), ./.venv by default) made from the lock
# ($(LOCK)): the exact versions CI tested, direct and transitive. `make lock` re-resolves it to the
# newest releases pyproject.toml's ranges allow (then run `make test` before committing it).
PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements.lock
# The CPU build of torch: an unpinned torch pulls several GB of CUDA wheels. On a GPU machine,
# install the torch you want into the environment first and run `make setup TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0
# Where `make lock` resolves (made afresh each time, removed after).
LOCK_VENV ?= .venv-lock

PY := $(VENV)/bin/python
# Recipes find the environment's programs (automix, mlflow, optuna-dashboard) first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: setup venv browser postgres quickstart test test-fast lock

# The install runs every time (cheap when nothing changed): the environment always matches the lock.
setup: venv browser postgres
	@if [ -n "$(LOCK)" ]; then \
	  want=$$(sed -n 's/^# python: //p' "$(LOCK)"); have=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  if [ -n "$$want" ] && [ "$$want" != "$$have" ]; then \
	    echo "error: $(LOCK) pins versions for Python $$want, but $(VENV) has Python $$have. Remove $(VENV) and" \
	         "run again with PYTHON=python$$want, or install from pyproject.toml's ranges with LOCK=" >&2; exit 2; fi; fi
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	@if [ -n "$(LOCK)" ]; then \
	  $(PY) -m pip install -q --no-deps -r "$(LOCK)" && $(PY) -m pip install -q --no-deps -e . ; \
	else $(PY) -m pip install -q -e ".[dev]"; fi
	$(PY) -m pip check

venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)

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

# Re-resolve the lock to the newest releases pyproject.toml allows: a clean environment, torch
# first (TORCH_SPEC), automix with its dev extra, then every installed version but torch's
# (the set-up installs torch itself) and automix's own. Upgrades happen here, on purpose.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	@if [ -n "$(TORCH_SPEC)" ]; then $(LOCK_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[dev]"
	$(LOCK_VENV)/bin/python -m pip check
	{ echo "# The versions CI tests, direct and transitive: \`make setup\` installs exactly these."; \
	  echo "# Re-resolved by \`make lock\` on $$(date -u +%F), on $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.system(), platform.machine())'),"; \
	  echo "# after $$($(LOCK_VENV)/bin/python -m pip freeze | grep -i '^torch==') (TORCH_SPEC; the set-up installs torch itself)."; \
	  echo "# python: $$($(LOCK_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|automix)=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK); run \`make test\` on it before committing"
