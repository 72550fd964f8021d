# fencelock — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MODULE := target/release/libfencelock.so

.PHONY: setup build run test test-unit test-integration lint bench bench-quick clean

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

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-unit: setup
	$(CARGO) test -p fencelock --lib

bench: build
	$(CARGO) run --release -p fencelock-bench -- --full

bench-quick: build
	$(CARGO) run --release -p fencelock-bench -- --quick

clean:
	$(CARGO) clean
