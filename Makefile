# make run   – set up (idempotent) and serve http://127.0.0.1:8010
# make test  – set up, install Chromium if missing, lint, run every test tier in a loopback-only namespace
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AVATAR := data/avatars/astronaut/avatar.json

.PHONY: setup run test test-deps lint unit integration e2e cluster bench clean

setup: $(STAMP) $(AVATAR)

# Editable install of this checkout (pyproject.toml): `serve run`, Ray's workers and the tests
# import deployments, clients and serve_app from here with no PYTHONPATH.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(AVATAR): | $(STAMP)
	$(BIN)/avatar-builder --astronaut --avatar-id astronaut --out data/avatars

run: setup
	$(BIN)/serve run configs/serve.yaml

test-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

lint: $(STAMP)
	$(BIN)/ruff check .

test: setup test-deps lint
	scripts/loopback_only.sh $(BIN)/python -m pytest tests

unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup
	scripts/loopback_only.sh $(BIN)/python -m pytest tests/integration

e2e: setup test-deps
	scripts/loopback_only.sh $(BIN)/python -m pytest tests/e2e

cluster: setup
	scripts/loopback_only.sh $(BIN)/python -m pytest tests/cluster

bench: setup
	$(BIN)/python -m bench.render_bench
	bench/run_bars.sh --trials 5

clean:
	rm -rf $(VENV) data/avatars/astronaut *.egg-info
