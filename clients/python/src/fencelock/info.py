"""What ``LOCK.INFO`` shows, in its three shapes: :class:`LockInfo` (an
exclusive holder), :class:`SharedInfo` (readers) and :class:`SemaphoreInfo`
(permit holders). Each is a snapshot: by the time you read it the lock may
have changed hands. Times are seconds (``float``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import UnexpectedReplyError


class Mode(enum.Enum):
    """How a key is held: the ``mode`` field of ``LOCK.INFO``."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"
    SEMAPHORE = "semaphore"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LockInfo:
    """A lock held exclusively."""

    #: The holder's owner string (``<uuid>:<n>`` for this package's handles).
    owner: str
    #: Its holds (each re-entry adds one; after a downgrade its read holds
    #: count here too).
    holds: int
    #: What is left of the lease on the server's clock, in seconds.
    ttl: float
    #: The fencing token of the current grant.
    token: int
    #: Acquires waiting in the server's queue.
    waiters: int

    mode: ClassVar[Mode] = Mode.EXCLUSIVE

    def held_by(self, owner: str) -> int:
        return self.holds if self.owner == owner else 0


@dataclass(frozen=True)
class Holder:
    """One reader of a read/write lock held shared."""

    owner: str
    holds: int
    ttl: float
    token: int


@dataclass(frozen=True)
class SharedInfo:
    """A read/write lock held shared (readers only)."""

    waiters: int
    #: Oldest grant first.
    holders: tuple[Holder, ...]

    mode: ClassVar[Mode] = Mode.SHARED

    def held_by(self, owner: str) -> int:
        return sum(h.holds for h in self.holders if h.owner == owner)


@dataclass(frozen=True)
class PermitHolder:
    """One holder of a semaphore's permits."""

    owner: str
    permits: int
    ttl: float
    token: int


@dataclass(frozen=True)
class SemaphoreInfo:
    """A semaphore."""

    #: Its permits (the ``LIMIT`` it was created with).
    limit: int
    #: Permits nobody holds.
    available: int
    waiters: int
    #: Oldest grant first.
    holders: tuple[PermitHolder, ...]

    mode: ClassVar[Mode] = Mode.SEMAPHORE

    def held_by(self, owner: str) -> int:
        return sum(h.permits for h in self.holders if h.owner == owner)


KeyInfo = LockInfo | SharedInfo | SemaphoreInfo


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ValueError(value)


def _fields(reply: Any) -> dict[str, Any]:
    """The field/value pairs of a map (RESP3) or a flat array (RESP2)."""
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    if isinstance(reply, list) and len(reply) % 2 == 0:
        return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
    raise ValueError(reply)


def _count(fields: dict[str, Any], name: str) -> int:
    value = fields[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


def _holders(fields: dict[str, Any]) -> list[dict[str, Any]]:
    holders = fields["holders"]
    if not isinstance(holders, list):
        raise ValueError(holders)
    return [_fields(h) for h in holders]


def parse_key_info(reply: Any) -> KeyInfo | None:
    """Reads a ``LOCK.INFO`` reply, in RESP2 or RESP3, with or without
    ``decode_responses``; ``None`` when nothing is held."""
    if reply is None:
        return None
    try:
        f = _fields(reply)
        mode = _text(f.get("mode", "exclusive"))
        if mode == "exclusive":
            return LockInfo(
                owner=_text(f["owner"]),
                holds=_count(f, "holds"),
                ttl=_count(f, "ttl") / 1000,
                token=_count(f, "token"),
                waiters=_count(f, "waiters"),
            )
        if mode == "shared":
            return SharedInfo(
                waiters=_count(f, "waiters"),
                holders=tuple(
                    Holder(
                        owner=_text(h["owner"]),
                        holds=_count(h, "holds"),
                        ttl=_count(h, "ttl") / 1000,
                        token=_count(h, "token"),
                    )
                    for h in _holders(f)
                ),
            )
        if mode == "semaphore":
            return SemaphoreInfo(
                limit=_count(f, "limit"),
                available=_count(f, "available"),
                waiters=_count(f, "waiters"),
                holders=tuple(
                    PermitHolder(
                        owner=_text(h["owner"]),
                        permits=_count(h, "permits"),
                        ttl=_count(h, "ttl") / 1000,
                        token=_count(h, "token"),
                    )
                    for h in _holders(f)
                ),
            )
    except (KeyError, ValueError, TypeError):
        pass
    raise UnexpectedReplyError("LOCK.INFO", reply)
