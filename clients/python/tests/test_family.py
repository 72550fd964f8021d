"""Read/write locks and semaphores through the sync client: readers share
and a writer waits for all of them, a queued writer keeps later readers
out, the downgrade, the upgrade refusal, a read released under the write
guard, permits per owner and per guard, FIFO service of permit waiters,
eviction of one owner, the watchdog keeping shared and permit leases."""

from __future__ import annotations

import threading
import time

import pytest
from servers import PATIENCE, Server, wait_for

from fencelock import (
    Client,
    Guard,
    LeaseLost,
    LockInfo,
    SemaphoreInfo,
    SharedInfo,
    UpgradeError,
    WrongTypeError,
)


def client(server: Server) -> Client:
    return Client(server.redis())


def test_readers_share_and_a_writer_waits_for_all_of_them(server: Server) -> None:
    c = client(server)
    r1, r2 = c.rw_lock("doc"), c.rw_lock("doc")
    a = r1.read().acquire(ttl=30)
    b = r2.read().acquire(ttl=30)
    assert a is not None and b is not None
    assert a.token != b.token
    info = r1.info()
    assert isinstance(info, SharedInfo)
    assert [h.owner for h in info.holders] == [r1.owner, r2.owner]
    assert c.rw_lock("doc").write().acquire(ttl=30) is None
    got: list[object] = []
    writer = threading.Thread(
        target=lambda: got.append(c.rw_lock("doc").write().acquire(ttl=30, wait=PATIENCE))
    )
    writer.start()
    wait_for("the writer queued", lambda: server.lock_info()["lock_waiters"] == 1)
    # A queued writer is not overtaken by later readers.
    assert c.rw_lock("doc").read().acquire(ttl=30) is None
    assert a.release()
    time.sleep(0.05)
    assert got == []
    assert b.release()
    writer.join(PATIENCE)
    assert len(got) == 1 and got[0] is not None
    assert isinstance(r1.info(), LockInfo)
    got[0].release()  # type: ignore[attr-defined]


def test_downgrade_keeps_the_token_and_lets_readers_in(server: Server) -> None:
    c = client(server)
    config = c.rw_lock("config")
    write = config.write().acquire(ttl=30)
    assert write is not None
    read = config.read().acquire(ttl=30)
    assert read is not None and read.token == write.token
    assert write.release()
    info = config.info()
    assert isinstance(info, SharedInfo) and info.held_by(config.owner) == 1
    other = c.rw_lock("config").read().acquire(ttl=30)
    assert other is not None
    assert read.release() and other.release()
    assert not config.is_locked()


def test_upgrade_is_refused_and_the_read_holds_stay(server: Server) -> None:
    config = client(server).rw_lock("config")
    read = config.read().acquire(ttl=30)
    assert read is not None
    with pytest.raises(UpgradeError, match="upgrading to exclusive would deadlock"):
        config.write().acquire(ttl=30)
    assert not read.lost.is_set()
    assert config.hold_count() == 1
    assert read.release()


def test_a_read_released_under_the_write_guard_goes_with_the_write_guard(server: Server) -> None:
    config = client(server).rw_lock("config")
    write = config.write().acquire(ttl=30)
    read = config.read().acquire(ttl=30)
    assert write is not None and read is not None
    assert read.release()
    # Releasing it now would have ended the write lock.
    info = config.info()
    assert isinstance(info, LockInfo) and info.holds == 2
    assert write.release()
    assert not config.is_locked()


def test_permits_are_counted_per_owner_and_per_guard(server: Server) -> None:
    c = client(server)
    mine, theirs = c.semaphore("pool", 4), c.semaphore("pool", 4)
    three = mine.acquire(ttl=30, count=3)
    assert three is not None and three.permits == 3
    assert theirs.acquire(ttl=30, count=2) is None
    one = theirs.acquire(ttl=30)
    assert one is not None
    info = mine.info()
    assert isinstance(info, SemaphoreInfo)
    assert (info.limit, info.available, info.held_by(mine.owner), info.held_by(theirs.owner)) == (
        4,
        0,
        3,
        1,
    )
    # A second guard of the same handle joins its lease (same token).
    assert three.release()
    two = mine.acquire(ttl=30, count=2)
    more = mine.acquire(ttl=30, count=1)
    assert two is not None and more is not None and two.token == more.token
    assert mine.held() == 3
    assert two.release()
    assert mine.held() == 1 and not more.lost.is_set()
    assert more.release() and one.release()
    assert mine.available() == 4


def test_permit_waiters_are_served_in_order_when_permits_return(server: Server) -> None:
    c = client(server)
    holder = c.semaphore("pool", 3).acquire(ttl=30, count=3)
    assert holder is not None
    order: list[str] = []
    guards: dict[str, Guard] = {}

    def waiter(name: str, count: int) -> None:
        guard = c.semaphore("pool", 3).acquire(ttl=30, count=count, wait=PATIENCE)
        assert guard is not None
        guards[name] = guard  # kept: a dropped guard would be released
        order.append(name)

    big = threading.Thread(target=waiter, args=("big", 3))
    big.start()
    wait_for("big queued", lambda: server.lock_info()["lock_waiters"] == 1)
    small = threading.Thread(target=waiter, args=("small", 1))
    small.start()
    wait_for("small queued", lambda: server.lock_info()["lock_waiters"] == 2)
    assert holder.release()
    big.join(PATIENCE)
    assert order == ["big"], "the waiter needing 3 is not overtaken"
    assert server.lock_info()["lock_waiters"] == 1
    assert guards["big"].release()
    small.join(PATIENCE)
    assert order == ["big", "small"]
    assert guards["small"].release()


def test_evicting_one_owner_leaves_the_others(server: Server) -> None:
    c = client(server)
    a, b = c.rw_lock("doc"), c.rw_lock("doc")
    ga, gb = a.read().acquire(ttl=0.9), b.read().acquire(ttl=0.9)
    assert ga is not None and gb is not None
    assert a.force_release_owner(b.owner)
    assert gb.lost.wait(PATIENCE) and gb.lost_reason is LeaseLost.NOT_HELD
    assert not ga.lost.is_set()
    info = a.info()
    assert isinstance(info, SharedInfo) and [h.owner for h in info.holders] == [a.owner]
    assert ga.release()


def test_the_watchdog_keeps_shared_and_permit_leases(server: Server) -> None:
    c = client(server)
    read = c.rw_lock("doc").read().acquire(ttl=0.4)
    permits = c.semaphore("pool", 2).acquire(ttl=0.4, count=2)
    assert read is not None and permits is not None
    time.sleep(1.6)
    assert not read.lost.is_set() and not permits.lost.is_set()
    assert c.semaphore("pool", 2).available() == 0
    assert read.release() and permits.release()
    assert server.lock_info()["lock_expired"] == 0


def test_the_wrong_kind_is_the_servers_wrongtype(server: Server) -> None:
    c = client(server)
    read = c.rw_lock("doc").read().acquire(ttl=30)
    assert read is not None
    with pytest.raises(WrongTypeError, match="not a semaphore: acquire it without LIMIT"):
        c.semaphore("doc", 2).acquire()
    assert read.release()
