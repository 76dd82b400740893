# gruflow — every target builds .venv from uv.lock first; nothing is installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced

.PHONY: env run test test-fast lint format bench serve browser

env: $(STAMP)

$(UV):
	$(PYTHON) -m venv .tools && .tools/bin/pip install --progress-bar on uv

$(STAMP): uv.lock pyproject.toml | $(UV)
	@echo "gruflow: building $(VENV) from uv.lock — the first time takes minutes (download, install, then bytecode compilation, which prints only when done)"
	$(UV) sync --frozen
	@touch $@

# GNU make prints `make: *** [Makefile:N: run] Error 1` after any failing recipe (job.c; no
# option or special target turns it off). Stopping make with a signal from the recipe instead
# races with make's own wait (measured: half the time "wait: No child processes" lines), so the
# line stays; gruflow's own one line comes first (README, Failures).
run: $(STAMP)  ## run the whole pipeline on the configured source (default: built-in corpus)
	@$(VENV)/bin/gruflow run

# Debian's chromium for the model-card browser test, when this user may install it (root with
# apt-get); otherwise that one test is skipped and says why.
APT := timeout 600 apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { $(APT) || { apt-get update -q >/dev/null 2>&1 && $(APT); }; }; } \
	  || echo "chromium not installed: tests/test_card.py's browser test will be skipped"

test: $(STAMP) browser  ## the CI suite (unit + end-to-end)
	$(VENV)/bin/pytest -q --durations=25

test-fast: $(STAMP)  ## the suite without slow-marked tests
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)  ## ruff check + the format check CI would apply
	$(VENV)/bin/ruff check components flows tests bench
	$(VENV)/bin/ruff format --check components flows tests bench

format: $(STAMP)  ## ruff format + the import order fix (what the pre-commit hooks run)
	$(VENV)/bin/ruff format components flows tests bench
	$(VENV)/bin/ruff check --fix --select I components flows tests bench

QUALITY_ARGS ?= --quick  # bench/quality.py's token budget; QUALITY_ARGS= for the whole train split
BENCHES := data embed train serve noop  # bench/<name>.py, each writing reports/bench/<name>.json; add new ones here

bench: $(STAMP)  ## benchmarks against the bare library calls -> reports/bench/, then the floors
	@for b in $(BENCHES); do $(VENV)/bin/python -m bench.$$b || exit 1; done
	$(VENV)/bin/python -m bench.quality $(QUALITY_ARGS)  # trains 7 models: see README "Quality"
	$(VENV)/bin/python -m bench.common  # exits 1 naming each row below its floor (bench/common.py)

serve: $(STAMP)  ## serve the champion on serve.host:serve.port with gruflow's request limits
	$(VENV)/bin/gruflow serve
