#!/usr/bin/env bash
# Writes tests/fixtures/v1/: an RDB file and an AOF directory written by the
# release whose lock encoding is version 1 (commit 1a21ab5, the last build
# before the lock family). Kept to show how the committed files were made;
# running it again needs that build's module:
#
#   git worktree add /tmp/v1 1a21ab5 && (cd /tmp/v1 && cargo build --release -p fencelock)
#   scripts/make-v1-fixtures.sh /tmp/v1/target/release/libfencelock.so
#
# Every lock gets a 30-day lease; tests/upgrade.rs moves the deadlines into
# its own present before loading (same width, RDB checksum recomputed) and
# checks every lock against tests/fixtures/v1/expected.tsv.
set -euo pipefail
so=${1:?usage: make-v1-fixtures.sh path/to/v1/libfencelock.so}
out=$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/v1
work=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --loadmodule "$so" \
  --save "" --appendonly yes --aof-use-rdb-preamble no --appenddirname aof \
  --dbfilename locks.rdb --daemonize yes --logfile "$work/log"
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }
ttl=2592000000
long_owner=$(printf 'o%.0s' $(seq 1 1024))
# Before the AOF rewrite: these reach the base file through aof_rewrite.
cli lock.acquire fixture:a alice $ttl >/dev/null
for _ in 1 2 3; do cli lock.acquire fixture:b bob $ttl >/dev/null; done
cli lock.acquire fixture:long "$long_owner" $ttl >/dev/null
printf 'lock.acquire "fixture:\\x00nul" "own\\x00er" %s\n' $ttl | cli >/dev/null
cli -n 3 lock.acquire fixture:db3 carol $ttl >/dev/null
cli lock.acquire fixture:gone dave $ttl >/dev/null
cli bgrewriteaof >/dev/null
while [ "$(cli info persistence | tr -d '\r' | grep aof_rewrite_in_progress: | cut -d: -f2)" != 0 ]; do sleep 0.1; done
sleep 1
# After it: these reach the incremental file as replicated effects.
cli lock.release fixture:gone dave >/dev/null
cli lock.acquire fixture:c erin $ttl >/dev/null
cli lock.acquire fixture:c erin $ttl >/dev/null
cli lock.release fixture:b bob >/dev/null
cli lock.renew fixture:a alice $ttl >/dev/null
cli save >/dev/null
rm -rf "$out" && mkdir -p "$out/aof"
cp "$work/locks.rdb" "$out/"
cp "$work"/aof/* "$out/aof/"
# key (hex) | db | owner (hex) | holds | token | deadline-ms, as the server reports them.
python3 - "$port" "$out/expected.tsv" <<'EOF'
import socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    return read()
def read():
    line = f.readline()[:-2]
    t, rest = line[:1], line[1:]
    if t in (b"+", b"-"): return rest
    if t == b":": return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0: return None
        data = f.read(n + 2)[:-2]
        return data
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read() for _ in range(n)]
    raise SystemExit(f"unexpected {line!r}")
rows = []
for db, key in [(0, b"fixture:a"), (0, b"fixture:b"), (0, b"fixture:c"),
                (0, b"fixture:long"), (0, b"fixture:\x00nul"), (3, b"fixture:db3")]:
    cmd("SELECT", db)
    info = cmd("LOCK.INFO", key)
    d = dict(zip(info[::2], info[1::2]))
    now = int(time.time() * 1000)
    # now + ttl: the deadline to within the reply's own latency (the exact
    # value is in the files; the test reads it there).
    rows.append((key.hex(), db, d[b"owner"].hex(), d[b"holds"], d[b"token"], now + d[b"ttl"]))
with open(path, "w") as out:
    out.write("# key-hex\tdb\towner-hex\tholds\ttoken\tdeadline-ms-approx\n")
    for r in rows:
        out.write("\t".join(str(x) for x in r) + "\n")
EOF
echo "wrote $out"; ls -la "$out" "$out/aof"
