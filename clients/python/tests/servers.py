"""Real redis-server processes with the module for the tests: a single
server, a master with a replica, a 3-master cluster, and a TCP proxy that
cuts a connection right after the server applied a command (its reply is
swallowed). Every server runs on 127.0.0.1 on a free port in a temporary
directory and is killed at the end of its test.

Time: tests never assume their own work is fast. They poll with
``PATIENCE`` (generous: a slow, loaded machine), and allow ``EXPIRY_SLACK``
after a lease's deadline.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

REPO = Path(__file__).resolve().parents[3]
MODULE = REPO / "target" / "release" / "libfencelock.so"

#: How long a test waits for something that should happen soon.
PATIENCE = 60.0
#: How long after its deadline a lease may still be seen on a server.
EXPIRY_SLACK = 5.0

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | bool | None], timeout: float = PATIENCE) -> T:
    """Polls ``check`` until it returns something truthy; fails after
    ``timeout``."""
    end = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = check()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


_ports_lock = threading.Lock()
_used_ports: set[int] = set()


def free_port(cluster: bool = False) -> int:
    """A port free on 127.0.0.1 (and its cluster bus port + 10000)."""
    with _ports_lock:
        for _ in range(1000):
            port = random.randint(20000, 50000)
            if port in _used_ports:
                continue
            wanted = [port, port + 10000] if cluster else [port]
            try:
                for p in wanted:
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", p))
            except OSError:
                continue
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class Server:
    """One redis-server with the module loaded."""

    def __init__(self, *extra: str, cluster: bool = False) -> None:
        if not MODULE.exists():
            raise RuntimeError(f"{MODULE} is missing: run `cargo build --release -p fencelock`")
        self.dir = Path(tempfile.mkdtemp(prefix="fencelock-py-"))
        self.port = free_port(cluster)
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--loadmodule",
            str(MODULE),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            "--logfile",
            "server.log",
        ]
        if cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]
        self.proc = subprocess.Popen(
            [*args, *extra], cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.stopped = False
        admin = self.admin()
        wait_for(f"redis-server on {self.port}", lambda: self._pings(admin))

    @staticmethod
    def _pings(r: redis.Redis) -> bool:
        # Anything that goes wrong before the server answers PING means "not
        # ready yet" (redis-py can also fail outside RedisError while a
        # server is starting, e.g. on a half-made HELLO reply).
        try:
            return bool(r.ping())
        except Exception:
            return False

    def admin(self, **kwargs: Any) -> redis.Redis:
        """A plain redis-py client for the test's own checks (no retries)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, retry=no_retry(), socket_timeout=PATIENCE, **kwargs
        )

    def redis(self, **kwargs: Any) -> redis.Redis:
        """What an application would pass to ``fencelock.Client``."""
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def lock_info(self) -> dict[str, int]:
        """``INFO lock`` as numbers."""
        info = self.admin().info("lock")
        return {k: int(v) for k, v in info.items()}

    def sigstop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        if self.stopped:
            self.sigcont()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def server(*extra: str) -> Iterator[Server]:
    s = Server(*extra)
    try:
        yield s
    finally:
        s.kill()


class Cluster:
    """Three masters, no replicas, slots split evenly
    (``redis-cli --cluster create``)."""

    def __init__(self) -> None:
        self.nodes = [Server(cluster=True) for _ in range(3)]
        try:
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=PATIENCE,
            )
            for n in self.nodes:
                admin = n.admin()

                def ready(admin: redis.Redis = admin) -> bool:
                    # Every node must know every other one's slots before
                    # clients read the table.
                    ok = admin.cluster("info")["cluster_state"] == "ok"
                    return bool(ok and len(admin.cluster("slots")) == 3)

                wait_for("cluster_state:ok and all slots", ready)
        except BaseException:
            self.kill()
            raise

    def node_of(self, key: str) -> Server:
        """The master serving ``key``'s slot."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self.nodes[0].admin().cluster("slots"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == master[1])
        raise AssertionError(f"no node serves slot {slot}")

    def keys_per_node(self, prefix: str, per_node: int) -> dict[int, list[str]]:
        """``per_node`` key names for each node (by port)."""
        found: dict[int, list[str]] = {n.port: [] for n in self.nodes}
        ranges = [(s, e, m[1]) for s, e, m, *_ in self.nodes[0].admin().cluster("slots")]
        i = 0
        while any(len(v) < per_node for v in found.values()):
            key = f"{prefix}{i}"
            i += 1
            slot = key_slot(key.encode())
            port = next(p for s, e, p in ranges if s <= slot <= e)
            if len(found[port]) < per_node:
                found[port].append(key)
        return found

    def redis(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()


class Proxy:
    """A TCP proxy in front of a server that can be told to cut the
    connection right after the server received a command (the request is
    forwarded, the reply swallowed, both sides closed): the server applied
    it, the client never hears."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: list[bytes] = []
        self._armed_pending: list[bytes] = []
        self.cuts = 0
        #: Commands (by name) seen from clients, counted.
        self.seen: dict[str, int] = {}
        self._stop = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_reply(self, command: str, times: int = 1) -> None:
        """The next ``times`` requests of ``command`` are applied and their
        replies lost."""
        with self._lock:
            self._armed += [command.upper().encode()] * times

    def cut_pending_reply(self, command: str) -> None:
        """The next reply to a request of ``command`` already sent (e.g. a
        waiter's hand-off) is lost."""
        with self._lock:
            self._armed_pending.append(command.upper().encode())

    def armed(self) -> int:
        with self._lock:
            return len(self._armed)

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _note(self, data: bytes) -> None:
        for word in (b"LOCK.ACQUIRE", b"LOCK.RELEASE", b"LOCK.RENEW", b"LOCK.INFO"):
            n = data.upper().count(word)
            if n:
                self.seen[word.decode()] = self.seen.get(word.decode(), 0) + n

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        swallow = False
        last_request = b""
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [])
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    last_request = data.upper()
                    with self._lock:
                        self._note(data)
                        if self._armed and self._armed[0] in data.upper():
                            self._armed.pop(0)
                            swallow = True
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    with self._lock:
                        if self._armed_pending and self._armed_pending[0] in last_request:
                            self._armed_pending.pop(0)
                            swallow = True
                        if swallow:
                            self.cuts += 1
                            return  # the reply is lost; both sides are closed
                    client.sendall(data)
        except (OSError, ValueError):  # ValueError: closed by Proxy.close meanwhile
            return
        finally:
            for s in (client, upstream):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with suppress(OSError):
                    s.close()


def python() -> str:
    """The interpreter running the tests (the venv's)."""
    return sys.executable


def env_for_child() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
