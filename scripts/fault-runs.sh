#!/usr/bin/env bash
# Long fault runs: every run of tests/linearizability.rs (client pauses and
# the SET NX canary, kill -9 with each persistence, server SIGSTOP, failover
# with and without WAIT, slot migration, wall-clock steps), each for
# FENCELOCK_FAULT_SECS seconds (default 60), in release, one at a time,
# `rounds` times (first argument, default 1) with fresh seeds. Failing
# histories are saved in FENCELOCK_HISTORY_DIR (default
# target/fault-histories), next to runs.log, the output of every run.
# FENCELOCK_MODULE picks the module (default: the release build of this
# tree, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1}"
export FENCELOCK_FAULT_SECS="${FENCELOCK_FAULT_SECS:-60}"
export FENCELOCK_HISTORY_DIR="${FENCELOCK_HISTORY_DIR:-$PWD/target/fault-histories}"
mkdir -p "$FENCELOCK_HISTORY_DIR"
if [[ -z "${FENCELOCK_MODULE:-}" ]]; then
    cargo build --release -p fencelock
fi
status=0
for round in $(seq "$rounds"); do
    echo "== round $round of $rounds, ${FENCELOCK_FAULT_SECS}s per run" | tee -a "$FENCELOCK_HISTORY_DIR/runs.log"
    if ! cargo test --release --test linearizability -- --test-threads=1 --nocapture 2>&1 |
        tee -a "$FENCELOCK_HISTORY_DIR/runs.log"; then
        status=1
    fi
done
echo "histories and runs.log in $FENCELOCK_HISTORY_DIR"
exit "$status"
