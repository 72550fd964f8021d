"""A master with a replica: what the client does on the master reaches the
replica (grant, renewals, release), a client on the replica reads the lock
there and gets the server's ``READONLY`` error when it tries to take it, and
after a promotion the lock is still held with its token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import PATIENCE, Server, wait_for

from fencelock import Client, LockInfo, ServerError


@pytest.fixture
def pair() -> Iterator[tuple[Server, Server]]:
    master = Server("--repl-diskless-sync-delay", "0")
    replica = Server("--replicaof", "127.0.0.1", str(master.port))
    try:
        wait_for(
            "the replica in sync",
            lambda: (
                master.admin().info("replication")["connected_slaves"] == 1
                and replica.admin().info("replication")["master_link_status"] == "up"
            ),
        )
        yield master, replica
    finally:
        replica.kill()
        master.kill()


def synced(master: Server) -> None:
    assert master.admin().execute_command("WAIT", 1, int(PATIENCE * 1000)) == 1


def test_grants_renewals_and_releases_reach_the_replica(pair: tuple[Server, Server]) -> None:
    master, replica = pair
    c = Client(master.redis())
    lock = c.lock("job")
    guard = lock.acquire(ttl=0.9)
    assert guard is not None
    synced(master)
    on_replica = Client(replica.redis()).lock("job").info()
    assert isinstance(on_replica, LockInfo)
    assert (on_replica.owner, on_replica.token) == (lock.owner, guard.token)
    # Past several ttls the replica still shows it: renewals are replicated.
    wait_for("three renewals", lambda: c.renewals >= 3)
    synced(master)
    assert Client(replica.redis()).lock("job").info() is not None
    assert guard.release()
    synced(master)
    assert Client(replica.redis()).lock("job").info() is None


def test_the_replica_refuses_with_its_own_message(pair: tuple[Server, Server]) -> None:
    _, replica = pair
    with pytest.raises(ServerError) as e:
        Client(replica.redis()).lock("job").acquire()
    assert e.value.code == "READONLY"
    assert str(e.value) == "READONLY You can't write against a read only replica."


def test_a_promoted_replica_keeps_the_lock_and_its_token(pair: tuple[Server, Server]) -> None:
    master, replica = pair
    guard = Client(master.redis()).lock("job").acquire(ttl=30)
    assert guard is not None
    synced(master)
    master.kill()
    replica.admin().execute_command("REPLICAOF", "NO", "ONE")
    promoted = Client(replica.redis())
    assert promoted.lock("job").acquire() is None
    info = promoted.lock("job").info()
    assert info is not None and info.token == guard.token
    assert promoted.lock("job").force_release()
    later = promoted.lock("job").acquire(ttl=30)
    assert later is not None and later.token > guard.token
    assert later.release()
