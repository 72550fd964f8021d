#!/usr/bin/env bash
# One shared setup step for `make run`, `make test` and `make bench`:
# installs the Debian packages the build and the tests need, skipping what is
# already there, and runs `apt-get update` at most once.
set -euo pipefail

packages=(redis-server redis-tools redis-sentinel libclang-dev faketime)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
# The Python client's virtual environment (below) needs venv and ensurepip,
# which Debian's own python3 ships separately.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  # Debian's package starts a system redis-server (and sentinel) on 6379/26379;
  # our tests start their own servers, and `make run` wants 6379 for itself.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl stop redis-server redis-sentinel >/dev/null 2>&1 || true
  fi
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service redis-sentinel stop >/dev/null 2>&1 || true
fi
python3 -c 'import redis' 2>/dev/null || python3 -m pip install --quiet redis || python3 -m pip install --quiet --break-system-packages redis  # redis-py, for client/tests/other_languages.rs

# `scripts/setup.sh python` (make test-python, make bench): the Python
# client's virtual environment, clients/python/.venv (git-ignored), with the
# package and the pinned versions of its test and bench extras from PyPI;
# reinstalled only when clients/python/pyproject.toml changes.
if [ "${1:-}" = "python" ]; then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="$root/clients/python/.venv"
  stamp="$venv/.installed-$(sha1sum "$root/clients/python/pyproject.toml" | cut -c1-12)"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    python3 -m venv "$venv"
  fi
  if [ ! -f "$stamp" ]; then
    echo "setup: installing the Python client with its test and bench extras" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root/clients/python[test,bench]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
  fi
fi

# `scripts/setup.sh node` (make test-node, make bench): the Node.js client's
# packages, clients/node/node_modules (git-ignored), installed by `npm ci`
# from the committed package-lock.json; again only when that file changes.
if [ "${1:-}" = "node" ]; then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  dir="$root/clients/node"
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends nodejs npm
  fi
  stamp="$dir/node_modules/.installed-$(sha1sum "$dir/package-lock.json" | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "setup: npm ci in clients/node" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"  # npm ci empties node_modules first: no older stamp survives
  fi
fi
