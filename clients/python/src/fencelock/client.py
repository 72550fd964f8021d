"""The sync client: :class:`Client` over a ``redis.Redis`` or a
``redis.cluster.RedisCluster``; its handles :class:`Lock`, :class:`RwLock`
(with :class:`ReadLock` / :class:`WriteLock`) and :class:`Semaphore`; and
the :class:`Guard` an acquire hands out. Thread-safe: share one client
between threads, and give each thread that must exclude the others a handle
of its own (one handle is one owner: acquiring through it again re-enters).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from . import _protocol as proto
from ._core import HandleState, Released, log, release_outcome, safe_listener
from ._lease import Detached, Hold, Lease, LeaseLost, LeaseParams, lease_params, wait_ms
from ._transport import Cancelled, Transport
from ._watchdog import Watchdog, Watched
from .errors import (
    ConnectionFailed,
    FencelockError,
    InvalidOptionsError,
    ServerError,
    UnexpectedReplyError,
    UpgradeError,
    WrongKindError,
)
from .info import KeyInfo, LockInfo, SemaphoreInfo, parse_key_info

OnLost = Callable[[LeaseLost], None]

#: The most permits a semaphore may have.
MAX_PERMITS = 1_000_000


def _give_up(error: BaseException) -> BaseException:
    """What to raise when an operation's retries are over."""
    if isinstance(error, (ServerError, UnexpectedReplyError)):
        return error
    failed = ConnectionFailed(f"no answer from the server: {error}")
    failed.__cause__ = error
    return failed


class Client:
    """A lock client over a ``redis.Redis`` (a single server) or a
    ``redis.cluster.RedisCluster``: one random UUID, the watchdog threads,
    and the lock handles taken from it.

    ``response_timeout``: how long a reply to a command that does not block
    may take before the attempt counts as failed and is sent again with the
    same request id (the connection's own ``socket_timeout`` still applies
    to everything else).
    """

    def __init__(
        self,
        conn: redis.Redis | redis.cluster.RedisCluster,
        *,
        response_timeout: float = proto.DEFAULT_RESPONSE_TIMEOUT,
    ) -> None:
        self.response_timeout = float(response_timeout)
        self._transport = Transport(conn, self.response_timeout)
        self.id = uuid.uuid4()
        self._handles = itertools.count(1)
        self._watchdog = Watchdog(self._transport)

    def _owner(self) -> str:
        return f"{self.id}:{next(self._handles)}"

    def lock(self, key: proto.Key) -> Lock:
        """A lock handle with its own owner string ``<uuid>:<n>``."""
        return Lock(_Handle(self, key, self._owner()))

    def rw_lock(self, key: proto.Key) -> RwLock:
        """A read/write lock handle (one owner for both sides)."""
        return RwLock(_Handle(self, key, self._owner()))

    def semaphore(self, key: proto.Key, permits: int) -> Semaphore:
        """A handle on the semaphore of ``permits`` (1 to 1,000,000) at
        ``key``; every handle on the key must use the same ``permits``."""
        if not isinstance(permits, int) or not 1 <= permits <= MAX_PERMITS:
            raise InvalidOptionsError("a semaphore has 1 to 1000000 permits")
        return Semaphore(_Handle(self, key, self._owner()), permits)

    @property
    def renewals(self) -> int:
        """Renewals the watchdog sent that the server confirmed."""
        return self._watchdog.renewals

    def close(self) -> None:
        """Stops the watchdog threads: held leases are no longer renewed
        (they expire after their ttl) or watched."""
        self._watchdog.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handle(HandleState):
    """The state a handle's sides, guards and watchdog share, and its
    requests to the server."""

    def __init__(self, client: Client, key: proto.Key, owner: str) -> None:
        super().__init__(key, owner)
        self.client = client
        self.transport = client._transport
        #: Serialises the handle's acquires.
        self.acquiring = threading.Lock()
        #: Serialises its releases and the bookkeeping of its grants.
        self.ops = threading.Lock()

    def call(self, args: proto.Args) -> Any:
        """One command, not retried."""
        try:
            return self.transport.call(self.key, args, fresh=True)
        except (redis.exceptions.RedisError, OSError) as e:
            raise _give_up(e) from e

    # Acquire.

    def acquire(
        self,
        request: proto.Request,
        ttl: float,
        wait: float | None,
        watchdog: bool,
        renew_every: float | None,
        safety_margin: float | None,
        on_lost: OnLost | None,
        cancel: threading.Event | None,
    ) -> Guard | None:
        fresh = lease_params(ttl, watchdog, renew_every, safety_margin)
        w = wait_ms(wait)
        if self.client._watchdog.closed:
            raise FencelockError("the client is closed: its watchdog no longer runs")
        with self.acquiring:
            held = self.live_lease()
            # A re-entry refreshes the held lease with its own ttl: one fixed
            # ttl per lease keeps the local deadline safe.
            params = held.params if held is not None else fresh
            self.in_flight = True
            try:
                token, first_sent = self._send_acquire(request, params, w, cancel)
            except Cancelled:
                self.in_flight = False
                return None
            except BaseException:
                self.in_flight = False
                raise
            with self.ops:
                # From here on no release of the handle runs until the grant
                # is recorded.
                self.in_flight = False
                if token is None:
                    self._not_granted(request)
                    return None
                sent, gone = self._confirm_after_wait(params, w, first_sent)
                lease, started = self.record_grant(
                    token, params, request.hold, sent, threading.Event, _event_setter
                )
                if started:
                    self.client._watchdog.watch(
                        Watched(lease, self.key, self.owner, self.key_text())
                    )
                if gone:
                    # Granted, then gone before the confirmation (a ttl
                    # shorter than the wait's round trip): handed out lost.
                    lease.lose(LeaseLost.NOT_HELD)
                if on_lost is not None:
                    lease.listen(safe_listener(on_lost))
                return Guard(self, lease, request)

    def _send_acquire(
        self,
        request: proto.Request,
        params: LeaseParams,
        w: int | None,
        cancel: threading.Event | None,
    ) -> tuple[int | None, float]:
        """Sends ``LOCK.ACQUIRE`` with the handle's next request id; while no
        answer comes, sends it again with the same id (a waiting one with
        the wait that is left) until the retry window closes. Returns the
        token (None: not granted) and when the first attempt was sent."""
        rid = self.next_id("acquire")
        retries = proto.Retries(proto.retry_window(params.ttl, w), time.monotonic())
        waiting = w is not None
        while True:
            left = proto.wait_ms_left(w, retries.first_sent, time.monotonic())
            args = proto.acquire_args(self.key, self.owner, params.ttl_ms, request, left, rid)
            # A waiting acquire's reply may take the wait, and then a reply's
            # time (a wait without limit: no limit).
            timeout = None if not left else left / 1000 + self.client.response_timeout
            try:
                reply = self.transport.call(
                    self.key, args, waiting=waiting, timeout=timeout, cancel=cancel
                )
                return proto.token(reply), retries.first_sent
            except ServerError as e:
                if proto.is_upgrade(e):
                    raise UpgradeError(str(e)) from e
                error: BaseException = e
            except (redis.exceptions.RedisError, OSError) as e:
                error = e
            pause = retries.pause(error, time.monotonic())
            if pause is None:
                raise _give_up(error)
            if retries.failed == 1:
                log.warning(
                    "acquire got no answer; sending it again with the same request id: key=%s owner=%s error=%r",
                    self.key_text(),
                    self.owner,
                    error,
                )
            if cancel is not None:
                if cancel.wait(pause):
                    raise Cancelled
            else:
                time.sleep(pause)

    def _not_granted(self, request: proto.Request) -> None:
        """For a lock (exclusive or shared) an owner that holds the key is
        never refused — it re-enters, or gets the upgrade error — so a lease
        this handle still counted on is gone. A semaphore may refuse more
        permits to an owner that holds some: its lease stays."""
        if request.hold is not Hold.PERMITS:
            lease = self.lose_live_lease(LeaseLost.NOT_HELD)
            if lease is not None:
                log.warning(
                    "lock re-entry found the lease lost: key=%s owner=%s token=%d",
                    self.key_text(),
                    self.owner,
                    lease.token,
                )

    def _confirm_after_wait(
        self, params: LeaseParams, w: int | None, first_sent: float
    ) -> tuple[float, bool]:
        """A grant may have come at any time during a wait: when it came
        later than a renewal interval after the send, a renewal confirms the
        lease so that the local deadline counts from a known send time.
        Returns that send time and whether the lock was already gone."""
        if w is None or time.monotonic() < first_sent + params.renew_every:
            return first_sent, False
        sent = time.monotonic()
        try:
            held = self.renew_once(params.ttl_ms)
        except Exception as e:
            log.warning(
                "could not confirm a lease granted after a wait: key=%s owner=%s error=%r",
                self.key_text(),
                self.owner,
                e,
            )
            return first_sent, False
        return (sent, False) if held else (first_sent, True)

    def renew_once(self, ttl_ms: int) -> bool:
        """One ``LOCK.RENEW``: whether the owner still holds anything at the
        key (a key overwritten with another type is not held)."""
        try:
            return proto.renewed(
                self.transport.call(self.key, proto.renew_args(self.key, self.owner, ttl_ms))
            )
        except ServerError as e:
            if e.code == "WRONGTYPE":
                return False
            raise

    # Release.

    def release_cmd(self, count: int, window: float) -> Released:
        """``LOCK.RELEASE`` of ``count`` with a request id of its own,
        retried for ``window`` when no answer comes."""
        rid = self.next_id("release")
        retries = proto.Retries(window, time.monotonic())
        args = proto.release_args(self.key, self.owner, count, rid)
        while True:
            try:
                reply = self.transport.call(self.key, args)
                return Released(proto.remaining(reply), retries.retried, retries.first_sent)
            except (ServerError, redis.exceptions.RedisError, OSError) as e:
                pause = retries.pause(e, time.monotonic())
                if pause is None:
                    raise _give_up(e) from e
                if retries.failed == 1:
                    log.warning(
                        "release got no answer; sending it again with the same request id: key=%s owner=%s error=%r",
                        self.key_text(),
                        self.owner,
                        e,
                    )
                time.sleep(pause)

    def finish_release(self, lease: Lease, detached: Detached) -> bool:
        """The network half of a guard's release (see ``Guard.release``)."""
        if detached.count == 0:
            log.debug(
                "read hold released under a live write guard: it goes with the last write guard: key=%s",
                self.key_text(),
            )
            return True
        with self.ops:
            if lease.lost is not None:
                return False  # lost while this release waited for its turn
            window = lease.params.ttl
            try:
                released = self.release_cmd(detached.count, window)
            except ServerError as e:
                held = proto.held_in_over_count(e)
                if held is not None:
                    # The server counts less for the owner than the lease's
                    # guards stand for (someone else used the owner string).
                    lease.lose(LeaseLost.NOT_HELD)
                    if detached.last:
                        self.clear_leftovers(held, window)
                raise
            outcome = release_outcome(lease, detached.last, released)
            if outcome.clear:
                self.clear_leftovers(outcome.clear, window)
            log.info(
                "lock released: key=%s owner=%s token=%d count=%d still_held=%s",
                self.key_text(),
                self.owner,
                lease.token,
                detached.count,
                outcome.held,
            )
            return outcome.held

    def clear_leftovers(self, remaining: int, window: float) -> None:
        """Releases holds of the owner no guard stands for (the caller holds
        ``ops``; see ``HandleState.may_clear_leftovers``)."""
        if not self.may_clear_leftovers(remaining):
            return
        log.debug(
            "clearing leftover holds: key=%s owner=%s remaining=%d",
            self.key_text(),
            self.owner,
            remaining,
        )
        try:
            self.release_cmd(remaining, window)
        except Exception as e:
            log.warning("could not clear leftover holds; they expire after the ttl: %r", e)

    # Looking and clearing.

    def info(self) -> KeyInfo | None:
        return parse_key_info(self.call(proto.info_args(self.key)))

    def force_release(self, owner: str | None) -> bool:
        # The lease held when the request goes out: one granted later (to a
        # concurrent acquire of this handle) may well outlive it.
        held = self.live_lease() if owner is None or owner == self.owner else None
        removed = proto.forced(self.call(proto.force_release_args(self.key, owner)))
        if held is not None and held.lose(LeaseLost.NOT_HELD):
            log.warning(
                "lock force-released through its own handle: key=%s token=%d",
                self.key_text(),
                held.token,
            )
        return removed


def _event_setter(lease: Lease) -> Callable[[LeaseLost], None]:
    event: threading.Event = lease.signal
    return lambda _reason: event.set()


def _abandoned(handle: _Handle, cell: list[Lease], request: proto.Request) -> None:
    """A guard was garbage-collected without a release: releases it in the
    background (as the guard's own release would)."""
    try:
        lease = cell.pop()
    except IndexError:
        return
    detached = lease.detach(request.hold, request.release_count())
    if detached.lost:
        return
    log.warning(
        "guard dropped without release; releasing it in the background: key=%s", handle.key_text()
    )

    def run() -> None:
        try:
            handle.finish_release(lease, detached)
        except Exception as e:
            log.warning("release of a dropped guard failed; the lease expires after its ttl: %r", e)

    threading.Thread(target=run, name="fencelock-release", daemon=True).start()


class Guard:
    """A granted lock, read lock or semaphore permits. While it lives its
    watchdog (if on) renews the lease.

    - ``token``: the fencing token, to pass along with every write the lock
      protects.
    - ``lost``: a ``threading.Event`` set as soon as the lease is known lost,
      ``lost_reason`` says why; ``remaining()``: how long it is still known
      held.
    - ``release()``, or leave the ``with`` block: gives back exactly what this
      guard stands for. A guard that is garbage-collected unreleased is
      released in the background.

    Guards that re-entered through one handle share one lease: one token, one
    watchdog, one ``lost`` event.
    """

    __slots__ = (
        "__weakref__",
        "_cell",
        "_finalizer",
        "_handle",
        "_lease",
        "_request",
        "lost",
        "token",
    )

    def __init__(self, handle: _Handle, lease: Lease, request: proto.Request) -> None:
        self._handle = handle
        self._lease = lease
        self._request = request
        self.token: int = lease.token
        self.lost: threading.Event = lease.signal
        #: Holds the lease until the guard is released.
        self._cell: list[Lease] = [lease]
        self._finalizer = weakref.finalize(self, _abandoned, handle, self._cell, request)
        # At interpreter exit nothing can be sent any more: the lease expires
        # after its ttl.
        self._finalizer.atexit = False

    @property
    def key(self) -> proto.Key:
        return self._handle.key

    @property
    def owner(self) -> str:
        """The owner string the server knows this holder by."""
        return self._handle.owner

    @property
    def permits(self) -> int:
        """The permits this guard stands for (1 for a lock)."""
        return self._request.release_count()

    @property
    def lost_reason(self) -> LeaseLost | None:
        """Why the lease was lost (None while it is not)."""
        return self._lease.lost

    def remaining(self) -> float:
        """Seconds the lease is still known held, as the client counts it:
        the time to the local deadline (send time of the last confirmed
        request + ttl - safety margin), without asking the server; 0 once
        lost or released."""
        if not self._cell:
            return 0.0
        return self._lease.remaining(time.monotonic())

    def release(self) -> bool:
        """Releases what this guard stands for: stops the watchdog (if this
        was the lease's last guard), then sends ``LOCK.RELEASE`` (``COUNT n``
        for a semaphore guard of ``n`` permits). Returns whether it was still
        held. A guard whose lease was lost sends nothing and returns False: a
        lost guard can never release a newer grant of the same handle.

        The release carries a request id and is sent again when no answer
        comes, for at most the lease's ttl (``ConnectionFailed`` after that).

        A read guard released while a write guard of the same handle lives
        sends nothing yet and returns True: the server releases exclusive
        holds first, so releasing now would end the write lock under the live
        write guard. Its hold goes with the handle's last write guard."""
        try:
            lease = self._cell.pop()  # atomic: one release wins
        except IndexError:
            return False
        self._finalizer.detach()
        detached = lease.detach(self._request.hold, self._request.release_count())
        if detached.lost:
            log.debug("lease was lost; nothing to release: key=%s", self._handle.key_text())
            return False
        return self._handle.finish_release(lease, detached)

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"Guard(key={self._handle.key!r}, owner={self.owner!r}, token={self.token}, "
            f"lost={self.lost_reason})"
        )


class Lock:
    """A lock handle: one key, one owner string (``<client uuid>:<n>``).
    Acquiring through the same handle again while it holds the lock
    re-enters (the server counts holds, the token stays); another handle, of
    this client or any other, is excluded."""

    __slots__ = ("_h",)

    def __init__(self, handle: _Handle) -> None:
        self._h = handle

    @property
    def key(self) -> proto.Key:
        return self._h.key

    @property
    def owner(self) -> str:
        return self._h.owner

    def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
        cancel: threading.Event | None = None,
    ) -> Guard | None:
        """Takes the lock (or re-enters it): the guard when granted, None
        when another owner holds it (after the wait, if one was asked for).

        ``ttl`` seconds (default 30); ``wait``: None (try once), seconds, or
        ``math.inf`` (queue on the server until granted, FIFO); ``watchdog``
        renews every ``renew_every`` (default ttl/3); ``safety_margin``
        (default ttl/10) is how long before the server could expire the lease
        the client gives it up; ``on_lost(reason)`` is called (in a watchdog
        thread) when the lease is lost; setting ``cancel`` ends a waiting
        acquire (it returns None; its connection is closed, which takes it out
        of the server's queue)."""
        return self._h.acquire(
            proto.Request(Hold.EXCLUSIVE),
            ttl,
            wait,
            watchdog,
            renew_every,
            safety_margin,
            on_lost,
            cancel,
        )

    def info(self) -> LockInfo | None:
        """The lock as the server shows it now (``LOCK.INFO``), None when
        free; ``WrongKindError`` when the key is held shared or is a
        semaphore."""
        info = self._h.info()
        if info is None or isinstance(info, LockInfo):
            return info
        raise WrongKindError(info.mode.value)

    def is_locked(self) -> bool:
        """Whether anyone holds the key now, in any mode."""
        return self._h.info() is not None

    def hold_count(self) -> int:
        """This handle's holds on the server now (0 when free or another's)."""
        info = self._h.info()
        return 0 if info is None else info.held_by(self._h.owner)

    def force_release(self) -> bool:
        """``LOCK.FORCERELEASE`` (administrative): removes the lock whoever
        holds it; True if there was one. This handle's guards are lost at
        once; another holder's watchdog finds out at its next renewal."""
        return self._h.force_release(None)


class RwLock:
    """A read/write lock handle: one key, one owner for both sides. The
    write holder may take the read side (the downgrade, same token); a
    handle holding only read guards that asks for the write side gets
    ``UpgradeError``."""

    __slots__ = ("_h",)

    def __init__(self, handle: _Handle) -> None:
        self._h = handle

    @property
    def key(self) -> proto.Key:
        return self._h.key

    @property
    def owner(self) -> str:
        return self._h.owner

    def read(self) -> ReadLock:
        return ReadLock(self._h)

    def write(self) -> WriteLock:
        return WriteLock(self._h)

    def info(self) -> KeyInfo | None:
        """The key as the server shows it: ``LockInfo`` (a writer) or
        ``SharedInfo`` (readers), None when free."""
        return self._h.info()

    def is_locked(self) -> bool:
        return self._h.info() is not None

    def hold_count(self) -> int:
        """This owner's holds (exclusive and shared) on the server now."""
        info = self._h.info()
        return 0 if info is None else info.held_by(self._h.owner)

    def force_release(self) -> bool:
        """Removes every hold on the key (``LOCK.FORCERELEASE key``)."""
        return self._h.force_release(None)

    def force_release_owner(self, owner: str) -> bool:
        """Removes only ``owner``'s holds (``LOCK.FORCERELEASE key owner``),
        e.g. a dead reader's."""
        return self._h.force_release(owner)


class _Side:
    __slots__ = ("_h",)
    _hold: Hold

    def __init__(self, handle: _Handle) -> None:
        self._h = handle

    @property
    def owner(self) -> str:
        return self._h.owner

    def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
        cancel: threading.Event | None = None,
    ) -> Guard | None:
        """As :meth:`Lock.acquire`."""
        return self._h.acquire(
            proto.Request(self._hold),
            ttl,
            wait,
            watchdog,
            renew_every,
            safety_margin,
            on_lost,
            cancel,
        )


class ReadLock(_Side):
    """The read side of an :class:`RwLock` (``LOCK.ACQUIRE ... SHARED``):
    granted at once when nobody holds the key exclusively and nobody waits
    (a queued writer is not overtaken by later readers)."""

    __slots__ = ()
    _hold = Hold.SHARED


class WriteLock(_Side):
    """The write side of an :class:`RwLock`: the exclusive lock (the same
    lock as ``client.lock(key)``)."""

    __slots__ = ()
    _hold = Hold.EXCLUSIVE


class Semaphore:
    """A handle on a semaphore of ``permits`` at one key, with one owner
    string. All acquires through it share one lease; each guard gives back
    exactly its own permits."""

    __slots__ = ("_h", "permits")

    def __init__(self, handle: _Handle, permits: int) -> None:
        self._h = handle
        self.permits = permits

    @property
    def key(self) -> proto.Key:
        return self._h.key

    @property
    def owner(self) -> str:
        return self._h.owner

    def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        count: int = 1,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
        cancel: threading.Event | None = None,
    ) -> Guard | None:
        """Takes ``count`` permits (or ``count`` more): the guard when
        granted, None when that many are not free (after the wait) — which
        says nothing about the permits the handle holds already. Otherwise as
        :meth:`Lock.acquire`."""
        if not isinstance(count, int) or not 1 <= count <= self.permits:
            raise InvalidOptionsError("a semaphore acquire takes 1 to all of its permits")
        request = proto.Request(Hold.PERMITS, limit=self.permits, count=count)
        return self._h.acquire(
            request, ttl, wait, watchdog, renew_every, safety_margin, on_lost, cancel
        )

    def info(self) -> SemaphoreInfo | None:
        """The semaphore as the server shows it, None when nobody holds
        permits; ``WrongKindError`` when the key is a read/write lock."""
        info = self._h.info()
        if info is None or isinstance(info, SemaphoreInfo):
            return info
        raise WrongKindError(info.mode.value)

    def available(self) -> int:
        """Free permits now (all of them when nobody holds any)."""
        info = self.info()
        return self.permits if info is None else info.available

    def held(self) -> int:
        """This owner's permits on the server now."""
        info = self.info()
        return 0 if info is None else info.held_by(self._h.owner)

    def is_locked(self) -> bool:
        return self._h.info() is not None

    def force_release(self) -> bool:
        return self._h.force_release(None)

    def force_release_owner(self, owner: str) -> bool:
        return self._h.force_release(owner)
