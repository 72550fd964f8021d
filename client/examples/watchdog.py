"""The fencelock watchdog pattern with redis-py.

A thread renews the lease every ttl/3 and sets `lost` as soon as the lease
is known lost: a renewal answered 0, or no renewal confirmed before the local
deadline (send time of the last confirmed renewal + ttl - margin). The work
checks `lost` and stops.

    python3 watchdog.py PORT KEY TTL_MS WORK_SECONDS

Prints "acquired token=N", then "done; released=True" (exit 0), or
"lost: REASON" (exit 1), or "busy" when another owner holds it (exit 2).
"""

import sys
import threading
import time
import uuid

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


class Lease:
    def __init__(self, port, key, ttl_ms):
        self.key, self.ttl_ms, self.ttl = key, ttl_ms, ttl_ms / 1000
        self.margin = self.ttl / 5
        self.owner = f"{uuid.uuid4()}:1"
        self.r = redis.Redis(host="127.0.0.1", port=port)
        # The watchdog's own connection: an unanswered renewal fails after
        # margin/2 and is not retried by redis-py (the watchdog retries), so
        # the loss is reported before the server can expire the lease.
        t = self.margin / 2
        self.w = redis.Redis(host="127.0.0.1", port=port, socket_timeout=t,
                             socket_connect_timeout=t, retry=Retry(NoBackoff(), 0))
        self.lost, self.reason, self._stop = threading.Event(), None, threading.Event()

    def acquire(self):
        sent = time.monotonic()
        token = self.r.execute_command("LOCK.ACQUIRE", self.key, self.owner, self.ttl_ms)
        if token is not None:
            self.deadline = sent + self.ttl - self.margin
            self._thread = threading.Thread(target=self._watchdog, daemon=True)
            self._thread.start()
        return token

    def _watchdog(self):
        delay = self.ttl / 3
        while not self._stop.wait(delay):
            sent = time.monotonic()  # the deadline counts from the send, not the reply
            try:
                held = self.w.execute_command("LOCK.RENEW", self.key, self.owner, self.ttl_ms)
            except redis.RedisError:
                held = None
            now = time.monotonic()
            if held == 1:
                self.deadline = sent + self.ttl - self.margin
                delay = max(0.0, sent + self.ttl / 3 - now)
            elif held == 0:
                return self._lose("the server says the lock is not held")
            elif now >= self.deadline:
                return self._lose("no renewal confirmed before the local deadline")
            else:
                delay = min(self.ttl / 10, self.deadline - now)  # retry soon

    def _lose(self, reason):
        if not self._stop.is_set():
            self.reason = reason
            self.lost.set()

    def release(self):
        self._stop.set()  # stop renewing first
        self._thread.join()
        if self.lost.is_set():
            return False  # never release after a loss: it may be someone else's now
        return self.r.execute_command("LOCK.RELEASE", self.key, self.owner) is not None


def main():
    port, key, ttl_ms, work_s = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    lease = Lease(port, key, ttl_ms)
    token = lease.acquire()
    if token is None:
        print("busy", flush=True)
        return 2
    print(f"acquired token={token}", flush=True)
    end = time.monotonic() + work_s
    while time.monotonic() < end:  # the work, in small steps, passing `token` along
        if lease.lost.wait(0.05):
            print(f"lost: {lease.reason}", flush=True)
            return 1
    print(f"done; released={lease.release()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
