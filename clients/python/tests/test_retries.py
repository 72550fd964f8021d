"""Exactly-once retries: a proxy between the client and the server cuts the
connection right after the server applied an acquire or a release (the
reply is lost). The client sends it again with the same request id on a
new connection, and the server answers it from the holder's record without
applying it twice: no second re-entry, no second release, no permits
taken twice. The redis-py clients here keep redis-py's default retry
settings: the client does not go through them."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from servers import PATIENCE, Proxy, Server, wait_for

import fencelock
import fencelock.asyncio


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.port)
    try:
        yield p
    finally:
        p.close()


def holds(server: Server, key: str) -> int:
    reply = server.admin().execute_command("LOCK.INFO", key)
    if reply is None:
        return 0
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    return int(fields[b"holds"])


def test_an_acquire_whose_reply_was_lost_is_answered_not_applied_again(
    server: Server, proxy: Proxy
) -> None:
    lock = fencelock.Client(redis.Redis(port=proxy.port)).lock("job")
    first = lock.acquire(ttl=30)
    assert first is not None
    proxy.cut_reply("LOCK.ACQUIRE")
    second = lock.acquire(ttl=30)  # a re-entry, its reply lost once
    assert second is not None and second.token == first.token
    assert proxy.cuts == 1 and proxy.seen["LOCK.ACQUIRE"] == 3
    assert holds(server, "job") == 2, "the retry did not re-enter again"
    assert server.lock_info()["lock_retries_answered"] == 1
    assert second.release() and first.release()
    assert holds(server, "job") == 0


def test_a_fresh_acquire_whose_reply_was_lost_gets_its_grant(server: Server, proxy: Proxy) -> None:
    lock = fencelock.Client(redis.Redis(port=proxy.port)).lock("job")
    proxy.cut_reply("LOCK.ACQUIRE")
    guard = lock.acquire(ttl=30)
    assert guard is not None
    assert holds(server, "job") == 1
    assert server.lock_info()["lock_retries_answered"] == 1
    assert guard.release()
    assert not lock.is_locked()


def test_a_release_whose_reply_was_lost_is_not_released_twice(server: Server, proxy: Proxy) -> None:
    lock = fencelock.Client(redis.Redis(port=proxy.port)).lock("job")
    outer, inner = lock.acquire(ttl=30), lock.acquire(ttl=30)
    assert outer is not None and inner is not None
    proxy.cut_reply("LOCK.RELEASE")
    assert inner.release()
    assert proxy.cuts == 1
    assert holds(server, "job") == 1, "the retry did not release again"
    assert server.lock_info()["lock_retries_answered"] == 1
    assert not outer.lost.is_set()
    # The last release, its reply lost: the retry finds nothing (the first
    # attempt released it) and the guard knows it was released.
    proxy.cut_reply("LOCK.RELEASE")
    assert outer.release()
    assert proxy.cuts == 2
    assert not lock.is_locked()


def test_semaphore_permits_are_not_taken_twice(server: Server, proxy: Proxy) -> None:
    c = fencelock.Client(redis.Redis(port=proxy.port))
    sem = c.semaphore("pool", 4)
    proxy.cut_reply("LOCK.ACQUIRE")
    guard = sem.acquire(ttl=30, count=3)
    assert guard is not None
    assert sem.held() == 3 and sem.available() == 1
    assert guard.release()
    assert sem.available() == 4


def test_a_waiting_acquire_granted_by_hand_off_whose_reply_was_lost(
    server: Server, proxy: Proxy
) -> None:
    direct = fencelock.Client(redis.Redis(port=server.port))
    holder = direct.lock("job").acquire(ttl=30)
    assert holder is not None
    c = fencelock.Client(redis.Redis(port=proxy.port))
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(c.lock("job").acquire(ttl=30, wait=math.inf)))
    t.start()
    wait_for("the waiter queued", lambda: server.lock_info()["lock_waiters"] == 1)
    proxy.cut_pending_reply("LOCK.ACQUIRE")  # the hand-off's reply is lost
    assert holder.release()
    t.join(PATIENCE)
    guard = got[0]
    assert isinstance(guard, fencelock.Guard)
    assert proxy.cuts == 1
    assert holds(server, "job") == 1
    assert server.lock_info()["lock_retries_answered"] == 1
    info = c.lock("job").info()
    assert info is not None and info.token == guard.token
    assert guard.release()


async def test_asyncio_acquire_and_release_whose_replies_were_lost(
    server: Server, proxy: Proxy
) -> None:
    lock = fencelock.asyncio.Client(redis.asyncio.Redis(port=proxy.port)).lock("job")
    first = await lock.acquire(ttl=30)
    assert first is not None
    proxy.cut_reply("LOCK.ACQUIRE")
    second = await lock.acquire(ttl=30)
    assert second is not None and second.token == first.token
    assert holds(server, "job") == 2
    proxy.cut_reply("LOCK.RELEASE")
    assert await second.release()
    assert holds(server, "job") == 1
    assert server.lock_info()["lock_retries_answered"] == 2
    assert proxy.cuts == 2
    assert await first.release()
    assert not await lock.is_locked()
