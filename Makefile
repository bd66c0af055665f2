# puhui: two commands from a fresh clone (see README):
#   make demo   simulated site -> gateway -> aggregator -> InfluxDB -> reductions
#   make test   ruff, mypy and the test suite (real Mosquitto and InfluxDB on loopback)
#   make deb    the Debian package in build/ (DEB_ARCH=arm64 for a Raspberry Pi; docs/install.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-peers system-deps venv clean deb

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

demo: venv system-deps
	$(BIN)/puhui demo $(DEMO_ARGS)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy common evidence drivers gateway firmware_sim aggregator testbed puhui

pytest: venv system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: venv system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

DEB_ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)

deb: venv
	PYTHON=$(BIN)/python packaging/build-deb --arch $(DEB_ARCH) --out build

clean:
	rm -rf $(VENV) build *.egg-info

# Peers side by side (bench/peers): puhui's gateway, ThingsBoard IoT Gateway, collectd, a bare
# pymodbus loop; several minutes. BENCH_PEERS_ARGS='--quick' for a smoke run.
bench-peers: venv system-deps
	@bash scripts/bench-deps.sh
	$(BIN)/python -m bench.peers --write-results $(BENCH_PEERS_ARGS)
