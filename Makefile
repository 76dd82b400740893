# gruflow — every target builds .venv from uv.lock first; nothing is installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced

.PHONY: env run test test-fast lint bench serve

env: $(STAMP)

$(UV):
	$(PYTHON) -m venv .tools && .tools/bin/pip install --progress-bar on uv

$(STAMP): uv.lock pyproject.toml | $(UV)
	@echo "gruflow: building $(VENV) from uv.lock — the first time takes minutes (download, install, then bytecode compilation, which prints only when done)"
	$(UV) sync --frozen
	@touch $@

run: $(STAMP)  ## run the whole pipeline on the configured source (default: built-in corpus)
	$(VENV)/bin/gruflow run

test: $(STAMP)  ## the CI suite (unit + end-to-end)
	$(VENV)/bin/pytest -q

test-fast: $(STAMP)  ## the suite without slow-marked tests
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check components flows tests bench

BENCHES := data embed train serve  # bench/<name>.py, each writing reports/bench/<name>.json; add new ones here

bench: $(STAMP)  ## benchmarks against the bare library calls -> reports/bench/, then the floors
	@for b in $(BENCHES); do $(VENV)/bin/python -m bench.$$b || exit 1; done
	$(VENV)/bin/python -m bench.common  # exits 1 naming each row below its floor (bench/common.py)

serve: $(STAMP)  ## serve the champion on serve.host:serve.port with gruflow's request limits
	$(VENV)/bin/gruflow serve
