# make run   – set up (idempotent) and serve http://127.0.0.1:8010
# make test  – set up, install Chromium if missing, run every test tier in a loopback-only namespace
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AVATAR := data/avatars/astronaut/avatar.json
export PYTHONPATH := $(CURDIR)

.PHONY: setup run test test-deps unit integration e2e bench clean

setup: $(STAMP) $(AVATAR)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

$(AVATAR): | $(STAMP)
	$(BIN)/python -m deployments.avatar.builder --astronaut --avatar-id astronaut --out data/avatars

run: setup
	$(BIN)/serve run configs/serve.yaml

test-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

test: setup test-deps
	scripts/loopback_only.sh $(BIN)/python -m pytest tests

unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup
	scripts/loopback_only.sh $(BIN)/python -m pytest tests/integration

e2e: setup test-deps
	scripts/loopback_only.sh $(BIN)/python -m pytest tests/e2e

bench: setup
	$(BIN)/python bench/render_bench.py
	bench/run_bars.sh --trials 5

clean:
	rm -rf $(VENV) data/avatars/astronaut
