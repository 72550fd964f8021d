"""The sync client's watchdog: two daemon threads per client, whatever the
number of locks held.

- The renewer sends each lease's ``LOCK.RENEW`` every ``renew_every``,
  pipelining the renewals that are due together (one round trip per node
  for all of them), and marks a lease lost when the server answers 0.
- The deadline keeper marks a lease lost at its local deadline (send time of
  the last confirmed request + ttl - safety margin) when no renewal was
  confirmed by then — also while the renewer is stuck on a server that does
  not answer, so the application learns of the loss before the server can
  grant the lock to anyone else. With the watchdog off it marks the lease
  expired at that deadline.

A lease whose guards are all released is simply dropped by both threads.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

from . import _protocol as proto
from ._core import log
from ._lease import Lease, LeaseLost
from ._transport import Transport
from .errors import ServerError

#: A renewal may go out this fraction of its interval early, so that the
#: renewals due at about the same time share one round trip.
EARLY = 1 / 20


@dataclass(eq=False)
class Watched:
    """One lease under the watchdog, with what its renewal needs."""

    lease: Lease
    key: proto.Key
    owner: str
    key_text: str
    failures: int = field(default=0)
    #: When its renewal was last due.
    due: float = field(default=0.0)

    def next_due(self, sent: float) -> float:
        """When the renewal after one sent at ``sent`` is due: a period after
        the last one was due (so that a renewer running late does not
        stretch the period), never later than a period after the send, and
        at least half a period after it."""
        every = self.lease.params.renew_every
        return max(min(self.due + every, sent + every), sent + every / 2)


class Watchdog:
    """The renewer and the deadline keeper of one client (started with the
    first lease)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._seq = itertools.count()
        self._renew_cond = threading.Condition(threading.Lock())
        self._renewals: list[tuple[float, int, Watched]] = []
        self._deadline_cond = threading.Condition(threading.Lock())
        self._deadlines: list[tuple[float, int, Watched]] = []
        self._started = False
        self._closed = False
        self._start_lock = threading.Lock()
        #: Renewals sent and answered 1 (for the benchmark and tests).
        self.renewals = 0

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
            for target, name in ((self._renew_loop, "renewer"), (self._deadline_loop, "deadlines")):
                threading.Thread(target=target, name=f"fencelock-{name}", daemon=True).start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stops both threads; leases are no longer renewed or watched."""
        self._closed = True
        with self._renew_cond:
            self._renew_cond.notify_all()
        with self._deadline_cond:
            self._deadline_cond.notify_all()

    def watch(self, watched: Watched) -> None:
        """Takes a new lease under watch."""
        if not self._started:
            self._start()
        lease = watched.lease
        with self._deadline_cond:
            first = not self._deadlines or lease.deadline < self._deadlines[0][0]
            heapq.heappush(self._deadlines, (lease.deadline, next(self._seq), watched))
            if first:  # else the keeper wakes in time anyway
                self._deadline_cond.notify()
        if lease.params.watchdog:
            self._schedule(watched, lease.confirmed_at + lease.params.renew_every)

    def _schedule(self, watched: Watched, at: float) -> None:
        watched.due = at
        early = at - watched.lease.params.renew_every * EARLY
        with self._renew_cond:
            first = not self._renewals or early < self._renewals[0][0]
            heapq.heappush(self._renewals, (early, next(self._seq), watched))
            if first:
                self._renew_cond.notify()

    # The renewer.

    def _renew_loop(self) -> None:
        while True:
            with self._renew_cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._renewals and self._renewals[0][0] <= now:
                        break
                    timeout = self._renewals[0][0] - now if self._renewals else None
                    self._renew_cond.wait(timeout)
                due: list[Watched] = []
                while self._renewals and self._renewals[0][0] <= now:
                    watched = heapq.heappop(self._renewals)[2]
                    if watched.lease.live:
                        due.append(watched)
            if due:
                try:
                    self._renew(due)
                except Exception:  # never let the thread die
                    log.exception("watchdog renewal round failed")
                    for watched in due:
                        self._schedule(watched, time.monotonic() + watched.lease.params.retry_delay)

    def _renew(self, due: list[Watched]) -> None:
        # The deadline counts from the moment the request is sent: the server
        # cannot start the renewed lease before receiving it.
        sent = time.monotonic()
        timeout = min(min(sent + w.lease.params.renew_every, w.lease.deadline) for w in due) - sent
        commands = [(w.key, proto.renew_args(w.key, w.owner, w.lease.params.ttl_ms)) for w in due]
        try:
            replies = self._transport.batch(commands, max(timeout, 0.001))
        except Exception as e:
            replies = [e] * len(due)
        now = time.monotonic()
        for watched, reply in zip(due, replies, strict=True):
            lease = watched.lease
            if reply == 1 and not isinstance(reply, BaseException):
                lease.confirm(sent)
                self.renewals += 1
                if watched.failures:
                    log.debug(
                        "renewal succeeded again: key=%s owner=%s", watched.key_text, watched.owner
                    )
                watched.failures = 0
                self._schedule(watched, watched.next_due(sent))
            elif reply == 0 or (isinstance(reply, ServerError) and reply.code == "WRONGTYPE"):
                if lease.lose(LeaseLost.NOT_HELD):
                    log.warning(
                        "lease lost: the server says the lock is not held: key=%s owner=%s token=%d",
                        watched.key_text,
                        watched.owner,
                        lease.token,
                    )
            else:
                watched.failures += 1
                if watched.failures == 1:
                    log.warning(
                        "renewal failed; retrying until the local deadline: key=%s owner=%s error=%r",
                        watched.key_text,
                        watched.owner,
                        reply,
                    )
                self._schedule(watched, now + lease.params.retry_delay)

    # The deadline keeper.

    def _deadline_loop(self) -> None:
        while True:
            expired: list[Watched] = []
            with self._deadline_cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._deadlines and self._deadlines[0][0] <= now:
                        break
                    timeout = self._deadlines[0][0] - now if self._deadlines else None
                    self._deadline_cond.wait(timeout)
                while self._deadlines and self._deadlines[0][0] <= now:
                    watched = heapq.heappop(self._deadlines)[2]
                    lease = watched.lease
                    if not lease.live:
                        continue
                    deadline = lease.deadline
                    if deadline <= now:
                        expired.append(watched)
                    else:  # confirmed since: look again at the new deadline
                        heapq.heappush(self._deadlines, (deadline, next(self._seq), watched))
            for watched in expired:
                lease = watched.lease
                reason = LeaseLost.UNCONFIRMED if lease.params.watchdog else LeaseLost.EXPIRED
                if lease.lose(reason):
                    log.warning(
                        "lease lost: key=%s owner=%s token=%d reason=%s failures=%d",
                        watched.key_text,
                        watched.owner,
                        lease.token,
                        reason,
                        watched.failures,
                    )
