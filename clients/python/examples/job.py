"""Take the lock "job" on a server with the module (default
127.0.0.1:6379), do some work in steps while the watchdog renews the lease,
stop if the lease is lost, release at the end of the ``with`` block.

    python3 clients/python/examples/job.py [port] [seconds]
"""

import sys
import time

import redis

from fencelock import Client

port = int(sys.argv[1]) if len(sys.argv) > 1 else 6379
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0

client = Client(redis.Redis(host="127.0.0.1", port=port))
guard = client.lock("job").acquire(ttl=2.0, wait=10)  # a 2 s lease, renewed every 2/3 s
if guard is None:
    sys.exit("someone else held the lock for 10 s")
with guard as g:
    print(f"got the lock: fencing token {g.token}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if g.lost.wait(0.5):  # one step of work, or the loss, whichever comes first
            sys.exit(f"stopped: lock lost ({g.lost_reason})")
        print(f"working ... lease known held for {g.remaining():.2f} s more")
print("done; released")
