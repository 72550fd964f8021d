#!/usr/bin/env bash
# Instructions per command, exactly (callgrind): a redis-server with the module
# runs under valgrind; one pipeline of N commands per phase goes through
# `redis-cli --pipe` (16-byte keys, 36-byte owners and request ids, one-hour
# leases), each phase in a callgrind dump of its own; Ir per call is each
# function's inclusive instructions over its call count (from the caller tree).
#
#   bench/callgrind.sh                  # the module in target/release
#   SO=/path/to/libfencelock.so bench/callgrind.sh
#
# About a minute (valgrind 3.19, N=20000). `call` is the figure to compare with
# SET (Redis's per-command bookkeeping and the propagation of the replicated
# effect included); `RedisModuleCommandDispatcher` is what INFO commandstats
# times; `setCommand` is inside SET's `call`.
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SO:-$PWD/target/release/libfencelock.so}
N=${N:-20000}
D=$(mktemp -d /tmp/fl-cg.XXXXXX)
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

gen() { awk -v n="$N" -v what="$1" 'BEGIN{ for(i=0;i<n;i++){
  o=sprintf("%08x-0000-4000-8000-%012x",i,i)
  if(what=="set")            printf "*6\r\n$3\r\nSET\r\n$16\r\ns%015d\r\n$36\r\n%s\r\n$2\r\nNX\r\n$2\r\nPX\r\n$7\r\n3600000\r\n",i,o
  if(what=="acquire")        printf "*4\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\na%015d\r\n$36\r\n%s\r\n$7\r\n3600000\r\n",i,o
  if(what=="acquire-id")     printf "*6\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\nb%015d\r\n$36\r\n%s\r\n$7\r\n3600000\r\n$2\r\nID\r\n$36\r\n%08x-0000-4000-a000-%012x\r\n",i,o,i,i
  if(what=="acquire-shared") printf "*5\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\nc%015d\r\n$36\r\n%s\r\n$7\r\n3600000\r\n$6\r\nSHARED\r\n",i,o
  if(what=="acquire-limit")  printf "*6\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\nd%015d\r\n$36\r\n%s\r\n$7\r\n3600000\r\n$5\r\nLIMIT\r\n$1\r\n4\r\n",i,o
  if(what=="renew")          printf "*4\r\n$10\r\nLOCK.RENEW\r\n$16\r\na%015d\r\n$36\r\n%s\r\n$7\r\n7200000\r\n",i,o
  if(what=="release")        printf "*3\r\n$12\r\nLOCK.RELEASE\r\n$16\r\na%015d\r\n$36\r\n%s\r\n",i,o
  if(what=="release-id")     printf "*5\r\n$12\r\nLOCK.RELEASE\r\n$16\r\nb%015d\r\n$36\r\n%s\r\n$2\r\nID\r\n$36\r\n%08x-0000-4000-b000-%012x\r\n",i,o,i,i
  if(what=="release-shared") printf "*3\r\n$12\r\nLOCK.RELEASE\r\n$16\r\nc%015d\r\n$36\r\n%s\r\n",i,o
  if(what=="release-limit")  printf "*3\r\n$12\r\nLOCK.RELEASE\r\n$16\r\nd%015d\r\n$36\r\n%s\r\n",i,o
  }}' > "$D/$1.resp"; }
PHASES="set acquire acquire-id acquire-shared acquire-limit renew release release-id release-shared release-limit"
for w in $PHASES; do gen "$w"; done

valgrind --tool=callgrind --callgrind-out-file="$D/callgrind.out" \
  redis-server --port "$P" --bind 127.0.0.1 --save '' --appendonly no --dir "$D" \
  --loadmodule "$SO" > "$D/valgrind.log" 2>&1 &
VG=$!
until redis-cli -p "$P" ping 2>/dev/null | grep -q PONG; do sleep 1; done

# Each phase alone in a dump: zero the counters, pipe, dump.
callgrind_control --zero "$VG" > /dev/null 2>&1
for w in $PHASES; do
  redis-cli -p "$P" --pipe < "$D/$w.resp" > /dev/null
  callgrind_control --dump="$w" "$VG" > /dev/null 2>&1
done
redis-cli -p "$P" shutdown nosave > /dev/null 2>&1 || true
wait "$VG" || true

printf '%-16s %10s %12s %12s\n' phase call dispatcher command
for f in $(ls "$D"/callgrind.out.* | sort -V); do
  [ "$f" = "$D/callgrind.out" ] && continue
  phase=$(sed -n 's/^desc: Trigger: dump //p' "$f")
  callgrind_annotate --inclusive=yes --tree=caller "$f" 2>/dev/null | PHASE="$phase" perl -ne '
    if (/^\s*([\d,]+) .*<.*\(([\d,]+)x\)/) { ($i, $c) = ($1, $2); s/,//g for $i, $c; $ir += $i; $n += $c; next }
    if ($n && /\*\s+\S*?:(call|setCommand|RedisModuleCommandDispatcher|fencelock::commands::\w+)(\s|$)/) {
      $f = $1; $f = "command" if $f =~ /fencelock|setCommand/; $f = "dispatcher" if $f eq "RedisModuleCommandDispatcher";
      $v{$f} = sprintf "%.0f", $ir / $n }
    $ir = $n = 0 if /^\s*$/;
    END { printf "%-16s %10s %12s %12s\n", $ENV{PHASE}, $v{call} // "-", $v{dispatcher} // "-", $v{command} // "-" }'
done
echo "(dumps in $D)"
