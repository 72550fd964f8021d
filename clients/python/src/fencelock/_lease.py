"""One lease as the client knows it, and the options that fix it.

The server keeps one lease per key and owner, whatever the owner holds
there: every guard of one handle (exclusive, shared, or some permits) joins
the handle's one lease, and one renewal renews them all. This module is pure
bookkeeping (no I/O): the sync and the asyncio clients share it.

Why the local deadline is safe: every request that refreshes a lease
(acquire, re-entry, renewal) carries the lease's one fixed ttl, and the
server starts the new lease when it processes the request, which is after
the client *sent* it. So after a confirmed request sent at ``s`` the server
holds the lease at least until ``s + ttl`` on its clock, and the local
deadline ``s + ttl - margin`` comes before that.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOptionsError

#: The largest ttl and wait the module accepts: 30 days, in milliseconds.
MAX_MS = 2_592_000_000


class LeaseLost(enum.Enum):
    """Why a lease is known to be lost. Once lost it stays lost: its
    watchdog has stopped and its guards never send ``LOCK.RELEASE``."""

    #: The server said this owner does not hold the lock (a renewal answered
    #: 0, or a re-entry found it gone): it expired, was force-released or
    #: deleted, and may belong to someone else now.
    NOT_HELD = "the server says the lock is no longer held by this owner"
    #: No renewal was confirmed before the local deadline (send time of the
    #: last confirmed request + ttl - safety margin). The server may still
    #: hold it for a moment, but it expires there before anyone else can be
    #: granted the lock.
    UNCONFIRMED = "no renewal was confirmed before the local deadline"
    #: The watchdog is off and the ttl ran out (local deadline).
    EXPIRED = "the lease ran out (watchdog off)"

    def __str__(self) -> str:
        return self.value


class Hold(enum.Enum):
    """What one guard stands for on the server (with ``permits`` for a
    semaphore guard)."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"
    PERMITS = "permits"


def ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up."""
    return math.ceil(seconds * 1000 - 1e-9)


@dataclass(frozen=True)
class LeaseParams:
    """The fixed parameters of one lease (checked)."""

    ttl_ms: int
    watchdog: bool
    renew_every: float
    safety_margin: float

    @property
    def ttl(self) -> float:
        return self.ttl_ms / 1000

    @property
    def confirmed_for(self) -> float:
        """How long after a confirmed request was *sent* the client stops
        counting on the lease."""
        return self.ttl - self.safety_margin

    @property
    def retry_delay(self) -> float:
        """The watchdog's pause after a failed renewal: several tries before
        the deadline, but no spinning on a refused connection."""
        return min(max(self.renew_every / 3, 0.01), self.renew_every)


def lease_params(
    ttl: float,
    watchdog: bool,
    renew_every: float | None,
    safety_margin: float | None,
) -> LeaseParams:
    """Checks an acquire's options and computes the lease's parameters
    (defaults: renewal every ttl/3, safety margin ttl/10)."""
    if not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise InvalidOptionsError("ttl must be a number of seconds")
    ttl_ms = ceil_ms(ttl) if ttl > 0 else 0
    if not 1 <= ttl_ms <= MAX_MS:
        raise InvalidOptionsError("ttl must be between 1 ms and 30 days")
    ttl_s = ttl_ms / 1000
    margin = ttl_s / 10 if safety_margin is None else float(safety_margin)
    if not 0 <= margin < ttl_s:
        raise InvalidOptionsError("safety_margin must be at least 0 and shorter than the ttl")
    every = ttl_s / 3 if renew_every is None else float(renew_every)
    if not every > 0:
        raise InvalidOptionsError("renew_every must be positive")
    if every >= ttl_s - margin:
        raise InvalidOptionsError("renew_every must be shorter than ttl minus the safety margin")
    return LeaseParams(
        ttl_ms=ttl_ms, watchdog=bool(watchdog), renew_every=every, safety_margin=margin
    )


def wait_ms(wait: float | None) -> int | None:
    """``LOCK.ACQUIRE``'s ``WAIT`` argument: ``None`` for no wait (``wait``
    None or 0), ``0`` for no limit (``math.inf``), else whole ms, at least 1
    (0 would mean no limit to the server)."""
    if wait is None:
        return None
    if not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
        raise InvalidOptionsError("wait must be None, a number of seconds >= 0, or math.inf")
    if wait == 0:
        return None
    if math.isinf(wait):
        return 0
    ms = ceil_ms(wait)
    if ms > MAX_MS:
        raise InvalidOptionsError("wait must be at most 30 days (or math.inf)")
    return max(ms, 1)


@dataclass(frozen=True)
class Detached:
    """What :meth:`Lease.detach` found."""

    #: This was the last guard: the lease has ended.
    last: bool
    #: The lease had been lost: nothing must be sent for it.
    lost: bool
    #: The ``COUNT`` to release now: the guard's own holds or permits, plus
    #: the shared holds owed when this was the last exclusive guard; 0 when
    #: its release is put off (a shared hold under a live exclusive one).
    count: int


Listener = Callable[[LeaseLost], None]


class Lease:
    """A lease shared by the guards of one handle. Thread-safe; the times
    are ``time.monotonic()`` seconds passed in by the caller."""

    __slots__ = (
        "_confirmed_at",
        "_deadline",
        "_ended",
        "_exclusive",
        "_guards",
        "_listeners",
        "_lock",
        "_lost",
        "_owed",
        "params",
        "signal",
        "token",
    )

    def __init__(self, token: int, params: LeaseParams, hold: Hold, sent: float) -> None:
        self.token = token
        self.params = params
        self._lock = threading.Lock()
        self._guards = 1
        self._exclusive = 1 if hold is Hold.EXCLUSIVE else 0
        self._owed = 0
        self._deadline = sent + params.confirmed_for
        self._confirmed_at = sent
        self._ended = False
        self._lost: LeaseLost | None = None
        self._listeners: list[Listener] = []
        #: What the client tells the guards with (a ``threading.Event`` or an
        #: ``asyncio.Event``), set by the client when it starts the lease.
        self.signal: Any = None

    def _live(self) -> bool:
        return not self._ended and self._lost is None

    @property
    def live(self) -> bool:
        """Held as far as the client knows: neither lost nor ended."""
        with self._lock:
            return self._live()

    @property
    def lost(self) -> LeaseLost | None:
        """Why it was lost, if it was."""
        return self._lost

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def deadline(self) -> float:
        """The local deadline."""
        return self._deadline

    @property
    def confirmed_at(self) -> float:
        """The send time of the request that last confirmed the lease."""
        return self._confirmed_at

    def remaining(self, now: float) -> float:
        """Seconds from ``now`` the lease is still known held; 0 once lost or
        ended."""
        with self._lock:
            if not self._live():
                return 0.0
            return max(0.0, self._deadline - now)

    def confirm(self, sent: float) -> None:
        """A request sent at ``sent`` was confirmed: moves the deadline
        forward (never back: a late reply to an older request must not
        shorten it)."""
        with self._lock:
            if not self._live():
                return
            deadline = sent + self.params.confirmed_for
            if deadline > self._deadline:
                self._deadline = deadline
                self._confirmed_at = sent

    def listen(self, listener: Listener) -> None:
        """Calls ``listener(reason)`` when the lease is lost (at once if it
        is lost already)."""
        with self._lock:
            if self._lost is None:
                self._listeners.append(listener)
                return
            reason = self._lost
        listener(reason)

    def attach(self, hold: Hold, sent: float) -> bool:
        """A re-entry through the same handle: one more guard standing for
        ``hold``, confirmed by the re-entry sent at ``sent``. False when the
        lease is no longer live (the caller starts a new one)."""
        with self._lock:
            if not self._live():
                return False
            self._guards += 1
            if hold is Hold.EXCLUSIVE:
                self._exclusive += 1
        self.confirm(sent)
        return True

    def lose(self, reason: LeaseLost) -> bool:
        """Marks the lease lost and tells the listeners. The first reason
        wins; a lease whose guards are all gone ended, it is not lost.
        Returns whether this call marked it."""
        with self._lock:
            if not self._live():
                return False
            self._lost = reason
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(reason)
        return True

    def owe_shared(self) -> bool:
        """A shared hold the server counts for this lease, to be released with
        the last exclusive guard. False when no exclusive guard is live."""
        with self._lock:
            if not self._live() or self._exclusive == 0:
                return False
            self._owed += 1
            return True

    def detach(self, hold: Hold, permits: int = 0) -> Detached:
        """The guard standing for ``hold`` goes away; the last one ends the
        lease (its watchdog stops renewing it before any release is sent).

        The server releases an owner's exclusive holds before its shared
        ones. So a shared guard that goes while an exclusive guard of the
        lease lives must not release anything yet — that would end the write
        lock under the live exclusive guard; its hold is owed, and the last
        exclusive guard releases it with its own. (The exclusive guard going
        first is the downgrade: the shared holds stay.)"""
        with self._lock:
            self._guards = max(0, self._guards - 1)
            if hold is Hold.EXCLUSIVE:
                self._exclusive = max(0, self._exclusive - 1)
                if self._exclusive == 0:
                    count, self._owed = 1 + self._owed, 0
                else:
                    count = 1
            elif hold is Hold.SHARED:
                if self._exclusive > 0:
                    self._owed += 1
                    count = 0
                else:
                    count = 1
            else:
                count = permits
            last = self._guards == 0
            if last:
                self._ended = True
                self._listeners = []
            return Detached(last=last, lost=self._lost is not None, count=count)
