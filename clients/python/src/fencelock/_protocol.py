"""The module's commands as the client sends them, the checks on their
replies (docs/INTERFACE.md is the contract), and the retry rules shared by
the sync and the asyncio clients.

Retries: a connection can fail between the server applying a request and
the client reading the reply. Sent again as it was, a release would release
twice and an acquire would re-enter (or take its permits) twice. Every
acquire and release therefore carries ``ID request-id``, unique per
operation of the handle and the same on each of its retries: the server
answers an id it has applied with the reply it gave and changes nothing.
redis-py's own retry is not used for them (the client sends over redis-py's
connections directly). How long an operation is retried, from its first
send: an acquire without a wait, and a release, for the lease's ttl (a grant
made by a lost attempt has expired by then anyway); a waiting acquire until
its wait deadline and at least as long, each retry sending the wait that is
left; a wait without limit until an answer comes. Renewals carry no id
(``LOCK.RENEW`` is idempotent; the watchdog retries until the local
deadline). ``LOCK.FORCERELEASE`` is never retried: sent again it could
remove a holder granted in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.exceptions

from ._lease import Hold, ceil_ms
from .errors import ServerError, UnexpectedReplyError

Key = str | bytes
Args = tuple[Any, ...]

#: The pause before the first retry; it doubles after each failure, up to
#: ``MAX_DELAY``.
FIRST_DELAY = 0.010
MAX_DELAY = 1.0

#: How long a reply to a request that does not block may take before the
#: attempt counts as failed (and is sent again with the same id).
DEFAULT_RESPONSE_TIMEOUT = 2.0

#: Server errors that say "not now, nothing was applied".
RETRYABLE_CODES = frozenset({"LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"})

UPGRADE_PREFIX = "the owner holds this lock shared"
OVER_COUNT_PREFIX = "COUNT is more than the owner holds"


@dataclass(frozen=True)
class Request:
    """What an acquire asks for: the options of ``LOCK.ACQUIRE`` before
    ``WAIT``."""

    hold: Hold
    #: For a semaphore: its ``LIMIT`` and the ``COUNT`` asked for.
    limit: int = 0
    count: int = 1

    def release_count(self) -> int:
        return self.count if self.hold is Hold.PERMITS else 1


def acquire_args(
    key: Key, owner: str, ttl_ms: int, request: Request, wait_ms: int | None, request_id: str
) -> Args:
    """``LOCK.ACQUIRE key owner ttl-ms [SHARED | LIMIT p COUNT n] [WAIT ms]
    ID request-id``."""
    args: list[Any] = ["LOCK.ACQUIRE", key, owner, ttl_ms]
    if request.hold is Hold.SHARED:
        args.append("SHARED")
    elif request.hold is Hold.PERMITS:
        args += ["LIMIT", request.limit, "COUNT", request.count]
    if wait_ms is not None:
        args += ["WAIT", wait_ms]
    args += ["ID", request_id]
    return tuple(args)


def renew_args(key: Key, owner: str, ttl_ms: int) -> Args:
    return ("LOCK.RENEW", key, owner, ttl_ms)


def release_args(key: Key, owner: str, count: int, request_id: str) -> Args:
    """``LOCK.RELEASE key owner [COUNT n] ID request-id`` (``COUNT`` only
    when it is not 1)."""
    if count == 1:
        return ("LOCK.RELEASE", key, owner, "ID", request_id)
    return ("LOCK.RELEASE", key, owner, "COUNT", count, "ID", request_id)


def force_release_args(key: Key, owner: str | None) -> Args:
    return ("LOCK.FORCERELEASE", key) if owner is None else ("LOCK.FORCERELEASE", key, owner)


def info_args(key: Key) -> Args:
    return ("LOCK.INFO", key)


def pack(args: Args, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """One command in RESP (the commands here are small and few: this is
    several times faster than redis-py's general packer). Text is encoded
    with the connection's ``encoding``."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode(encoding, errors)
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            raise TypeError(f"cannot send {arg!r}")
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def request_id(op: str, n: int) -> str:
    """The request id of a handle's ``n``-th operation (``acquire-<n>``,
    ``release-<n>``). Ids are kept per key and owner on the server, and a
    handle's owner is its own, so the handle's counter makes them unique."""
    return f"{op}-{n}"


def _is_int(reply: Any) -> bool:
    return isinstance(reply, int) and not isinstance(reply, bool)


def token(reply: Any) -> int | None:
    """``LOCK.ACQUIRE``: a positive token, or None (not granted)."""
    if reply is None:
        return None
    if _is_int(reply) and reply > 0:
        return int(reply)
    raise UnexpectedReplyError("LOCK.ACQUIRE", reply)


def remaining(reply: Any) -> int | None:
    """``LOCK.RELEASE``: what the owner still holds, or None (held nothing)."""
    if reply is None:
        return None
    if _is_int(reply) and reply >= 0:
        return int(reply)
    raise UnexpectedReplyError("LOCK.RELEASE", reply)


def renewed(reply: Any) -> bool:
    """``LOCK.RENEW``: 1 held, 0 not."""
    if reply in (0, 1) and _is_int(reply):
        return bool(reply == 1)
    raise UnexpectedReplyError("LOCK.RENEW", reply)


def forced(reply: Any) -> bool:
    """``LOCK.FORCERELEASE``: 1 removed something, 0 nothing."""
    if reply in (0, 1) and _is_int(reply):
        return bool(reply == 1)
    raise UnexpectedReplyError("LOCK.FORCERELEASE", reply)


def is_upgrade(error: ServerError) -> bool:
    return error.code == "ERR" and error.message.startswith(UPGRADE_PREFIX)


def held_in_over_count(error: ServerError) -> int | None:
    """The ``h`` of ``ERR COUNT is more than the owner holds (h); ...``, or
    None when the error is another."""
    if error.code != "ERR" or not error.message.startswith(OVER_COUNT_PREFIX):
        return None
    _, _, rest = error.message.partition("(")
    held, _, _ = rest.partition(")")
    return int(held) if held.isdigit() else None


def server_error(error: redis.exceptions.RedisError) -> ServerError | None:
    """A redis-py exception as the server's error reply, or None when it is a
    connection failure (which may or may not have been applied)."""
    if isinstance(error, redis.exceptions.BusyLoadingError):
        return ServerError("LOADING", str(error))
    if isinstance(error, redis.exceptions.ResponseError):
        return ServerError.from_redis(error)
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether a failed attempt may be sent again: the connection failed
    (the request may or may not have been applied), or the server said it
    cannot take requests right now (nothing was applied). Any other answer
    is final."""
    if isinstance(error, ServerError):
        return error.code in RETRYABLE_CODES
    return isinstance(
        error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
    )


class Retries:
    """The attempts of one operation: when the first was sent, until when
    retries are sent, and the pause before the next."""

    __slots__ = ("deadline", "delay", "failed", "first_sent")

    def __init__(self, window: float | None, now: float) -> None:
        self.first_sent = now
        #: No attempt is sent after this; None: until an answer comes.
        self.deadline = None if window is None else now + window
        self.delay = FIRST_DELAY
        self.failed = 0

    @property
    def retried(self) -> bool:
        """Whether an attempt failed before: the answer may be to a retry."""
        return self.failed > 0

    def pause(self, error: BaseException, now: float) -> float | None:
        """After a failed attempt: the pause before the next one, or None when
        the error is final or the window has closed (the last attempt is sent
        at the end of the window)."""
        if not is_retryable(error):
            return None
        self.failed += 1
        if self.deadline is not None and now >= self.deadline:
            return None
        pause = self.delay
        if self.deadline is not None:
            pause = min(pause, self.deadline - now)
        self.delay = min(self.delay * 2, MAX_DELAY)
        return max(pause, 0.0)


def retry_window(ttl: float, wait_ms: int | None) -> float | None:
    """How long an acquire is retried while no answer comes: until the wait
    deadline and at least for the ttl; None for a wait without limit."""
    if wait_ms is None:
        return ttl
    if wait_ms == 0:
        return None
    return max(ttl, wait_ms / 1000)


def wait_ms_left(wait_ms: int | None, first_sent: float, now: float) -> int | None:
    """The ``WAIT`` argument of an attempt sent at ``now`` when the first was
    sent at ``first_sent``: the wait that is left, at least 1 ms."""
    if wait_ms is None or wait_ms == 0:
        return wait_ms
    left = ceil_ms(first_sent + wait_ms / 1000 - now)
    return min(max(left, 1), wait_ms)
