# The two set-up commands of the README: `make demo` and `make test`. Each works from a clean clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: browser tools demo test lint typecheck unit integration services-up services-down bench venv-runtime venv-dev clean

$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Runtime install (all protocol extras, no dev tools), from the lock.
$(VENV)/.runtime: requirements/runtime.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements/runtime.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

# Dev install (runtime + test/lint tools + the SeaweedFS binary), from the lock.
$(VENV)/.dev: requirements/dev.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements/dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(VENV)/.runtime $@

venv-runtime: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(BIN)/tidm demo

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

services-up: $(VENV)/.dev
	$(BIN)/python deploy/dev/services.py up

services-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/dev/services.py down; fi

unit: $(VENV)/.dev
	$(BIN)/pytest -m "not integration"

# kustomize, pinned and built once from the Go module proxy, renders deploy/k8s in tests/deploy.
.cache/bin/kustomize: deploy/tools/kustomize.sh
	bash deploy/tools/kustomize.sh >/dev/null

tools: .cache/bin/kustomize

# The console's browser tests drive Debian's chromium through Playwright (no browser download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then apt-get update && apt-get install -y chromium; fi

# Services are started before the suite and always stopped after it, whatever the outcome.
test: $(VENV)/.dev tools browser
	$(MAKE) lint typecheck
	$(BIN)/python deploy/dev/services.py up
	status=0; $(BIN)/pytest || status=$$?; \
	$(BIN)/python deploy/dev/services.py down; exit $$status

bench: $(VENV)/.dev
	$(BIN)/python deploy/dev/services.py up
	status=0; for b in bench/*.py; do $(BIN)/python $$b || status=$$?; done; \
	$(BIN)/python deploy/dev/services.py down; exit $$status

clean: services-down
	rm -rf $(VENV) .dev-services .demo .mypy_cache .ruff_cache .pytest_cache
