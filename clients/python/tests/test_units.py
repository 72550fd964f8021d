"""The client's logic without a server: the lease's local deadline and
guards, options, retries, commands, replies and errors, and the watchdog
against a scripted transport."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis.exceptions

from fencelock import (
    InvalidOptionsError,
    LeaseLost,
    ServerError,
    UnexpectedReplyError,
    WrongTypeError,
)
from fencelock import _protocol as proto
from fencelock._core import Released, release_outcome
from fencelock._lease import Detached, Hold, Lease, lease_params, wait_ms
from fencelock._watchdog import Watchdog, Watched
from fencelock.info import LockInfo, SemaphoreInfo, SharedInfo, parse_key_info


def params(ttl: float = 0.3, watchdog: bool = True) -> Any:
    return lease_params(ttl, watchdog, None, None)


def test_deadline_is_send_time_plus_ttl_minus_margin() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=100.0)
    assert lease.deadline == pytest.approx(100.27)
    lease.confirm(100.1)
    assert lease.deadline == pytest.approx(100.37)
    # A late reply to an older request never moves it back.
    lease.confirm(100.05)
    assert lease.deadline == pytest.approx(100.37)
    assert lease.confirmed_at == pytest.approx(100.1)


def test_remaining_counts_down_and_is_zero_once_lost_or_ended() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=0.0)
    assert lease.remaining(0.0) == pytest.approx(0.27)
    assert lease.remaining(0.2) == pytest.approx(0.07)
    assert lease.remaining(0.3) == 0.0
    assert lease.lose(LeaseLost.UNCONFIRMED)
    assert lease.remaining(0.0) == 0.0
    ended = Lease(2, params(), Hold.EXCLUSIVE, sent=0.0)
    ended.detach(Hold.EXCLUSIVE)
    assert ended.remaining(0.0) == 0.0


def test_first_loss_wins_and_reaches_every_listener() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=0.0)
    heard: list[LeaseLost] = []
    lease.listen(heard.append)
    assert lease.lose(LeaseLost.NOT_HELD)
    assert not lease.lose(LeaseLost.UNCONFIRMED)
    assert heard == [LeaseLost.NOT_HELD]
    late: list[LeaseLost] = []
    lease.listen(late.append)  # told at once
    assert late == [LeaseLost.NOT_HELD]
    assert not lease.attach(Hold.EXCLUSIVE, 0.0)


def test_an_ended_lease_is_never_lost() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=0.0)
    assert lease.attach(Hold.EXCLUSIVE, 0.0)
    assert lease.detach(Hold.EXCLUSIVE) == Detached(last=False, lost=False, count=1)
    assert lease.detach(Hold.EXCLUSIVE) == Detached(last=True, lost=False, count=1)
    assert not lease.lose(LeaseLost.NOT_HELD)
    assert lease.lost is None


def test_a_shared_guard_under_a_live_exclusive_one_goes_with_the_last_exclusive() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=0.0)
    assert lease.attach(Hold.EXCLUSIVE, 0.0)
    assert lease.attach(Hold.SHARED, 0.0)
    assert lease.attach(Hold.SHARED, 0.0)
    # Releasing a shared hold now would take an exclusive one.
    assert lease.detach(Hold.SHARED) == Detached(False, False, 0)
    assert lease.detach(Hold.EXCLUSIVE) == Detached(False, False, 1)
    assert lease.detach(Hold.EXCLUSIVE) == Detached(False, False, 2)
    assert lease.detach(Hold.SHARED) == Detached(True, False, 1)


def test_the_exclusive_guard_going_first_is_the_downgrade() -> None:
    lease = Lease(1, params(), Hold.EXCLUSIVE, sent=0.0)
    assert lease.attach(Hold.SHARED, 0.0)
    assert lease.detach(Hold.EXCLUSIVE) == Detached(False, False, 1)
    assert lease.detach(Hold.SHARED) == Detached(True, False, 1)


def test_permit_guards_release_their_own_permits() -> None:
    lease = Lease(1, params(), Hold.PERMITS, sent=0.0)
    assert lease.attach(Hold.PERMITS, 0.0)
    assert lease.detach(Hold.PERMITS, 3) == Detached(False, False, 3)
    assert lease.detach(Hold.PERMITS, 2) == Detached(True, False, 2)


def test_options_are_checked() -> None:
    p = lease_params(30.0, True, None, None)
    assert (p.ttl_ms, p.renew_every, p.safety_margin) == (30000, 10.0, 3.0)
    assert lease_params(0.0001, True, None, None).ttl_ms == 1  # rounded up
    for bad in (0, -1, 2_592_001, math.nan, math.inf):
        with pytest.raises(InvalidOptionsError):
            lease_params(bad, True, None, None)
    with pytest.raises(InvalidOptionsError):
        lease_params(1.0, True, 0.95, None)  # renewal after the local deadline
    with pytest.raises(InvalidOptionsError):
        lease_params(1.0, True, None, 1.0)
    with pytest.raises(InvalidOptionsError):
        lease_params(1.0, True, 0.0, None)
    assert (wait_ms(None), wait_ms(0), wait_ms(math.inf), wait_ms(0.0001), wait_ms(2.5)) == (
        None,
        None,
        0,
        1,
        2500,
    )
    for bad_wait in (-1, math.nan, 2_592_001):
        with pytest.raises(InvalidOptionsError):
            wait_ms(bad_wait)


def test_commands_carry_their_options_and_an_id() -> None:
    exclusive = proto.Request(Hold.EXCLUSIVE)
    assert proto.acquire_args("k", "o", 30000, exclusive, None, "acquire-1") == (
        "LOCK.ACQUIRE",
        "k",
        "o",
        30000,
        "ID",
        "acquire-1",
    )
    shared = proto.Request(Hold.SHARED)
    assert proto.acquire_args("k", "o", 5, shared, 0, "acquire-2") == (
        "LOCK.ACQUIRE",
        "k",
        "o",
        5,
        "SHARED",
        "WAIT",
        0,
        "ID",
        "acquire-2",
    )
    permits = proto.Request(Hold.PERMITS, limit=4, count=3)
    assert proto.acquire_args("k", "o", 5, permits, 100, "x") == (
        "LOCK.ACQUIRE",
        "k",
        "o",
        5,
        "LIMIT",
        4,
        "COUNT",
        3,
        "WAIT",
        100,
        "ID",
        "x",
    )
    assert proto.release_args("k", "o", 1, "r") == ("LOCK.RELEASE", "k", "o", "ID", "r")
    assert proto.release_args("k", "o", 3, "r") == ("LOCK.RELEASE", "k", "o", "COUNT", 3, "ID", "r")
    assert len(proto.request_id("release", 2**64)) <= 64


def test_retries_back_off_and_stop_at_the_end_of_the_window() -> None:
    r = proto.Retries(0.1, now=0.0)
    pauses = []
    now = 0.0
    while (pause := r.pause(redis.exceptions.ConnectionError("x"), now)) is not None:
        pauses.append(pause)
        now += pause
    assert pauses == pytest.approx([0.01, 0.02, 0.04, 0.03])
    assert r.retried
    final = proto.Retries(None, now=0.0)
    assert final.pause(ServerError("ERR", "syntax error"), 1.0) is None
    assert not final.retried
    assert proto.Retries(None, 0.0).pause(ServerError("LOADING", "loading"), 1e9) is not None


def test_a_waiting_retry_sends_the_wait_that_is_left() -> None:
    assert proto.wait_ms_left(1000, 0.0, 0.41) == 590
    assert proto.wait_ms_left(1000, 0.0, 5.0) == 1  # never 0 (no limit)
    assert proto.wait_ms_left(0, 0.0, 5.0) == 0
    assert proto.retry_window(0.3, None) == 0.3
    assert proto.retry_window(0.3, 50) == 0.3
    assert proto.retry_window(0.3, 2000) == 2.0
    assert proto.retry_window(0.3, 0) is None


def test_server_errors_keep_the_servers_message() -> None:
    wrongtype = ServerError.from_redis(
        redis.exceptions.ResponseError(
            "WRONGTYPE the key holds a semaphore of 4 permits: acquire it with LIMIT 4"
        )
    )
    assert isinstance(wrongtype, WrongTypeError)
    assert (
        str(wrongtype)
        == "WRONGTYPE the key holds a semaphore of 4 permits: acquire it with LIMIT 4"
    )
    err = ServerError.from_redis(
        redis.exceptions.ResponseError(
            "COUNT is more than the owner holds (2); nothing changed", status_code="ERR"
        )
    )
    assert (err.code, str(err)) == (
        "ERR",
        "ERR COUNT is more than the owner holds (2); nothing changed",
    )
    assert proto.held_in_over_count(err) == 2
    readonly = proto.server_error(
        redis.exceptions.ReadOnlyError("You can't write", status_code="READONLY")
    )
    assert readonly is not None and readonly.code == "READONLY"
    loading = proto.server_error(redis.exceptions.BusyLoadingError("loading"))
    assert loading is not None and proto.is_retryable(loading)
    assert proto.server_error(redis.exceptions.ConnectionError("reset")) is None
    assert proto.is_retryable(redis.exceptions.TimeoutError())
    assert not proto.is_retryable(ServerError("READONLY", "x"))


def test_info_of_every_shape_in_resp2_and_resp3() -> None:
    exclusive2 = [
        b"owner",
        b"a:1",
        b"holds",
        2,
        b"ttl",
        1500,
        b"token",
        7,
        b"waiters",
        1,
        b"mode",
        b"exclusive",
    ]
    assert parse_key_info(exclusive2) == LockInfo("a:1", 2, 1.5, 7, 1)
    exclusive3 = {
        "owner": "a:1",
        "holds": 2,
        "ttl": 1500,
        "token": 7,
        "waiters": 1,
        "mode": "exclusive",
    }
    assert parse_key_info(exclusive3) == LockInfo("a:1", 2, 1.5, 7, 1)
    shared = {
        b"mode": b"shared",
        b"waiters": 0,
        b"holders": [
            [b"owner", b"r:1", b"holds", 1, b"ttl", 10, b"token", 3],
            {b"owner": b"r:2", b"holds": 2, b"ttl": 20, b"token": 4},
        ],
    }
    info = parse_key_info(shared)
    assert isinstance(info, SharedInfo)
    assert [h.owner for h in info.holders] == ["r:1", "r:2"]
    assert info.held_by("r:2") == 2
    sem = [
        "mode",
        "semaphore",
        "limit",
        4,
        "available",
        1,
        "waiters",
        2,
        "holders",
        [["owner", "p:1", "permits", 3, "ttl", 5, "token", 9]],
    ]
    info = parse_key_info(sem)
    assert isinstance(info, SemaphoreInfo)
    assert (info.limit, info.available, info.waiters, info.held_by("p:1")) == (4, 1, 2, 3)
    assert parse_key_info(None) is None
    with pytest.raises(UnexpectedReplyError):
        parse_key_info([b"owner"])


def test_replies_are_checked() -> None:
    assert proto.token(None) is None
    assert proto.token(5) == 5
    for bad in (0, -1, b"5", True):
        with pytest.raises(UnexpectedReplyError):
            proto.token(bad)
    assert proto.remaining(0) == 0
    assert proto.remaining(None) is None
    assert proto.renewed(1) and not proto.renewed(0)
    with pytest.raises(UnexpectedReplyError):
        proto.renewed(2)


def test_what_a_release_reply_means() -> None:
    def lease() -> Lease:
        return Lease(1, params(), Hold.EXCLUSIVE, sent=time.monotonic())

    # A retried last release answered nil was done by its first attempt.
    held = lease()
    out = release_outcome(held, True, Released(None, retried=True, first_sent=time.monotonic()))
    assert out.held and held.lost is None
    # Not retried, or sent after the local deadline: it was not held.
    gone = lease()
    assert not release_outcome(gone, False, Released(None, False, 0.0)).held
    assert gone.lost is LeaseLost.NOT_HELD
    late = lease()
    assert not release_outcome(late, True, Released(None, True, late.deadline + 1)).held
    # The last guard clears what the server still counts.
    assert release_outcome(lease(), True, Released(2, False, 0.0)).clear == 2
    # A guard that is not the last, answered 0: the other guards lost it.
    others = lease()
    assert release_outcome(others, False, Released(0, False, 0.0)).held
    assert others.lost is LeaseLost.NOT_HELD


class ScriptedTransport:
    """Answers renewals after ``delay`` with ``answer``; records send
    times."""

    def __init__(self, delay: float, answer: Any) -> None:
        self.delay = delay
        self.answer = answer
        self.calls: list[float] = []

    def batch(self, commands: Sequence[tuple[Any, Any]], timeout: float) -> list[Any]:
        self.calls.append(time.monotonic())
        time.sleep(min(self.delay, timeout))
        if self.delay > timeout:
            return [redis.exceptions.TimeoutError()] * len(commands)
        return [self.answer] * len(commands)


def watched(ttl: float, watchdog: bool = True) -> Watched:
    lease = Lease(1, lease_params(ttl, watchdog, None, None), Hold.EXCLUSIVE, sent=time.monotonic())
    lease.signal = threading.Event()
    lease.listen(lambda _r: lease.signal.set())
    return Watched(lease, "k", "o", "k")


def test_watchdog_counts_the_deadline_from_the_send_not_the_reply() -> None:
    transport = ScriptedTransport(delay=0.15, answer=1)
    dog = Watchdog(transport)  # type: ignore[arg-type]
    w = watched(ttl=1.5)
    dog.watch(w)
    try:
        # Wait for the first confirmed renewal (sent at about 0.5 s).
        end = time.monotonic() + 30
        while dog.renewals == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert dog.renewals >= 1
        first_send = transport.calls[0]
        # confirmed_at is the send time, not the reply (0.15 s later).
        assert w.lease.confirmed_at <= first_send + 0.01
        assert w.lease.deadline == pytest.approx(w.lease.confirmed_at + 1.35)
    finally:
        dog.close()


def test_watchdog_reports_unconfirmed_at_the_local_deadline_while_renewals_hang() -> None:
    transport = ScriptedTransport(delay=60.0, answer=1)  # never answers in time
    dog = Watchdog(transport)  # type: ignore[arg-type]
    w = watched(ttl=0.6)
    deadline = w.lease.deadline
    dog.watch(w)
    try:
        assert w.lease.signal.wait(30)
        assert w.lease.lost is LeaseLost.UNCONFIRMED
        assert time.monotonic() >= deadline  # never before the deadline
        assert len(transport.calls) >= 1
    finally:
        dog.close()


def test_watchdog_off_expires_at_the_deadline_without_renewing() -> None:
    transport = ScriptedTransport(delay=0.0, answer=1)
    dog = Watchdog(transport)  # type: ignore[arg-type]
    w = watched(ttl=0.3, watchdog=False)
    dog.watch(w)
    try:
        assert w.lease.signal.wait(30)
        assert w.lease.lost is LeaseLost.EXPIRED
        assert transport.calls == []
    finally:
        dog.close()


def test_watchdog_renewal_answered_zero_means_not_held() -> None:
    transport = ScriptedTransport(delay=0.0, answer=0)
    dog = Watchdog(transport)  # type: ignore[arg-type]
    w = watched(ttl=0.6)
    dog.watch(w)
    try:
        assert w.lease.signal.wait(30)
        assert w.lease.lost is LeaseLost.NOT_HELD
        calls = len(transport.calls)
        time.sleep(0.5)
        assert len(transport.calls) == calls, "the watchdog stopped after the 0"
    finally:
        dog.close()


def test_the_next_renewal_is_due_a_period_after_the_last_one_was_due() -> None:
    w = watched(ttl=3.0)  # renew every 1 s
    w.due = 10.0
    assert w.next_due(sent=10.2) == pytest.approx(11.0)  # sent late: no drift
    assert w.next_due(sent=9.95) == pytest.approx(10.95)  # sent early: from the send
    assert w.next_due(sent=10.8) == pytest.approx(11.3)  # far behind: half a period
