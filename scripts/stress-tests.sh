#!/usr/bin/env bash
# Runs the whole test suite (`make test`) several times in a row on a busy
# machine: a fresh clone of this repository's HEAD in a temporary directory,
# with `stress-ng --cpu 2` keeping the CPUs loaded the whole time. A test
# that depends on the speed of the machine shows up here.
#
#   scripts/stress-tests.sh [--runs N] [--keep] [--dry-run]
#
#   --runs N    how many runs of `make test` (default 3, or $RUNS)
#   --keep      keep the clone (and its logs) afterwards
#   --dry-run   print what would be done, change nothing
#
# Prints pass/fail and the duration of each run, then a summary; exits
# non-zero when any run failed. Each run's output goes to run-<n>.log in the
# temporary directory (kept when a run failed). Not part of `make test`.
set -euo pipefail

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "$0"
}

runs="${RUNS:-3}"
keep=0
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --runs)
        [[ $# -ge 2 ]] || { echo "--runs needs a number" >&2; exit 2; }
        runs="$2"
        shift 2
        ;;
    --runs=*)
        runs="${1#--runs=}"
        shift
        ;;
    --keep)
        keep=1
        shift
        ;;
    --dry-run)
        dry_run=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "unknown argument: $1" >&2
        usage >&2
        exit 2
        ;;
    esac
done
if ! [[ "$runs" =~ ^[0-9]+$ ]]; then
    echo "--runs / RUNS must be a whole number, got '$runs'" >&2
    exit 2
fi

repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
head="$(git -C "$repo" rev-parse HEAD)"

if [[ "$dry_run" == 1 ]]; then
    echo "would clone $repo at $head into a new temporary directory"
    command -v stress-ng >/dev/null ||
        echo "would install stress-ng (apt-get update; apt-get install -y stress-ng)"
    echo "would run stress-ng --cpu 2 for the whole time"
    echo "would run 'make test' $runs time(s) there, one after the other"
    exit 0
fi

if ! command -v stress-ng >/dev/null; then
    echo "== installing stress-ng"
    sudo_cmd=()
    [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update
    "${sudo_cmd[@]}" apt-get install -y stress-ng
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fencelock-stress.XXXXXX")"
stress_pid=""
failed=0
cleanup() {
    if [[ -n "$stress_pid" ]]; then
        kill "$stress_pid" 2>/dev/null || true
        wait "$stress_pid" 2>/dev/null || true
    fi
    if [[ "$keep" == 1 || "$failed" -gt 0 ]]; then
        echo "clone and logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== cloning $head into $work"
git clone --quiet --no-hardlinks "$repo" "$work/repo"
git -C "$work/repo" checkout --quiet --detach "$head"

echo "== stress-ng --cpu 2 (load on every run)"
stress-ng --cpu 2 --quiet >"$work/stress-ng.log" 2>&1 &
stress_pid=$!

results=()
total_start=$SECONDS
for ((n = 1; n <= runs; n++)); do
    log="$work/run-$n.log"
    echo "== run $n of $runs (log: $log)"
    start=$SECONDS
    if (cd "$work/repo" && make test) >"$log" 2>&1; then
        outcome=pass
    else
        outcome=FAIL
        failed=$((failed + 1))
    fi
    took=$((SECONDS - start))
    line="run $n: $outcome in $((took / 60))m$((took % 60))s"
    results+=("$line")
    echo "$line"
    if [[ "$outcome" == FAIL ]]; then
        grep -E '^(test .* FAILED|failures:|    [a-z_0-9:]+$)|panicked at' "$log" | head -40 || true
    fi
done
total=$((SECONDS - total_start))

echo "== summary ($head, stress-ng --cpu 2)"
if [[ ${#results[@]} -gt 0 ]]; then
    printf '  %s\n' "${results[@]}"
fi
echo "  $((runs - failed)) of $runs passed, $failed failed, $((total / 60))m$((total % 60))s in all"
[[ "$failed" == 0 ]]
