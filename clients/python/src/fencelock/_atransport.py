"""How the asyncio client reaches the server: the twin of ``_transport``
over ``redis.asyncio`` — one command at a time over a connection of the
client's own (quick commands: socket timeout ``response_timeout``; a
waiting acquire: a connection of its own without one), never redis-py's
blind retry; a connection whose reply did not come in time, or whose task
was cancelled, is closed (which takes a waiter out of the server's queue).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from ._protocol import Args, Key, pack, server_error
from ._transport import BATCH_CHUNK, MAX_IDLE, MAX_REDIRECTS
from .errors import ServerError

Connection = Any  # redis.asyncio.connection.AbstractConnection


async def _read(conn: Connection, timeout: float | None) -> Any:
    """One reply within ``timeout`` (None: the socket timeout; ``math.inf``:
    no limit); an error reply as ``ServerError`` (MOVED/ASK as they are).
    redis-py closes the connection on a timeout or a cancellation while
    reading."""
    try:
        return await conn.read_response(timeout=None if timeout is None else max(timeout, 0.0))
    except redis.exceptions.AskError:
        raise
    except redis.exceptions.RedisError as e:
        converted = server_error(e)
        if converted is None:
            raise
        raise converted from e


class ANode:
    """One server: its address and settings, and the client's idle
    connections to it."""

    __slots__ = (
        "_class",
        "_encoding",
        "_quick",
        "_quick_kwargs",
        "_wait_kwargs",
        "_waiting",
        "name",
    )

    def __init__(
        self, name: str, connection_class: Any, settings: dict[str, Any], response_timeout: float
    ) -> None:
        self.name = name
        self._class = connection_class
        self._encoding = (
            settings.get("encoding", "utf-8"),
            settings.get("encoding_errors", "strict"),
        )
        self._quick_kwargs = {**settings, "socket_timeout": response_timeout}
        self._wait_kwargs = {**settings, "socket_timeout": None}
        self._quick: deque[Connection] = deque()
        self._waiting: deque[Connection] = deque()

    def _get(self, waiting: bool) -> Connection:
        try:
            return (self._waiting if waiting else self._quick).pop()
        except IndexError:
            return self._class(**(self._wait_kwargs if waiting else self._quick_kwargs))

    async def _put(self, conn: Connection, waiting: bool) -> None:
        idle = self._waiting if waiting else self._quick
        if len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            await conn.disconnect(nowait=True)

    async def roundtrip(
        self,
        args: Args,
        timeout: float | None = None,
        asking: bool = False,
        waiting: bool = False,
        fresh: bool = False,
    ) -> Any:
        """As the sync ``Node.roundtrip`` (cancel the task to cancel)."""
        conn = self._get(waiting)
        read_timeout = (math.inf if timeout is None else timeout) if waiting else None
        try:
            if fresh and conn.is_connected:
                try:
                    stale = await conn.can_read()
                except (redis.exceptions.RedisError, OSError):
                    stale = True
                if stale:
                    await conn.disconnect(nowait=True)
            packed = pack(args, *self._encoding)
            if asking:
                await conn.send_packed_command(pack(("ASKING",)) + packed)
                await _read(conn, read_timeout)
            else:
                await conn.send_packed_command(packed)
            return await _read(conn, read_timeout)
        except (ServerError, redis.exceptions.AskError):
            raise  # a complete error reply: the connection is fine
        except BaseException:
            await asyncio.shield(conn.disconnect(nowait=True))
            raise
        finally:
            await self._put(conn, waiting)

    async def batch(self, commands: Sequence[Args], timeout: float) -> list[Any]:
        """As the sync ``Node.batch``."""
        results: list[Any] = []
        conn = self._get(False)
        try:
            end = time.monotonic() + timeout
            for start in range(0, len(commands), BATCH_CHUNK):
                chunk = commands[start : start + BATCH_CHUNK]
                try:
                    await conn.send_packed_command(
                        b"".join(pack(c, *self._encoding) for c in chunk)
                    )
                    first = True
                    for _ in chunk:
                        wait = max(end - time.monotonic(), 0.0) if first else None
                        first = False
                        try:
                            results.append(await _read(conn, wait))
                        except (ServerError, redis.exceptions.AskError) as e:
                            results.append(e)
                except (redis.exceptions.RedisError, OSError) as e:
                    await conn.disconnect(nowait=True)
                    results.extend([e] * (len(commands) - len(results)))
                    return results
            return results
        except BaseException:
            await asyncio.shield(conn.disconnect(nowait=True))
            raise
        finally:
            await self._put(conn, False)


class ATransport:
    """The nodes of one asyncio client: a single server, or a cluster's
    primaries."""

    def __init__(
        self,
        conn: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        response_timeout: float,
    ) -> None:
        self._response_timeout = response_timeout
        self._cluster: redis.asyncio.cluster.RedisCluster | None = None
        self._single: ANode | None = None
        self._nodes: dict[str, ANode] = {}
        if isinstance(conn, redis.asyncio.cluster.RedisCluster):
            self._cluster = conn
        elif isinstance(conn, redis.asyncio.Redis):
            pool = conn.connection_pool
            self._single = ANode(
                "server", pool.connection_class, dict(pool.connection_kwargs), response_timeout
            )
        else:
            raise TypeError(
                "fencelock.asyncio.Client needs a redis.asyncio.Redis or a "
                "redis.asyncio.cluster.RedisCluster"
            )

    async def node_for(self, key: Key) -> ANode:
        if self._single is not None:
            return self._single
        cluster = self._cluster
        assert cluster is not None
        if not cluster.nodes_manager.slots_cache:
            await cluster.initialize()
        return self._wrap(cluster.get_node_from_key(key))  # type: ignore[arg-type]  # bytes work too

    def _wrap(self, node: redis.asyncio.cluster.ClusterNode | None) -> ANode:
        if node is None:
            raise redis.exceptions.ConnectionError("no cluster node for the key")
        found = self._nodes.get(node.name)
        if found is None:
            found = self._nodes[node.name] = ANode(
                node.name,
                node.connection_class,
                dict(node.connection_kwargs),
                self._response_timeout,
            )
        return found

    async def refresh(self) -> None:
        if self._cluster is not None:
            await self._cluster.nodes_manager.initialize()

    async def call(
        self,
        key: Key,
        args: Args,
        *,
        waiting: bool = False,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> Any:
        node = await self.node_for(key)
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                return await node.roundtrip(args, timeout, asking, waiting, fresh)
            except redis.exceptions.MovedError:
                await self.refresh()
                node, asking = await self.node_for(key), False
            except redis.exceptions.AskError as e:
                assert self._cluster is not None
                target = self._cluster.get_node(host=e.host, port=e.port)
                if target is None:
                    await self.refresh()
                    target = self._cluster.get_node(host=e.host, port=e.port)
                node, asking = self._wrap(target), True
        raise ServerError("TRYAGAIN", "too many cluster redirections")

    async def batch(self, commands: Sequence[tuple[Key, Args]], timeout: float) -> list[Any]:
        by_node: dict[str, tuple[ANode, list[int]]] = {}
        for i, (key, _) in enumerate(commands):
            node = await self.node_for(key)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        results: list[Any] = [None] * len(commands)
        end = time.monotonic() + timeout
        moved = False
        for node, indexes in by_node.values():
            replies = await node.batch(
                [commands[i][1] for i in indexes], max(end - time.monotonic(), 0.001)
            )
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = reply
                moved = moved or isinstance(reply, redis.exceptions.AskError)
        if moved:
            await self.refresh()
        return results
