#!/usr/bin/env python3
"""Benchmark of the Python client (``make bench`` runs it): on one
redis-server with the module, in one run,

1. contention: 16 threads, then 16 asyncio tasks, on one key, each holding
   the lock 1 ms per acquisition, for this package (waiting in the
   server's FIFO queue), python-redis-lock (SET NX + BLPOP on a signal
   list; threads only, it has no asyncio API) and redis-py's own ``Lock``
   (SET NX polling; ``sleep=0.001``, its default of 0.1 s would be worse),
   and, threads only, a bare redis-py loop sending the module's commands
   itself (``LOCK.ACQUIRE ... WAIT 0``, ``LOCK.RELEASE``; no client) to show
   what the client adds: acquisitions/s, wait p50/p99/max (acquire called →
   granted), server commands per acquisition (``INFO commandstats`` deltas;
   the benchmark's own INFO calls and the handshakes of new connections left
   out), fairness (max/min grants per worker); three rounds, the rows interleaved; and the
   FIFO floor of the wait (15 hand-off cycles, from the measured rate);
2. the watchdog's cost: 10,000 locks held by one process and renewed every
   ttl/3 (ttl 3 s) for 10 s, sync and asyncio: renewals per second kept up,
   client CPU per renewal, leases lost.

It prints a Markdown table with the targets and verdicts computed from the
data (and writes it to ``bench/results.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import redis
import redis.asyncio
import redis_lock

import fencelock
import fencelock.asyncio

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
# FENCELOCK_MODULE overrides the module's path (e.g. a copy taken while
# target/ is being rebuilt).
MODULE = Path(os.environ.get("FENCELOCK_MODULE", REPO / "target" / "release" / "libfencelock.so"))

WORKERS = 16
HOLD = 0.001
KEY = "bench:contended"
RAW = "raw module commands (redis-py, no client)"
HANDSHAKE = {
    "cmdstat_info",
    "cmdstat_hello",
    "cmdstat_client|setinfo",
    "cmdstat_auth",
    "cmdstat_select",
}


class BenchServer:
    """A redis-server with the module on a free loopback port."""

    def __init__(self) -> None:
        if not MODULE.exists():
            sys.exit(f"{MODULE} is missing: run `cargo build --release -p fencelock`")
        self.dir = tempfile.mkdtemp(prefix="fencelock-pybench-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--loadmodule", str(MODULE), "--dir", self.dir, "--save", "",
                "--appendonly", "no", "--maxclients", "10000",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        admin = redis.Redis(port=self.port)
        end = time.monotonic() + 30
        while True:
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        self.admin = admin

    def commands(self) -> int:
        """Commands the server has run, leaving out the benchmark's INFO
        calls and the handshake of a new connection (HELLO, CLIENT SETINFO,
        AUTH, SELECT: once per connection, whatever the lock does)."""
        stats = self.admin.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k not in HANDSHAKE)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Run:
    name: str
    mode: str
    grants: list[int]
    waits: list[float]
    seconds: float
    commands: int

    @property
    def total(self) -> int:
        return sum(self.grants)

    @property
    def rate(self) -> float:
        return self.total / self.seconds

    def wait_ms(self, q: float) -> float:
        ordered = sorted(self.waits)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def max_wait_ms(self) -> float:
        return 1000 * max(self.waits)

    @property
    def per_acquisition(self) -> float:
        return self.commands / self.total

    @property
    def fairness(self) -> float:
        low = min(self.grants)
        return math.inf if low == 0 else max(self.grants) / low


@dataclass
class Row:
    """One row of the table: the runs of one lock and mode, one per round."""

    name: str
    mode: str
    runs: list[Run]

    @property
    def rate(self) -> float:
        """The median of the rounds' acquisitions/s."""
        return statistics.median(r.rate for r in self.runs)

    def wait_ms(self, q: float) -> float:
        merged = sorted(w for r in self.runs for w in r.waits)
        return 1000 * merged[min(len(merged) - 1, int(q * len(merged)))]

    @property
    def max_wait_ms(self) -> float:
        return max(r.max_wait_ms for r in self.runs)

    @property
    def per_acquisition(self) -> float:
        return sum(r.commands for r in self.runs) / sum(r.total for r in self.runs)

    @property
    def fairness(self) -> float:
        """The worst round's max/min grants per worker."""
        return max(r.fairness for r in self.runs)


ThreadLock = Callable[[], tuple[Callable[[], object], Callable[[], object]]]


def run_threads(server: BenchServer, name: str, make: ThreadLock, seconds: float) -> Run:
    """``WORKERS`` threads, each with its own lock object, take the key in
    turn for ``seconds`` (after one warm-up acquisition each, so that
    connections are open before the count starts)."""
    stop = threading.Event()
    go = threading.Event()
    ready = threading.Barrier(WORKERS + 1)
    grants = [0] * WORKERS
    waits: list[list[float]] = [[] for _ in range(WORKERS)]

    def worker(i: int) -> None:
        acquire, release = make()
        acquire()
        release()
        ready.wait()
        go.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            acquire()
            waits[i].append(time.perf_counter() - t0)
            grants[i] += 1
            time.sleep(HOLD)
            release()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for t in threads:
        t.start()
    ready.wait()
    before = server.commands()
    start = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    used = server.commands() - before
    return Run(name, "16 threads", grants, [w for ws in waits for w in ws], elapsed, used)


AsyncLock = Callable[[], tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]]


def run_tasks(server: BenchServer, name: str, make: AsyncLock, seconds: float) -> Run:
    """``WORKERS`` asyncio tasks on one loop, each with its own lock object
    (one warm-up acquisition each first)."""
    grants = [0] * WORKERS
    waits: list[float] = []

    async def main() -> tuple[float, int]:
        stop = asyncio.Event()
        go = asyncio.Event()
        warm: list[int] = []

        async def worker(i: int) -> None:
            acquire, release = make()
            await acquire()
            await release()
            warm.append(i)
            await go.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                await acquire()
                waits.append(time.perf_counter() - t0)
                grants[i] += 1
                await asyncio.sleep(HOLD)
                await release()

        tasks = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        while len(warm) < WORKERS:
            await asyncio.sleep(0.01)
        before = server.commands()
        start = time.perf_counter()
        go.set()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - start, server.commands() - before

    elapsed, used = asyncio.run(main())
    return Run(name, "16 asyncio tasks", grants, waits, elapsed, used)


def fencelock_threads(port: int) -> ThreadLock:
    client = fencelock.Client(redis.Redis(port=port))

    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        lock = client.lock(KEY)
        held: list[fencelock.Guard] = []

        def acquire() -> None:
            guard = lock.acquire(ttl=30, wait=math.inf)
            assert guard is not None
            held.append(guard)

        return acquire, lambda: held.pop().release()

    return make


def raw_commands_threads(port: int) -> ThreadLock:
    """No client: the module's commands sent with redis-py, one connection
    per thread, owner ``f"{uuid4()}:{i}"``."""
    numbers = iter(range(WORKERS))
    made = threading.Lock()

    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        with made:
            i = next(numbers)
        r = redis.Redis(port=port)
        owner = f"{uuid4()}:{i}"

        def acquire() -> None:
            token = r.execute_command("LOCK.ACQUIRE", KEY, owner, "30000", "WAIT", "0")
            assert token is not None

        return acquire, lambda: r.execute_command("LOCK.RELEASE", KEY, owner)

    return make


def python_redis_lock_threads(port: int) -> ThreadLock:
    r = redis.Redis(port=port)

    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        lock = redis_lock.Lock(r, KEY, expire=30)
        return lambda: lock.acquire(blocking=True), lock.release

    return make


def redis_py_threads(port: int) -> ThreadLock:
    r = redis.Redis(port=port)

    def make() -> tuple[Callable[[], object], Callable[[], object]]:
        lock = r.lock(KEY, timeout=30, sleep=0.001, blocking=True)
        return lock.acquire, lock.release

    return make


def fencelock_tasks(port: int) -> AsyncLock:
    holder: list[fencelock.asyncio.Client] = []

    def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
        if not holder:  # one client, made on the benchmark's loop
            holder.append(fencelock.asyncio.Client(redis.asyncio.Redis(port=port)))
        lock = holder[0].lock(KEY)
        held: list[fencelock.asyncio.Guard] = []

        async def acquire() -> None:
            guard = await lock.acquire(ttl=30, wait=math.inf)
            assert guard is not None
            held.append(guard)

        async def release() -> None:
            await held.pop().release()

        return acquire, release

    return make


def redis_py_tasks(port: int) -> AsyncLock:
    holder: list[redis.asyncio.Redis] = []

    def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
        if not holder:
            holder.append(redis.asyncio.Redis(port=port))
        lock = holder[0].lock(KEY, timeout=30, sleep=0.001, blocking=True)
        return lock.acquire, lock.release

    return make


@dataclass
class WatchdogRun:
    mode: str
    locks: int
    ttl: float
    seconds: float
    renewals: int
    cpu: float
    lost: int

    @property
    def required(self) -> float:
        return self.locks / (self.ttl / 3)

    @property
    def rate(self) -> float:
        return self.renewals / self.seconds

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / max(self.renewals, 1)


def watchdog_sync(port: int, locks: int, ttl: float, seconds: float) -> WatchdogRun:
    client = fencelock.Client(redis.Redis(port=port))
    guards = []
    for i in range(locks):
        guard = client.lock(f"bench:held:{i}").acquire(ttl=ttl)
        assert guard is not None
        guards.append(guard)
    time.sleep(ttl / 3)  # every lease renewed once: the schedule is steady
    r0, cpu0, t0 = client.renewals, time.process_time(), time.perf_counter()
    time.sleep(seconds)
    r1, cpu1, t1 = client.renewals, time.process_time(), time.perf_counter()
    lost = sum(g.lost.is_set() for g in guards)
    for g in guards:
        g.release()
    client.close()
    return WatchdogRun("sync", locks, ttl, t1 - t0, r1 - r0, cpu1 - cpu0, lost)


def watchdog_async(port: int, locks: int, ttl: float, seconds: float) -> WatchdogRun:
    async def main() -> WatchdogRun:
        client = fencelock.asyncio.Client(redis.asyncio.Redis(port=port))
        guards = []
        for i in range(locks):
            guard = await client.lock(f"bench:aheld:{i}").acquire(ttl=ttl)
            assert guard is not None
            guards.append(guard)
        await asyncio.sleep(ttl / 3)
        r0, cpu0, t0 = client.renewals, time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        r1, cpu1, t1 = client.renewals, time.process_time(), time.perf_counter()
        lost = sum(g.lost.is_set() for g in guards)
        for g in guards:
            await g.release()
        await client.aclose()
        return WatchdogRun("asyncio", locks, ttl, t1 - t0, r1 - r0, cpu1 - cpu0, lost)

    return asyncio.run(main())


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def fmt_ratio(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.2f}"


def report(
    runs: list[Row], dogs: list[WatchdogRun], seconds: float, rounds: int, version: str
) -> str:
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `make bench` "
        f"(clients/python/bench/contention.py): one redis-server {version} with the module "
        f"on 127.0.0.1, Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"{os.cpu_count()} cores; hold 1 ms per acquisition, one key; {rounds} rounds of {seconds:g} s "
        f"per row, the rows interleaved (acquisitions/s: the median round; waits: all rounds; "
        f"fairness: the worst round).",
        "",
        "| lock | workers | acquisitions/s | wait p50 ms | wait p99 ms | wait max ms | server commands / acquisition | max/min grants per worker |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r.name} | {r.mode} | {r.rate:,.0f} | {r.wait_ms(0.5):.2f} | {r.wait_ms(0.99):.2f} | "
            f"{r.max_wait_ms:.1f} | {r.per_acquisition:.2f} | {fmt_ratio(r.fairness)} |"
        )
    by = {(r.name, r.mode): r for r in runs}
    ours_t = by[("fencelock", "16 threads")]
    ours_a = by[("fencelock", "16 asyncio tasks")]
    theirs = by[("python-redis-lock", "16 threads")]
    raw = by[(RAW, "16 threads")]
    lines += [
        "",
        "| watchdog | held locks | ttl | renewals/s needed | renewals/s done | client CPU per renewal | client CPU (share of one core) | leases lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for d in dogs:
        lines.append(
            f"| {d.mode} | {d.locks:,} | {d.ttl:g} s | {d.required:,.0f} | {d.rate:,.0f} | "
            f"{d.cpu_us:.1f} µs | {100 * d.cpu / d.seconds:.0f} % | {d.lost} |"
        )
    ratio = statistics.median(
        a.rate / b.rate for a, b in zip(ours_t.runs, theirs.runs, strict=True)
    )
    targets = [
        (
            "acquisitions/s ≥ 1.2 × python-redis-lock's (16 threads; median of the rounds' ratios)",
            f"{ours_t.rate:,.0f} vs {theirs.rate:,.0f}: {ratio:.2f}×",
            ratio >= 1.2,
        ),
        (
            "wait p99 ≤ 1/2 of python-redis-lock's (16 threads)",
            f"{ours_t.wait_ms(0.99):.2f} ms vs {theirs.wait_ms(0.99):.2f} ms",
            ours_t.wait_ms(0.99) <= 0.5 * theirs.wait_ms(0.99),
        ),
        (
            "≤ 2 server commands per acquisition (threads, asyncio)",
            f"{ours_t.per_acquisition:.2f}, {ours_a.per_acquisition:.2f}",
            max(ours_t.per_acquisition, ours_a.per_acquisition) <= 2.0,
        ),
        (
            "max/min grants per worker ≤ 1.1 (threads, asyncio)",
            f"{fmt_ratio(ours_t.fairness)}, {fmt_ratio(ours_a.fairness)}",
            max(ours_t.fairness, ours_a.fairness) <= 1.1,
        ),
    ]
    for d in dogs:
        targets.append(
            (
                f"watchdog ({d.mode}) keeps up: renewals/s ≥ 99 % of {d.required:,.0f}, no lease lost",
                f"{d.rate:,.0f}/s, {d.lost} lost, {d.cpu_us:.1f} µs CPU per renewal",
                d.rate >= 0.99 * d.required and d.lost == 0,
            )
        )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for name, measured, ok in targets:
        lines.append(f"| {name} | {measured} | {verdict(ok)} |")
    overhead = statistics.median(
        a.rate / b.rate for a, b in zip(ours_t.runs, raw.runs, strict=True)
    )
    cycle_ms = 1000 / ours_t.rate
    lines += [
        "",
        f"Client overhead (informational, no target): fencelock ÷ raw commands acquisitions/s "
        f"(16 threads; median of the rounds' ratios) = {overhead:.2f}× "
        f"({ours_t.rate:,.0f} vs {raw.rate:,.0f}).",
        "",
        f"FIFO floor: 15 × measured cycle (1 / fencelock acquisitions/s) = "
        f"15 × {cycle_ms:.2f} ms = {15 * cycle_ms:.1f} ms; fencelock's wait p50 "
        f"{ours_t.wait_ms(0.5):.2f} ms, p99 {ours_t.wait_ms(0.99):.2f} ms (16 threads).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contention row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--locks", type=int, default=10_000)
    parser.add_argument("--watch-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    server = BenchServer()
    try:
        version = str(server.admin.info("server")["redis_version"])
        port, s = server.port, args.seconds
        thread_rows: list[tuple[str, Callable[[int], ThreadLock]]] = [
            ("fencelock", fencelock_threads),
            (RAW, raw_commands_threads),
            ("python-redis-lock", python_redis_lock_threads),
            ("redis-py Lock", redis_py_threads),
        ]
        task_rows: list[tuple[str, Callable[[int], AsyncLock]]] = [
            ("fencelock", fencelock_tasks),
            ("redis-py Lock", redis_py_tasks),
        ]
        rows = {
            (name, mode): Row(name, mode, [])
            for name, mode in [(n, "16 threads") for n, _ in thread_rows]
            + [(n, "16 asyncio tasks") for n, _ in task_rows]
        }
        for round_ in range(args.rounds):
            print(f"contention: round {round_ + 1} of {args.rounds} ...", file=sys.stderr)
            for name, factory in thread_rows:
                rows[(name, "16 threads")].runs.append(run_threads(server, name, factory(port), s))
            for name, afactory in task_rows:
                run = run_tasks(server, name, afactory(port), s)
                rows[(name, "16 asyncio tasks")].runs.append(run)
        runs = list(rows.values())
        dogs = []
        for mode, fn in (("sync", watchdog_sync), ("asyncio", watchdog_async)):
            print(f"watchdog: {mode}, {args.locks} locks ...", file=sys.stderr)
            dogs.append(fn(port, args.locks, 3.0, args.watch_seconds))
    finally:
        server.close()
    table = report(runs, dogs, args.seconds, args.rounds, version)
    args.out.write_text(table)
    print(table)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
