"""Holders as separate processes: a holder killed with SIGKILL stops
renewing, and a waiter in another process gets the lock once the lease ran
out (about a ttl after the kill — never before the last renewal's lease
ended); a holder that exits normally inside ``with`` releases at once."""

from __future__ import annotations

import math
import subprocess
import time

from servers import EXPIRY_SLACK, PATIENCE, Server, env_for_child, python, wait_for

from fencelock import Client

HOLDER = """
import sys, time, redis
from fencelock import Client
port, ttl, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
client = Client(redis.Redis(port=port))
with client.lock("job").acquire(ttl=ttl) as guard:
    print(guard.token, flush=True)
    if mode == "hang":
        time.sleep(3600)
    sys.stdin.readline()
"""


def start_holder(server: Server, ttl: float, mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [python(), "-c", HOLDER, str(server.port), str(ttl), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env_for_child(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip(), "the holder printed no token"
    return proc, int(line)


def test_a_killed_holder_is_replaced_after_about_a_ttl(server: Server) -> None:
    ttl = 2.0
    proc, token = start_holder(server, ttl, "hang")
    lock = Client(server.redis()).lock("job")
    # Let its watchdog renew at least once: the lease must outlive the ttl.
    time.sleep(ttl * 0.6)
    info = lock.info()
    assert info is not None and info.token == token
    proc.kill()
    killed = time.monotonic()
    proc.wait(PATIENCE)
    guard = lock.acquire(ttl=30, wait=math.inf)
    granted = time.monotonic()
    assert guard is not None and guard.token > token
    # The last renewal was at most renew_every (ttl/3) before the kill, so
    # its lease ends at least ttl - ttl/3 after it; and the server expires it
    # on time.
    assert granted - killed >= ttl - ttl / 3 - 0.05
    assert granted - killed <= ttl + EXPIRY_SLACK
    assert server.lock_info()["lock_expired"] == 1
    assert guard.release()


def test_a_holder_that_leaves_its_with_block_releases_at_once(server: Server) -> None:
    proc, token = start_holder(server, 30.0, "line")
    lock = Client(server.redis()).lock("job")
    assert lock.acquire() is None
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(PATIENCE)
    assert proc.returncode == 0
    guard = lock.acquire()
    assert guard is not None and guard.token > token
    assert server.lock_info()["lock_expired"] == 0
    assert guard.release()
    wait_for("released", lambda: not lock.is_locked())
