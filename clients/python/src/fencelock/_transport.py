"""How the sync client reaches the server: one command at a time over a
connection of the client's own to the key's node (made with the settings of
the redis-py client it was given), with the client's own reply timeout,
and never redis-py's blind retry (the client retries acquires and releases
itself, with request ids).

Each node keeps two sets of idle connections. Quick commands (everything
that does not wait on the server) use connections whose socket timeout is
the client's ``response_timeout``. A command that may block on the server
(``LOCK.ACQUIRE ... WAIT``) takes a connection without socket timeout of its
own while it waits, so the commands of every other lock — the watchdog's
renewals above all — are never held up behind it. A connection goes back to
its set when a reply came; one whose reply did not come in time, or whose
wait was cancelled, is closed first (closing a waiting connection takes it
out of the server's queue).

Redis Cluster: the key's node comes from redis-py's slot table; ``MOVED``
refreshes the table and sends again, ``ASK`` sends ``ASKING`` and the
command to the node named (neither was applied where it was refused).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.connection import ConnectionPool

from ._protocol import Args, Key, pack, server_error
from .errors import ServerError

#: How often a waiting command looks at its cancel event.
CANCEL_POLL = 0.05

#: At most this many renewals go out in one piece of a pipeline, so that a
#: stopped server cannot fill the socket's send buffer.
BATCH_CHUNK = 500

MAX_REDIRECTS = 5

#: Idle connections kept per node and kind; more are closed.
MAX_IDLE = 64


class Cancelled(Exception):
    """A waiting command was cancelled through its cancel event; its
    connection was closed."""


Connection = Any  # redis.connection.AbstractConnection, loosely typed by redis-py


def _wait_readable(conn: Connection, timeout: float | None, cancel: threading.Event | None) -> None:
    """Returns when a reply can be read; raises ``TimeoutError`` (the
    connection closed) when ``timeout`` passes first, ``Cancelled`` (closed)
    when ``cancel`` is set first."""
    if timeout is None and cancel is None:
        return  # read_response blocks under the connection's own timeout
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        step = CANCEL_POLL if cancel is not None else None
        if end is not None:
            left = max(end - time.monotonic(), 0.0)
            step = left if step is None else min(step, left)
        if conn.can_read(timeout=step):
            return
        if cancel is not None and cancel.is_set():
            conn.disconnect()
            raise Cancelled
        if end is not None and time.monotonic() >= end:
            conn.disconnect()
            raise redis.exceptions.TimeoutError("no reply in time")


def _read(conn: Connection) -> Any:
    """One reply; an error reply as ``ServerError`` (MOVED/ASK as they are,
    for the redirection)."""
    try:
        return conn.read_response()
    except redis.exceptions.AskError:
        raise
    except redis.exceptions.RedisError as e:
        converted = server_error(e)
        if converted is None:
            raise
        raise converted from e


class Node:
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

    def __init__(self, pool: ConnectionPool, name: str, response_timeout: float) -> None:
        self.name = name
        self._class = pool.connection_class
        settings = dict(pool.connection_kwargs)
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

    def _put(self, conn: Connection, waiting: bool) -> None:
        idle = self._waiting if waiting else self._quick
        if len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.disconnect()

    def roundtrip(
        self,
        args: Args,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        asking: bool = False,
        waiting: bool = False,
        fresh: bool = False,
    ) -> Any:
        """Sends ``args`` and returns the reply. ``waiting``: it may block on
        the server, for at most ``timeout`` (None: no limit), and ends with
        ``Cancelled`` when ``cancel`` is set. ``fresh``: the command is not
        retried, so a connection the server closed while idle is opened anew
        first."""
        conn = self._get(waiting)
        try:
            if fresh:
                _drop_if_stale(conn)
            packed = pack(args, *self._encoding)
            if asking:
                conn.send_packed_command([pack(("ASKING",)) + packed])
                if waiting:
                    _wait_readable(conn, timeout, cancel)
                _read(conn)
            else:
                conn.send_packed_command([packed])
            if waiting:
                _wait_readable(conn, timeout, cancel)
            return _read(conn)
        except (ServerError, redis.exceptions.AskError):
            raise  # a complete error reply: the connection is fine
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._put(conn, waiting)

    def batch(self, commands: Sequence[Args], timeout: float) -> list[Any]:
        """Pipelines ``commands``; each result is the reply or the exception
        (a ``ServerError``, or a connection error / timeout for it and every
        one after it). Waits at most ``timeout`` for each piece's first reply
        (and the socket timeout for each read after it)."""
        results: list[Any] = []
        conn = self._get(False)
        try:
            end = time.monotonic() + timeout
            for start in range(0, len(commands), BATCH_CHUNK):
                chunk = commands[start : start + BATCH_CHUNK]
                try:
                    conn.send_packed_command([b"".join(pack(c, *self._encoding) for c in chunk)])
                    _wait_readable(conn, max(end - time.monotonic(), 0.0), None)
                    for _ in chunk:
                        try:
                            results.append(_read(conn))
                        except (ServerError, redis.exceptions.AskError) as e:
                            results.append(e)
                except (redis.exceptions.RedisError, OSError) as e:
                    conn.disconnect()
                    results.extend([e] * (len(commands) - len(results)))
                    return results
            return results
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._put(conn, False)


def _drop_if_stale(conn: Connection) -> None:
    """Closes an idle connection the server has closed (or that holds
    unread data), so that the command goes over a new one."""
    if getattr(conn, "_sock", None) is None:
        return
    try:
        stale = conn.can_read(timeout=0)
    except (redis.exceptions.RedisError, OSError):
        stale = True
    if stale:
        conn.disconnect()


class Transport:
    """The nodes of one client: a single server, or a cluster's primaries."""

    def __init__(
        self, conn: redis.Redis | redis.cluster.RedisCluster, response_timeout: float
    ) -> None:
        self._response_timeout = response_timeout
        self._cluster: redis.cluster.RedisCluster | None = None
        self._nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        if isinstance(conn, redis.cluster.RedisCluster):
            self._cluster = conn
            self._single: Node | None = None
        elif isinstance(conn, redis.Redis):
            self._single = Node(conn.connection_pool, "server", response_timeout)
        else:
            raise TypeError("Client needs a redis.Redis or a redis.cluster.RedisCluster")

    @property
    def is_cluster(self) -> bool:
        return self._cluster is not None

    def _cluster_node(self, node: redis.cluster.ClusterNode) -> Node:
        with self._lock:
            found = self._nodes.get(node.name)
            if found is None:
                assert self._cluster is not None
                pool = self._cluster.get_redis_connection(node).connection_pool
                found = self._nodes[node.name] = Node(pool, node.name, self._response_timeout)
            return found

    def node_for(self, key: Key) -> Node:
        if self._single is not None:
            return self._single
        assert self._cluster is not None
        return self._cluster_node(self._cluster.get_node_from_key(key))

    def _node_at(self, host: str, port: int) -> Node:
        assert self._cluster is not None
        node = self._cluster.get_node(host=host, port=port)
        if node is None:
            self.refresh()
            node = self._cluster.get_node(host=host, port=port)
        if node is None:
            raise redis.exceptions.ConnectionError(f"no cluster node {host}:{port}")
        return self._cluster_node(node)

    def refresh(self) -> None:
        """Reads the cluster's slot table again (after ``MOVED``)."""
        if self._cluster is not None:
            self._cluster.nodes_manager.initialize()

    def call(
        self,
        key: Key,
        args: Args,
        *,
        waiting: bool = False,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        fresh: bool = False,
    ) -> Any:
        """Sends one command for ``key`` and returns its reply (see
        :meth:`Node.roundtrip`), following cluster redirections."""
        node = self.node_for(key)
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                return node.roundtrip(args, timeout, cancel, asking, waiting, fresh)
            except redis.exceptions.MovedError:
                self.refresh()
                node, asking = self.node_for(key), False
            except redis.exceptions.AskError as e:
                node, asking = self._node_at(e.host, e.port), True
        raise ServerError("TRYAGAIN", "too many cluster redirections")

    def batch(self, commands: Sequence[tuple[Key, Args]], timeout: float) -> list[Any]:
        """Pipelines the commands to their nodes (one node after the other);
        results in the order of ``commands``. ``MOVED``/``ASK`` answers come
        back as they are (the caller tries again later) after the slot
        table was read again."""
        by_node: dict[str, tuple[Node, list[int]]] = {}
        for i, (key, _) in enumerate(commands):
            node = self.node_for(key)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        results: list[Any] = [None] * len(commands)
        end = time.monotonic() + timeout
        moved = False
        for node, indexes in by_node.values():
            replies = node.batch(
                [commands[i][1] for i in indexes], max(end - time.monotonic(), 0.001)
            )
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = reply
                moved = moved or isinstance(reply, redis.exceptions.AskError)
        if moved:
            self.refresh()
        return results
