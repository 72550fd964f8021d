"""Python client for the fencelock Redis module: locks, read/write locks and
semaphores with fencing tokens, server-side FIFO waiting, exactly-once
retries and a watchdog that tells you when the lease is lost.

Sync::

    import redis
    from fencelock import Client

    client = Client(redis.Redis())
    with client.lock("job").acquire() as guard:
        ...  # guard.token, guard.lost, guard.remaining()

asyncio: :mod:`fencelock.asyncio` has the same API over ``redis.asyncio``.
"""

from ._lease import LeaseLost
from .client import Client, Guard, Lock, ReadLock, RwLock, Semaphore, WriteLock
from .errors import (
    ConnectionFailed,
    FencelockError,
    InvalidOptionsError,
    ServerError,
    UnexpectedReplyError,
    UpgradeError,
    WrongKindError,
    WrongTypeError,
)
from .info import Holder, KeyInfo, LockInfo, Mode, PermitHolder, SemaphoreInfo, SharedInfo

__all__ = [
    "Client",
    "ConnectionFailed",
    "FencelockError",
    "Guard",
    "Holder",
    "InvalidOptionsError",
    "KeyInfo",
    "LeaseLost",
    "Lock",
    "LockInfo",
    "Mode",
    "PermitHolder",
    "ReadLock",
    "RwLock",
    "Semaphore",
    "SemaphoreInfo",
    "ServerError",
    "SharedInfo",
    "UnexpectedReplyError",
    "UpgradeError",
    "WriteLock",
    "WrongKindError",
    "WrongTypeError",
]

__version__ = "0.1.0"
