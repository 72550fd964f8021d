"""The asyncio client: the twin of :mod:`fencelock.client` over
``redis.asyncio`` (``redis.asyncio.Redis`` or
``redis.asyncio.cluster.RedisCluster``). The same handles and guards, with
``async`` methods; ``guard.lost`` is awaitable (``await guard.lost`` gives
the :class:`~fencelock.LeaseLost` reason) and ``async with`` releases.

One client belongs to one event loop. Its watchdog is one task on that
loop, whatever the number of locks held, plus a timer per lease for its
local deadline; code that blocks the loop delays both, so keep the loop
free as you would for any asyncio I/O.

Cancelling a waiting acquire (``task.cancel()``, ``asyncio.timeout``)
closes its connection, which takes it out of the server's queue; a grant
that raced with that is never renewed and expires after its ttl.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid
import weakref
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from . import _protocol as proto
from ._atransport import ATransport
from ._core import HandleState, Released, log, release_outcome, safe_listener
from ._lease import Detached, Hold, Lease, LeaseLost, LeaseParams, lease_params, wait_ms
from ._watchdog import EARLY, Watched
from .client import MAX_PERMITS, _give_up
from .errors import InvalidOptionsError, ServerError, UpgradeError, WrongKindError
from .info import KeyInfo, LockInfo, SemaphoreInfo, parse_key_info

__all__ = ["Client", "Guard", "Lock", "Lost", "ReadLock", "RwLock", "Semaphore", "WriteLock"]

OnLost = Callable[[LeaseLost], None]


class Client:
    """A lock client over ``redis.asyncio``: one random UUID, the watchdog
    task and the handles taken from it. ``response_timeout`` as for the sync
    :class:`fencelock.Client`."""

    def __init__(
        self,
        conn: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        response_timeout: float = proto.DEFAULT_RESPONSE_TIMEOUT,
    ) -> None:
        self.response_timeout = float(response_timeout)
        self._transport = ATransport(conn, self.response_timeout)
        self.id = uuid.uuid4()
        self._handles = itertools.count(1)
        self._watchdog = _Watchdog(self._transport)

    def _owner(self) -> str:
        return f"{self.id}:{next(self._handles)}"

    def lock(self, key: proto.Key) -> Lock:
        return Lock(_Handle(self, key, self._owner()))

    def rw_lock(self, key: proto.Key) -> RwLock:
        return RwLock(_Handle(self, key, self._owner()))

    def semaphore(self, key: proto.Key, permits: int) -> Semaphore:
        if not isinstance(permits, int) or not 1 <= permits <= MAX_PERMITS:
            raise InvalidOptionsError("a semaphore has 1 to 1000000 permits")
        return Semaphore(_Handle(self, key, self._owner()), permits)

    @property
    def renewals(self) -> int:
        return self._watchdog.renewals

    async def aclose(self) -> None:
        """Stops the watchdog: held leases are no longer renewed or watched."""
        await self._watchdog.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Watchdog:
    """One renewer task (renewals due together share a pipeline) and one
    loop timer per lease for its local deadline; see ``_watchdog``."""

    def __init__(self, transport: ATransport) -> None:
        self._transport = transport
        self._seq = itertools.count()
        self._renewals: list[tuple[float, int, Watched]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def watch(self, watched: Watched) -> None:
        loop = asyncio.get_running_loop()
        self._arm_deadline(loop, watched)
        if watched.lease.params.watchdog:
            if self._task is None or self._task.done():
                self._wake = asyncio.Event()
                self._task = loop.create_task(self._run(), name="fencelock-renewer")
            lease = watched.lease
            self._schedule(watched, lease.confirmed_at + lease.params.renew_every)

    def _arm_deadline(self, loop: asyncio.AbstractEventLoop, watched: Watched) -> None:
        delay = max(watched.lease.deadline - time.monotonic(), 0.0)
        loop.call_later(delay, self._check_deadline, loop, watched)

    def _check_deadline(self, loop: asyncio.AbstractEventLoop, watched: Watched) -> None:
        lease = watched.lease
        if not lease.live:
            return
        if lease.deadline > time.monotonic():  # confirmed since
            self._arm_deadline(loop, watched)
            return
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

    def _schedule(self, watched: Watched, at: float) -> None:
        watched.due = at
        early = at - watched.lease.params.renew_every * EARLY
        first = not self._renewals or early < self._renewals[0][0]
        heapq.heappush(self._renewals, (early, next(self._seq), watched))
        if first and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            now = time.monotonic()
            if not self._renewals or self._renewals[0][0] > now:
                timeout = self._renewals[0][0] - now if self._renewals else None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            due: list[Watched] = []
            while self._renewals and self._renewals[0][0] <= now:
                watched = heapq.heappop(self._renewals)[2]
                if watched.lease.live:
                    due.append(watched)
            if due:
                try:
                    await self._renew(due)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("watchdog renewal round failed")
                    for watched in due:
                        self._schedule(watched, time.monotonic() + watched.lease.params.retry_delay)

    async def _renew(self, due: list[Watched]) -> None:
        sent = time.monotonic()
        timeout = min(min(sent + w.lease.params.renew_every, w.lease.deadline) for w in due) - sent
        commands = [(w.key, proto.renew_args(w.key, w.owner, w.lease.params.ttl_ms)) for w in due]
        try:
            replies = await self._transport.batch(commands, max(timeout, 0.001))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            replies = [e] * len(due)
        now = time.monotonic()
        for watched, reply in zip(due, replies, strict=True):
            lease = watched.lease
            if reply == 1 and not isinstance(reply, BaseException):
                lease.confirm(sent)
                self.renewals += 1
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


class _Handle(HandleState):
    """The asyncio twin of the sync client's handle state and requests."""

    def __init__(self, client: Client, key: proto.Key, owner: str) -> None:
        super().__init__(key, owner)
        self.client = client
        self.transport = client._transport
        self.acquiring = asyncio.Lock()
        self.ops = asyncio.Lock()

    async def call(self, args: proto.Args) -> Any:
        try:
            return await self.transport.call(self.key, args, fresh=True)
        except (redis.exceptions.RedisError, OSError) as e:
            raise _give_up(e) from e

    async def acquire(
        self,
        request: proto.Request,
        ttl: float,
        wait: float | None,
        watchdog: bool,
        renew_every: float | None,
        safety_margin: float | None,
        on_lost: OnLost | None,
    ) -> Guard | None:
        fresh = lease_params(ttl, watchdog, renew_every, safety_margin)
        w = wait_ms(wait)
        async with self.acquiring:
            held = self.live_lease()
            params = held.params if held is not None else fresh
            self.in_flight = True
            try:
                token, first_sent = await self._send_acquire(request, params, w)
            except BaseException:
                self.in_flight = False
                raise
            async with self.ops:
                self.in_flight = False
                if token is None:
                    if request.hold is not Hold.PERMITS:
                        lease = self.lose_live_lease(LeaseLost.NOT_HELD)
                        if lease is not None:
                            log.warning(
                                "lock re-entry found the lease lost: key=%s owner=%s token=%d",
                                self.key_text(),
                                self.owner,
                                lease.token,
                            )
                    return None
                sent, gone = await self._confirm_after_wait(params, w, first_sent)
                lease, started = self.record_grant(
                    token, params, request.hold, sent, asyncio.Event, _event_setter
                )
                if started:
                    self.client._watchdog.watch(
                        Watched(lease, self.key, self.owner, self.key_text())
                    )
                if gone:
                    lease.lose(LeaseLost.NOT_HELD)
                if on_lost is not None:
                    lease.listen(safe_listener(on_lost))
                return Guard(self, lease, request)

    async def _send_acquire(
        self, request: proto.Request, params: LeaseParams, w: int | None
    ) -> tuple[int | None, float]:
        rid = self.next_id("acquire")
        retries = proto.Retries(proto.retry_window(params.ttl, w), time.monotonic())
        while True:
            left = proto.wait_ms_left(w, retries.first_sent, time.monotonic())
            args = proto.acquire_args(self.key, self.owner, params.ttl_ms, request, left, rid)
            timeout = None if not left else left / 1000 + self.client.response_timeout
            try:
                reply = await self.transport.call(
                    self.key, args, waiting=w is not None, timeout=timeout
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
            await asyncio.sleep(pause)

    async def _confirm_after_wait(
        self, params: LeaseParams, w: int | None, first_sent: float
    ) -> tuple[float, bool]:
        if w is None or time.monotonic() < first_sent + params.renew_every:
            return first_sent, False
        sent = time.monotonic()
        try:
            held = await self.renew_once(params.ttl_ms)
        except Exception as e:
            log.warning(
                "could not confirm a lease granted after a wait: key=%s error=%r",
                self.key_text(),
                e,
            )
            return first_sent, False
        return (sent, False) if held else (first_sent, True)

    async def renew_once(self, ttl_ms: int) -> bool:
        try:
            return proto.renewed(
                await self.transport.call(self.key, proto.renew_args(self.key, self.owner, ttl_ms))
            )
        except ServerError as e:
            if e.code == "WRONGTYPE":
                return False
            raise

    async def release_cmd(self, count: int, window: float) -> Released:
        rid = self.next_id("release")
        retries = proto.Retries(window, time.monotonic())
        args = proto.release_args(self.key, self.owner, count, rid)
        while True:
            try:
                reply = await self.transport.call(self.key, args)
                return Released(proto.remaining(reply), retries.retried, retries.first_sent)
            except (ServerError, redis.exceptions.RedisError, OSError) as e:
                pause = retries.pause(e, time.monotonic())
                if pause is None:
                    raise _give_up(e) from e
                if retries.failed == 1:
                    log.warning(
                        "release got no answer; sending it again with the same request id: key=%s error=%r",
                        self.key_text(),
                        e,
                    )
                await asyncio.sleep(pause)

    async def finish_release(self, lease: Lease, detached: Detached) -> bool:
        if detached.count == 0:
            return True
        async with self.ops:
            if lease.lost is not None:
                return False
            window = lease.params.ttl
            try:
                released = await self.release_cmd(detached.count, window)
            except ServerError as e:
                held = proto.held_in_over_count(e)
                if held is not None:
                    lease.lose(LeaseLost.NOT_HELD)
                    if detached.last:
                        await self.clear_leftovers(held, window)
                raise
            outcome = release_outcome(lease, detached.last, released)
            if outcome.clear:
                await self.clear_leftovers(outcome.clear, window)
            log.info(
                "lock released: key=%s owner=%s token=%d count=%d still_held=%s",
                self.key_text(),
                self.owner,
                lease.token,
                detached.count,
                outcome.held,
            )
            return outcome.held

    async def clear_leftovers(self, remaining: int, window: float) -> None:
        if not self.may_clear_leftovers(remaining):
            return
        try:
            await self.release_cmd(remaining, window)
        except Exception as e:
            log.warning("could not clear leftover holds; they expire after the ttl: %r", e)

    async def info(self) -> KeyInfo | None:
        return parse_key_info(await self.call(proto.info_args(self.key)))

    async def force_release(self, owner: str | None) -> bool:
        held = self.live_lease() if owner is None or owner == self.owner else None
        removed = proto.forced(await self.call(proto.force_release_args(self.key, owner)))
        if held is not None and held.lose(LeaseLost.NOT_HELD):
            log.warning(
                "lock force-released through its own handle: key=%s token=%d",
                self.key_text(),
                held.token,
            )
        return removed


def _event_setter(lease: Lease) -> Callable[[LeaseLost], None]:
    event: asyncio.Event = lease.signal
    return lambda _reason: event.set()


class Lost:
    """A guard's "lost" signal: ``await guard.lost`` waits until the lease
    is known lost and gives the reason; ``is_set()`` asks without waiting.
    It never completes when the lease is released first."""

    __slots__ = ("_lease",)

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def is_set(self) -> bool:
        return self._lease.lost is not None

    async def wait(self) -> LeaseLost:
        event: asyncio.Event = self._lease.signal
        await event.wait()
        reason = self._lease.lost
        assert reason is not None
        return reason

    def __await__(self) -> Generator[Any, None, LeaseLost]:
        return self.wait().__await__()


_background: set[asyncio.Task[Any]] = set()


def _abandoned(
    loop: asyncio.AbstractEventLoop, handle: _Handle, cell: list[Lease], request: proto.Request
) -> None:
    try:
        lease = cell.pop()
    except IndexError:
        return
    detached = lease.detach(request.hold, request.release_count())
    if detached.lost or loop.is_closed():
        return
    log.warning(
        "guard dropped without release; releasing it in the background: key=%s", handle.key_text()
    )

    def start() -> None:
        task = loop.create_task(handle.finish_release(lease, detached))
        _background.add(task)
        task.add_done_callback(_background.discard)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(start)


class Guard:
    """The asyncio twin of :class:`fencelock.Guard`: ``token``, ``lost``
    (awaitable), ``lost_reason``, ``remaining()``, ``await release()``,
    ``async with``."""

    __slots__ = ("__weakref__", "_cell", "_finalizer", "_handle", "_lease", "_request", "token")

    def __init__(self, handle: _Handle, lease: Lease, request: proto.Request) -> None:
        self._handle = handle
        self._lease = lease
        self._request = request
        self.token: int = lease.token
        self._cell: list[Lease] = [lease]
        self._finalizer = weakref.finalize(
            self, _abandoned, asyncio.get_running_loop(), handle, self._cell, request
        )
        self._finalizer.atexit = False

    @property
    def key(self) -> proto.Key:
        return self._handle.key

    @property
    def owner(self) -> str:
        return self._handle.owner

    @property
    def permits(self) -> int:
        return self._request.release_count()

    @property
    def lost(self) -> Lost:
        return Lost(self._lease)

    @property
    def lost_reason(self) -> LeaseLost | None:
        return self._lease.lost

    def remaining(self) -> float:
        if not self._cell:
            return 0.0
        return self._lease.remaining(time.monotonic())

    async def release(self) -> bool:
        """As :meth:`fencelock.Guard.release`."""
        try:
            lease = self._cell.pop()
        except IndexError:
            return False
        self._finalizer.detach()
        detached = lease.detach(self._request.hold, self._request.release_count())
        if detached.lost:
            return False
        return await self._handle.finish_release(lease, detached)

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        return (
            f"Guard(key={self._handle.key!r}, owner={self.owner!r}, token={self.token}, "
            f"lost={self.lost_reason})"
        )


class Lock:
    """The asyncio twin of :class:`fencelock.Lock`."""

    __slots__ = ("_h",)

    def __init__(self, handle: _Handle) -> None:
        self._h = handle

    @property
    def key(self) -> proto.Key:
        return self._h.key

    @property
    def owner(self) -> str:
        return self._h.owner

    async def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
    ) -> Guard | None:
        """As :meth:`fencelock.Lock.acquire`; cancel a waiting acquire by
        cancelling its task."""
        return await self._h.acquire(
            proto.Request(Hold.EXCLUSIVE), ttl, wait, watchdog, renew_every, safety_margin, on_lost
        )

    async def info(self) -> LockInfo | None:
        info = await self._h.info()
        if info is None or isinstance(info, LockInfo):
            return info
        raise WrongKindError(info.mode.value)

    async def is_locked(self) -> bool:
        return await self._h.info() is not None

    async def hold_count(self) -> int:
        info = await self._h.info()
        return 0 if info is None else info.held_by(self._h.owner)

    async def force_release(self) -> bool:
        return await self._h.force_release(None)


class RwLock:
    """The asyncio twin of :class:`fencelock.RwLock`."""

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

    async def info(self) -> KeyInfo | None:
        return await self._h.info()

    async def is_locked(self) -> bool:
        return await self._h.info() is not None

    async def hold_count(self) -> int:
        info = await self._h.info()
        return 0 if info is None else info.held_by(self._h.owner)

    async def force_release(self) -> bool:
        return await self._h.force_release(None)

    async def force_release_owner(self, owner: str) -> bool:
        return await self._h.force_release(owner)


class _Side:
    __slots__ = ("_h",)
    _hold: Hold

    def __init__(self, handle: _Handle) -> None:
        self._h = handle

    @property
    def owner(self) -> str:
        return self._h.owner

    async def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
    ) -> Guard | None:
        return await self._h.acquire(
            proto.Request(self._hold), ttl, wait, watchdog, renew_every, safety_margin, on_lost
        )


class ReadLock(_Side):
    """The read side of an :class:`RwLock`."""

    __slots__ = ()
    _hold = Hold.SHARED


class WriteLock(_Side):
    """The write side of an :class:`RwLock`."""

    __slots__ = ()
    _hold = Hold.EXCLUSIVE


class Semaphore:
    """The asyncio twin of :class:`fencelock.Semaphore`."""

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

    async def acquire(
        self,
        ttl: float = 30.0,
        wait: float | None = None,
        watchdog: bool = True,
        renew_every: float | None = None,
        count: int = 1,
        *,
        safety_margin: float | None = None,
        on_lost: OnLost | None = None,
    ) -> Guard | None:
        if not isinstance(count, int) or not 1 <= count <= self.permits:
            raise InvalidOptionsError("a semaphore acquire takes 1 to all of its permits")
        request = proto.Request(Hold.PERMITS, limit=self.permits, count=count)
        return await self._h.acquire(
            request, ttl, wait, watchdog, renew_every, safety_margin, on_lost
        )

    async def info(self) -> SemaphoreInfo | None:
        info = await self._h.info()
        if info is None or isinstance(info, SemaphoreInfo):
            return info
        raise WrongKindError(info.mode.value)

    async def available(self) -> int:
        info = await self.info()
        return self.permits if info is None else info.available

    async def held(self) -> int:
        info = await self.info()
        return 0 if info is None else info.held_by(self._h.owner)

    async def is_locked(self) -> bool:
        return await self._h.info() is not None

    async def force_release(self) -> bool:
        return await self._h.force_release(None)

    async def force_release_owner(self, owner: str) -> bool:
        return await self._h.force_release(owner)
