"""The exclusive lock through the sync client, on a real server:
exclusion, re-entry, the watchdog keeping a lease past its ttl, the lease
lost by force-release and under SIGSTOP of the server, waiting (timeout,
FIFO hand-off, the shared connection never blocked), cancellation, threads,
and errors carrying the server's message."""

from __future__ import annotations

import math
import random
import threading
import time

import pytest
from servers import EXPIRY_SLACK, PATIENCE, Server, wait_for

from fencelock import (
    Client,
    InvalidOptionsError,
    LeaseLost,
    LockInfo,
    WrongKindError,
    WrongTypeError,
)


def client(server: Server) -> Client:
    return Client(server.redis())


def waiters(server: Server) -> int:
    return server.lock_info()["lock_waiters"]


def test_a_second_handle_is_excluded_until_the_first_releases(server: Server) -> None:
    c = client(server)
    first, second = c.lock("job"), c.lock("job")
    guard = first.acquire(ttl=10)
    assert guard is not None
    assert second.acquire(ttl=10) is None
    assert Client(server.redis()).lock("job").acquire() is None  # another client too
    assert guard.release()
    again = second.acquire(ttl=10)
    assert again is not None
    assert again.token > guard.token
    assert again.release()
    assert not second.is_locked()


def test_reentry_keeps_the_token_and_counts_holds(server: Server) -> None:
    lock = client(server).lock("job")
    outer = lock.acquire(ttl=10)
    inner = lock.acquire(ttl=10)
    assert outer is not None and inner is not None
    assert outer.token == inner.token
    assert lock.hold_count() == 2
    assert inner.release()
    assert lock.hold_count() == 1
    assert not outer.lost.is_set()
    assert outer.release()
    assert lock.hold_count() == 0
    assert not lock.is_locked()
    assert not outer.release(), "a second release of one guard does nothing"


def test_with_block_releases_and_info_shows_the_holder(server: Server) -> None:
    lock = client(server).lock("job")
    guard = lock.acquire(ttl=10)
    assert guard is not None
    with guard as g:
        info = lock.info()
        assert isinstance(info, LockInfo)
        assert (info.owner, info.holds, info.token, info.waiters) == (lock.owner, 1, g.token, 0)
        assert 0 < info.ttl <= 10
        assert 0 < g.remaining() <= 9
    assert lock.info() is None
    assert guard.remaining() == 0


def test_the_watchdog_keeps_a_lease_far_past_its_ttl(server: Server) -> None:
    c = client(server)
    lock = c.lock("job")
    guard = lock.acquire(ttl=0.5)
    assert guard is not None
    held_for = 0.0
    start = time.monotonic()
    while held_for < 2.5:  # five ttls
        time.sleep(0.1)
        held_for = time.monotonic() - start
        info = lock.info()
        assert info is not None and info.token == guard.token, f"lost after {held_for:.2f}s"
    assert not guard.lost.is_set()
    assert c.renewals >= 5
    assert guard.release()
    assert server.lock_info()["lock_expired"] == 0


def test_without_watchdog_the_lease_expires_and_the_guard_says_so(server: Server) -> None:
    lock = client(server).lock("job")
    guard = lock.acquire(ttl=0.3, watchdog=False)
    assert guard is not None
    assert guard.lost.wait(PATIENCE)
    assert guard.lost_reason is LeaseLost.EXPIRED
    wait_for("the server to expire it", lambda: not lock.is_locked(), EXPIRY_SLACK + 1)
    assert not guard.release(), "a lost guard sends no release"


def test_force_release_by_someone_else_is_lost_at_the_next_renewal(server: Server) -> None:
    c = client(server)
    lock = c.lock("job")
    heard: list[LeaseLost] = []
    guard = lock.acquire(ttl=0.9, on_lost=heard.append)
    assert guard is not None
    assert Client(server.redis()).lock("job").force_release()
    assert guard.lost.wait(PATIENCE)
    assert guard.lost_reason is LeaseLost.NOT_HELD
    wait_for("on_lost", lambda: heard == [LeaseLost.NOT_HELD])
    # The next owner is not disturbed by the lost guard.
    other = c.lock("job").acquire(ttl=10)
    assert other is not None
    assert not guard.release()
    info = lock.info()
    assert info is not None and (info.owner, info.holds, info.token) == (
        other.owner,
        1,
        other.token,
    )
    assert other.release()


def test_force_release_through_its_own_handle_is_lost_at_once(server: Server) -> None:
    lock = client(server).lock("job")
    guard = lock.acquire(ttl=30)
    assert guard is not None
    assert lock.force_release()
    assert guard.lost.is_set()
    assert guard.lost_reason is LeaseLost.NOT_HELD
    assert not lock.force_release()


def test_a_stopped_server_means_lost_before_the_server_could_expire_it(server: Server) -> None:
    c = client(server)
    lock = c.lock("job")
    ttl, margin = 3.0, 1.0
    guard = lock.acquire(ttl=ttl, safety_margin=margin)
    assert guard is not None
    wait_for("a confirmed renewal", lambda: c.renewals >= 1)
    before = time.monotonic()
    deadline = before + guard.remaining()
    server.sigstop()
    stopped = time.monotonic()
    try:
        assert guard.lost.wait(PATIENCE)
        lost_at = time.monotonic()
    finally:
        server.sigcont()
    assert guard.lost_reason is LeaseLost.UNCONFIRMED
    # Never before the local deadline ...
    assert lost_at >= deadline - 0.01
    # ... and before the server could let the lease go: its last confirmed
    # renewal was sent before the stop, so the server holds it at least until
    # stop + ttl (the margin covers the thread waking up).
    assert lost_at < stopped + ttl, f"lost {lost_at - stopped:.3f}s after the stop"
    assert not guard.release()


def test_a_waiting_acquire_times_out_on_the_server(server: Server) -> None:
    c = client(server)
    holder = c.lock("job").acquire(ttl=30)
    assert holder is not None
    start = time.monotonic()
    assert c.lock("job").acquire(wait=0.3) is None
    assert time.monotonic() - start >= 0.3
    assert server.lock_info()["lock_wait_timeouts"] == 1
    assert holder.release()


def test_waiters_are_served_in_order_and_the_shared_connection_is_never_blocked(
    server: Server,
) -> None:
    c = client(server)
    holder = c.lock("job").acquire(ttl=30)
    assert holder is not None
    order: list[int] = []
    done = threading.Event()

    def waiter(i: int) -> None:
        guard = c.lock("job").acquire(ttl=30, wait=math.inf)
        assert guard is not None
        order.append(i)
        guard.release()
        if len(order) == 3:
            done.set()

    threads = []
    for i in range(3):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        wait_for(f"waiter {i} queued", lambda: waiters(server) == len(threads))
    # Three acquires block on the server; everything else still goes on.
    other = c.lock("other").acquire(ttl=30)
    assert other is not None
    assert c.lock("job").info() is not None
    assert other.release()
    assert holder.release()
    assert done.wait(PATIENCE)
    for t in threads:
        t.join(PATIENCE)
    assert order == [0, 1, 2]
    assert server.lock_info()["lock_handoffs"] == 3


def test_cancelling_a_waiting_acquire_takes_it_out_of_the_queue(server: Server) -> None:
    c = client(server)
    holder = c.lock("job").acquire(ttl=30)
    assert holder is not None
    cancel = threading.Event()
    result: list[object] = []
    t = threading.Thread(
        target=lambda: result.append(c.lock("job").acquire(ttl=30, wait=math.inf, cancel=cancel))
    )
    t.start()
    wait_for("the waiter queued", lambda: server.lock_info()["lock_waiters"] == 1)
    cancel.set()
    t.join(PATIENCE)
    assert result == [None]
    wait_for("the queue empty", lambda: server.lock_info()["lock_waiters"] == 0)
    assert holder.release()
    assert not c.lock("job").is_locked(), "nobody got it"


def test_threads_with_handles_of_their_own_exclude_each_other(
    server: Server, rng: random.Random
) -> None:
    c = client(server)
    inside = 0
    most = 0
    tokens: list[int] = []
    mutex = threading.Lock()
    holds = [rng.uniform(0.001, 0.005) for _ in range(40)]

    def worker(n: int) -> None:
        nonlocal inside, most
        lock = c.lock("counter")
        for hold in holds[n::4]:
            guard = lock.acquire(ttl=30, wait=PATIENCE)
            assert guard is not None
            with guard:
                with mutex:
                    inside += 1
                    most = max(most, inside)
                    tokens.append(guard.token)
                time.sleep(hold)
                with mutex:
                    inside -= 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert len(tokens) == 40
    assert most == 1
    assert tokens == sorted(tokens) and len(set(tokens)) == 40


def test_errors_carry_the_servers_message(server: Server) -> None:
    c = client(server)
    server.admin().set("plain", "x")
    with pytest.raises(WrongTypeError) as e:
        c.lock("plain").acquire()
    assert str(e.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
    sem = c.semaphore("pool", 2).acquire()
    assert sem is not None
    with pytest.raises(WrongTypeError, match="semaphore of 2 permits: acquire it with LIMIT 2"):
        c.lock("pool").acquire()
    with pytest.raises(WrongKindError):
        c.lock("pool").info()
    with pytest.raises(InvalidOptionsError):
        c.lock("job").acquire(ttl=0)
    with pytest.raises(InvalidOptionsError):
        c.semaphore("pool", 2).acquire(count=3)
    assert sem.release()


def test_a_dropped_guard_is_released(server: Server) -> None:
    c = client(server)
    lock = c.lock("job")
    guard = lock.acquire(ttl=30)
    assert guard is not None
    del guard
    wait_for("the background release", lambda: not lock.is_locked())
