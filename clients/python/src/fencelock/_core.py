"""What the sync and the asyncio handles share: a handle's key, owner,
request ids and current lease, how a grant is recorded (a re-entry joins
the live lease, anything else starts a new one), and what a release's reply
means for the lease. No I/O here.

A handle has at most one live lease at a time; re-entries join it (the
server keeps one lease per key and owner). The handle's acquires run one at
a time, so that a re-entry always knows the lease it joins; its releases
and the bookkeeping of an acquire once its reply is in also run one at a
time (the ``ops`` lock of each client), so that the handle always knows
which of the owner's holds on the server belong to which lease. An acquire
waiting on the server does not hold ``ops``: the handle's guards can still
release (a semaphore waiter may need exactly those permits back).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import _protocol as proto
from ._lease import Hold, Lease, LeaseLost, LeaseParams

log = logging.getLogger("fencelock")


@dataclass(frozen=True)
class Released:
    """What the server said to a release, after its retries."""

    #: What the owner still holds; None when it held nothing.
    remaining: int | None
    #: The answer came to a retry: a first attempt may have been applied.
    retried: bool
    #: When the first attempt was sent.
    first_sent: float


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release's reply means: the result for the guard, and the
    leftover holds the handle should clear (0: none)."""

    held: bool
    clear: int


def release_outcome(lease: Lease, last: bool, released: Released) -> ReleaseOutcome:
    """The reply to a guard's release (``last``: it was the lease's last
    guard). Marks the lease lost where the reply says it is gone."""
    if released.remaining is None:
        if released.retried and last and released.first_sent < lease.deadline:
            # The reply to an earlier attempt was lost, and that attempt
            # released the owner's last hold: the server keeps no record once
            # the owner holds nothing, so the retry is answered as a release
            # of nothing. The first attempt was sent while the lease was known
            # held, so it found the holds there.
            return ReleaseOutcome(held=True, clear=0)
        lease.lose(LeaseLost.NOT_HELD)
        return ReleaseOutcome(held=False, clear=0)
    if last:
        return ReleaseOutcome(held=True, clear=released.remaining)
    if released.remaining == 0:
        # The server counted fewer holds than this lease has guards (someone
        # else used the owner string): the lock is free now.
        lease.lose(LeaseLost.NOT_HELD)
    return ReleaseOutcome(held=True, clear=0)


def safe_listener(callback: Callable[[LeaseLost], None]) -> Callable[[LeaseLost], None]:
    """A user's ``on_lost`` callback that cannot break the watchdog."""

    def call(reason: LeaseLost) -> None:
        try:
            callback(reason)
        except Exception:
            log.exception("on_lost callback failed")

    return call


class HandleState:
    """A handle's identity and lease bookkeeping (thread-safe)."""

    def __init__(self, key: proto.Key, owner: str) -> None:
        self.key = key
        self.owner = owner
        #: An acquire has been sent and its grant is not yet recorded (see
        #: ``may_clear_leftovers``).
        self.in_flight = False
        self._current: Lease | None = None
        self._state_lock = threading.Lock()
        self._requests = itertools.count(1)

    def key_text(self) -> str:
        return self.key.decode("utf-8", "replace") if isinstance(self.key, bytes) else self.key

    def next_id(self, op: str) -> str:
        """The request id of the handle's next operation."""
        return proto.request_id(op, next(self._requests))

    def live_lease(self) -> Lease | None:
        with self._state_lock:
            current = self._current
        return current if current is not None and current.live else None

    def lose_live_lease(self, reason: LeaseLost) -> Lease | None:
        """Marks the live lease lost; returns it when this call marked it."""
        lease = self.live_lease()
        if lease is not None and lease.lose(reason):
            return lease
        return None

    def record_grant(
        self,
        token: int,
        params: LeaseParams,
        hold: Hold,
        sent: float,
        new_signal: Callable[[], object],
        set_signal: Callable[[Lease], Callable[[LeaseLost], None]],
    ) -> tuple[Lease, bool]:
        """Records a grant of ``hold`` confirmed by a request sent at
        ``sent``: a re-entry joins the live lease (same token); anything else
        starts a new lease (a different token means the old one ended on the
        server). Returns the lease and whether it is new (it then needs its
        watchdog)."""
        ended: Lease | None = None
        with self._state_lock:
            current = self._current
            if current is not None and current.live:
                if current.token == token and current.attach(hold, sent):
                    log.debug(
                        "lock re-entered: key=%s owner=%s token=%d",
                        self.key_text(),
                        self.owner,
                        token,
                    )
                    return current, False
                if current.token != token:
                    ended = current
            lease = Lease(token, params, hold, sent)
            lease.signal = new_signal()
            lease.listen(set_signal(lease))
            self._current = lease
        if ended is not None and ended.lose(LeaseLost.NOT_HELD):
            log.warning(
                "the held lease had ended on the server; got a new grant: key=%s owner=%s token=%d new_token=%d",
                self.key_text(),
                self.owner,
                ended.token,
                token,
            )
        log.info(
            "lock acquired: key=%s owner=%s token=%d hold=%s ttl_ms=%d watchdog=%s",
            self.key_text(),
            self.owner,
            token,
            hold.value,
            params.ttl_ms,
            params.watchdog,
        )
        return lease, True

    def may_clear_leftovers(self, remaining: int) -> bool:
        """After the handle's last live guard released, the owner may still
        hold things on the server that no guard stands for: grants whose
        reply was lost (a failed or cancelled acquire), or holds of a lease
        the client gave up as lost while the server still had it. They are
        the handle's to clear — unless a newer lease of the handle is live or
        an acquire is in flight (its grant may be among them)."""
        return remaining > 0 and self.live_lease() is None and not self.in_flight
