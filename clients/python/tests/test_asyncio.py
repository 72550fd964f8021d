"""The asyncio client on a real server: exclusion between tasks, re-entry,
the watchdog past the ttl, ``await guard.lost`` on force-release and under
SIGSTOP, waiting, cancellation by ``task.cancel()`` and timeouts, every
kind, and ``async with``."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest
import redis.asyncio
from servers import PATIENCE, Server, wait_for

from fencelock import LeaseLost, LockInfo, SemaphoreInfo, SharedInfo, UpgradeError, WrongTypeError
from fencelock.asyncio import Client


def client(server: Server, **kwargs: object) -> Client:
    return Client(redis.asyncio.Redis(port=server.port, **kwargs))  # type: ignore[arg-type]


async def poll(what: str, check: object, timeout: float = PATIENCE) -> None:
    end = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_tasks_with_handles_of_their_own_exclude_each_other(
    server: Server, rng: random.Random
) -> None:
    c = client(server)
    inside = most = 0
    tokens: list[int] = []
    holds = [rng.uniform(0.001, 0.004) for _ in range(48)]

    async def worker(n: int) -> None:
        nonlocal inside, most
        lock = c.lock("counter")
        for hold in holds[n::8]:
            guard = await lock.acquire(ttl=30, wait=math.inf)
            assert guard is not None
            async with guard:
                inside += 1
                most = max(most, inside)
                tokens.append(guard.token)
                await asyncio.sleep(hold)
                inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(8))), PATIENCE)
    assert most == 1
    assert len(tokens) == 48 and tokens == sorted(tokens) and len(set(tokens)) == 48
    # Every task waited on a connection of its own; the pool kept them.
    assert server.lock_info()["lock_handoffs"] > 0


async def test_reentry_and_info_and_release(server: Server) -> None:
    c = client(server, protocol=3, decode_responses=True)
    lock = c.lock("job")
    outer = await lock.acquire(ttl=10)
    inner = await lock.acquire(ttl=10)
    assert outer is not None and inner is not None and outer.token == inner.token
    info = await lock.info()
    assert isinstance(info, LockInfo) and info.holds == 2 and info.owner == lock.owner
    assert await c.lock("job").acquire() is None
    assert await inner.release()
    assert await lock.hold_count() == 1
    assert await outer.release()
    assert not await lock.is_locked()


async def test_the_watchdog_keeps_a_lease_past_its_ttl(server: Server) -> None:
    c = client(server)
    lock = c.lock("job")
    guard = await lock.acquire(ttl=0.5)
    assert guard is not None
    start = time.monotonic()
    while time.monotonic() - start < 2.0:
        await asyncio.sleep(0.1)
        info = await lock.info()
        assert info is not None and info.token == guard.token
    assert not guard.lost.is_set()
    assert c.renewals >= 4
    assert await guard.release()
    assert server.lock_info()["lock_expired"] == 0


async def test_lost_is_awaitable_and_calls_on_lost(server: Server) -> None:
    c = client(server)
    heard: list[LeaseLost] = []
    guard = await c.lock("job").acquire(ttl=0.9, on_lost=heard.append)
    assert guard is not None
    assert await client(server).lock("job").force_release()
    reason = await asyncio.wait_for(guard.lost, PATIENCE)
    assert reason is LeaseLost.NOT_HELD and heard == [LeaseLost.NOT_HELD]
    assert not await guard.release()


async def test_a_stopped_server_means_lost_before_the_server_could_expire_it(
    server: Server,
) -> None:
    c = client(server)
    ttl = 3.0
    guard = await c.lock("job").acquire(ttl=ttl, safety_margin=1.0)
    assert guard is not None
    await poll("a renewal", lambda: asyncio.sleep(0, c.renewals >= 1))
    deadline = time.monotonic() + guard.remaining()
    server.sigstop()
    stopped = time.monotonic()
    try:
        reason = await asyncio.wait_for(guard.lost, PATIENCE)
        lost_at = time.monotonic()
    finally:
        server.sigcont()
    assert reason is LeaseLost.UNCONFIRMED
    assert deadline - 0.01 <= lost_at < stopped + ttl
    assert not await guard.release()


async def test_a_cancelled_waiter_leaves_the_queue(server: Server) -> None:
    c = client(server)
    holder = await c.lock("job").acquire(ttl=30)
    assert holder is not None
    waiter = asyncio.create_task(c.lock("job").acquire(ttl=30, wait=math.inf))
    await asyncio.to_thread(wait_for, "queued", lambda: server.lock_info()["lock_waiters"] == 1)
    # The shared path is not blocked by the waiting task.
    assert await c.lock("job").info() is not None
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.to_thread(
        wait_for, "queue empty", lambda: server.lock_info()["lock_waiters"] == 0
    )
    assert await holder.release()
    assert not await c.lock("job").is_locked(), "nobody got it"
    # A timeout around the wait cancels it the same way.
    holder = await c.lock("job").acquire(ttl=30)
    assert holder is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await c.lock("job").acquire(ttl=30, wait=math.inf)
    await asyncio.to_thread(
        wait_for, "queue empty", lambda: server.lock_info()["lock_waiters"] == 0
    )
    assert await holder.release()


async def test_a_wait_is_handed_the_lock_on_release(server: Server) -> None:
    c = client(server)
    holder = await c.lock("job").acquire(ttl=30)
    assert holder is not None
    waiter = asyncio.create_task(c.lock("job").acquire(ttl=30, wait=PATIENCE))
    await asyncio.to_thread(wait_for, "queued", lambda: server.lock_info()["lock_waiters"] == 1)
    assert await holder.release()
    guard = await asyncio.wait_for(waiter, PATIENCE)
    assert guard is not None and guard.token > holder.token
    assert await guard.release()
    assert await c.lock("job").acquire(wait=0.2) is not None


async def test_every_kind(server: Server) -> None:
    c = client(server)
    rw1, rw2 = c.rw_lock("doc"), c.rw_lock("doc")
    a, b = await rw1.read().acquire(ttl=30), await rw2.read().acquire(ttl=30)
    assert a is not None and b is not None
    assert isinstance(await rw1.info(), SharedInfo)
    with pytest.raises(UpgradeError):
        await rw1.write().acquire(ttl=30)
    writer = asyncio.create_task(c.rw_lock("doc").write().acquire(ttl=30, wait=PATIENCE))
    await asyncio.to_thread(
        wait_for, "writer queued", lambda: server.lock_info()["lock_waiters"] == 1
    )
    assert await a.release() and await b.release()
    w = await asyncio.wait_for(writer, PATIENCE)
    assert w is not None and isinstance(await rw1.info(), LockInfo)
    assert await w.release()

    sem = c.semaphore("pool", 3)
    two = await sem.acquire(ttl=30, count=2)
    assert two is not None
    assert await c.semaphore("pool", 3).acquire(ttl=30, count=2) is None
    info = await sem.info()
    assert isinstance(info, SemaphoreInfo) and info.available == 1
    with pytest.raises(WrongTypeError):
        await c.semaphore("pool", 4).acquire()
    assert await two.release()
    assert await sem.available() == 3
