"""The exceptions of the package.

A lock that someone else holds is not an error: ``acquire`` returns
``None``. Everything here derives from :class:`FencelockError`.
"""

from __future__ import annotations

import redis.exceptions


class FencelockError(Exception):
    """Base class of every exception this package raises."""


class InvalidOptionsError(FencelockError, ValueError):
    """The options cannot be sent as they are (a ttl below 1 ms, a renewal
    interval that leaves no time before the local deadline, a semaphore
    count out of range, ...)."""


class ServerError(FencelockError):
    """The server answered with an error. ``str(error)`` is the server's
    message with its code (``ERR ...``, ``WRONGTYPE ...``); ``code`` and
    ``message`` are its two parts. Nothing changed on the server."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}" if message else code)
        self.code = code
        self.message = message

    @classmethod
    def from_redis(cls, error: redis.exceptions.ResponseError) -> ServerError:
        """Rebuilds the server's full message from a redis-py error (which
        strips the codes it knows)."""
        text = str(error)
        code = getattr(error, "status_code", None)
        if code is None:
            first, _, rest = text.partition(" ")
            if first.isupper() and first.isalpha():
                code, text = first, rest
            else:
                code = "ERR"
        cls_for_code = WrongTypeError if code == "WRONGTYPE" else cls
        return cls_for_code(code, text)


class WrongTypeError(ServerError):
    """``WRONGTYPE``: the key holds another kind of lock (a semaphore of
    other permits, a read/write lock where a semaphore was asked for) or
    another Redis type."""


class UpgradeError(FencelockError):
    """The write side of a read/write lock was asked for while its handle
    holds the lock shared only. The server refuses upgrades (two readers
    upgrading at once would wait for each other forever); nothing changed:
    release the read guards first."""

    def __init__(self, server_message: str) -> None:
        super().__init__(server_message)


class WrongKindError(FencelockError):
    """The key holds another kind of lock than the call reads (e.g.
    ``Lock.info`` on a key held shared)."""

    def __init__(self, found: str) -> None:
        super().__init__(f"the key holds a lock of another kind ({found})")
        self.found = found


class ConnectionFailed(FencelockError, redis.exceptions.ConnectionError):
    """No answer came (connection error or timeout) before the operation's
    retry window closed. When this comes from an acquire the outcome is
    unknown: the lock may have been granted; nothing renews such a grant, so
    it expires after its ttl (and the handle's next final release clears
    it)."""


class UnexpectedReplyError(FencelockError):
    """The server answered something the command interface does not allow."""

    def __init__(self, command: str, reply: object) -> None:
        super().__init__(f"unexpected reply to {command}: {reply!r}")
        self.command = command
        self.reply = reply
