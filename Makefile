# fencelock — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MODULE := target/release/libfencelock.so

.PHONY: setup build run test test-unit test-integration test-python test-node lint bench bench-quick clean

# Installs what the build and the tests need (redis-server, redis-tools,
# redis-sentinel, libclang-dev), skipping what is already there.
setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p fencelock

# Builds the module and serves it on 127.0.0.1:6379 in the foreground.
run: build
	redis-server redis.conf.example --loadmodule $(CURDIR)/$(MODULE)

# Formatting, lints, unit tests, then every integration test against real
# redis-server processes (single servers, replicas, Sentinel, Cluster).
test: build lint
	$(CARGO) test --workspace --all-targets --no-fail-fast -- --test-threads=2
	$(MAKE) --no-print-directory test-python
	$(MAKE) --no-print-directory test-node

# The Python client (clients/python): a virtual environment in
# clients/python/.venv with the package and its pinned test extras, then
# ruff, mypy --strict and its pytest suite against real redis-server
# processes with the module.
test-python: build
	@bash scripts/setup.sh python
	cd clients/python && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/pytest

# The Node.js client (clients/node): `npm ci` against its committed
# package-lock.json (only when node_modules is missing or the lock changed),
# then tsc --noEmit, biome, and its node --test suite against real
# redis-server processes with the module.
test-node: build
	@bash scripts/setup.sh node
	cd clients/node && npm run --silent typecheck && npm run --silent lint && npm test

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-unit: setup
	$(CARGO) test -p fencelock --lib

bench: build
	$(CARGO) run --release -p fencelock-bench -- --full
	@bash scripts/setup.sh python
	clients/python/.venv/bin/python clients/python/bench/contention.py
	@bash scripts/setup.sh node
	cd clients/node && npm run --silent bench

bench-quick: build
	$(CARGO) run --release -p fencelock-bench -- --quick

clean:
	$(CARGO) clean
