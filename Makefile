# One command installs and runs the gateway, one installs and runs every test.
# `make demo`: the gateway in front of two fake models (no API key needed; chat requests get answers).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= examples/llmroute.yaml
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run demo test install lint bench clean chromium redis

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/llmroute serve --config $(CONFIG) --host $(HOST) --port $(PORT)

demo: $(STAMP)
	$(BIN)/llmroute serve --config examples/loopback.yaml --fake-upstream --host $(HOST) --port $(PORT)

# headless Chromium from the OS packages for the dashboard's browser tests (skips apt when present)
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# redis-server from the OS packages for the shared-state (replicas) tests (skips apt when present)
REDIS_SERVER ?= /usr/bin/redis-server
redis:
	@test -x $(REDIS_SERVER) || command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; } || \
	  echo "redis-server could not be installed: tests/test_state_redis*.py will skip"

test: $(STAMP) chromium redis
	$(BIN)/ruff check src tests benchmarks scripts
	LLMROUTE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/latency.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
