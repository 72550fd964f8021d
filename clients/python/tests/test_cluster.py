"""A 3-master Redis Cluster through ``redis.cluster.RedisCluster`` and
``redis.asyncio.cluster.RedisCluster``: locks on every node held past their
ttl by one watchdog, exclusion and hand-off, and a slot that moved after the
client read the slot table (``MOVED`` is followed)."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import redis.asyncio.cluster
from redis.crc import key_slot
from servers import PATIENCE, Cluster, wait_for

import fencelock
import fencelock.asyncio


def test_locks_on_every_node_are_kept_and_exclusive(cluster: Cluster) -> None:
    keys = [k for ks in cluster.keys_per_node("held:", 2).values() for k in ks]
    c = fencelock.Client(cluster.redis())
    guards = [c.lock(k).acquire(ttl=0.6) for k in keys]
    assert all(g is not None for g in guards)
    other = fencelock.Client(cluster.redis())
    assert all(other.lock(k).acquire() is None for k in keys)
    time.sleep(1.8)  # three ttls
    for key, guard in zip(keys, guards, strict=True):
        assert guard is not None and not guard.lost.is_set(), key
        info = cluster.node_of(key).admin().execute_command("LOCK.INFO", key)
        assert info is not None, f"{key} expired on its node"
    assert c.renewals >= 2 * len(keys)
    assert all(g is not None and g.release() for g in guards)
    assert all(not other.lock(k).is_locked() for k in keys)


def test_a_waiter_on_a_cluster_node_is_handed_the_lock(cluster: Cluster) -> None:
    key = cluster.keys_per_node("wait:", 1)[cluster.nodes[2].port][0]
    c = fencelock.Client(cluster.redis())
    holder = c.lock(key).acquire(ttl=30)
    assert holder is not None
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(c.lock(key).acquire(ttl=30, wait=math.inf)))
    t.start()
    wait_for("queued", lambda: int(cluster.nodes[2].admin().info("lock")["lock_waiters"]) == 1)
    assert holder.release()
    t.join(PATIENCE)
    guard = got[0]
    assert isinstance(guard, fencelock.Guard) and guard.token > holder.token
    assert guard.release()


async def test_asyncio_cluster_client(cluster: Cluster) -> None:
    keys = [ks[0] for ks in cluster.keys_per_node("async:", 1).values()]
    rc = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    c = fencelock.asyncio.Client(rc)
    guards = [await c.lock(k).acquire(ttl=0.6) for k in keys]
    assert all(g is not None for g in guards)
    assert await fencelock.asyncio.Client(rc).lock(keys[0]).acquire() is None
    await asyncio.sleep(1.5)
    assert all(g is not None and not g.lost.is_set() for g in guards)
    assert c.renewals >= 2 * len(keys)
    waiter = asyncio.create_task(
        fencelock.asyncio.Client(rc).lock(keys[1]).acquire(ttl=30, wait=PATIENCE)
    )
    await asyncio.sleep(0.1)
    for g in guards:
        assert g is not None and await g.release()
    handed = await asyncio.wait_for(waiter, PATIENCE)
    assert handed is not None and await handed.release()
    await rc.aclose()


def test_a_moved_slot_is_followed(cluster: Cluster) -> None:
    rc = cluster.redis()
    c = fencelock.Client(rc)
    source, target = cluster.nodes[0], cluster.nodes[1]
    key = cluster.keys_per_node("moved:", 1)[source.port][0]
    assert c.lock(key).info() is None  # the client has read the slot table
    slot = key_slot(key.encode())
    target_id = target.admin().execute_command("CLUSTER", "MYID").decode()
    for node in (target, source, cluster.nodes[2]):
        node.admin().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    moved_before = source.admin().info("errorstats").get("errorstat_MOVED", {}).get("count", 0)
    guard = c.lock(key).acquire(ttl=30)
    assert guard is not None
    # The client went to the old node first and followed its MOVED.
    assert source.admin().info("errorstats")["errorstat_MOVED"]["count"] > moved_before
    assert target.admin().execute_command("LOCK.INFO", key) is not None
    assert source.admin().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert guard.release()
    assert not c.lock(key).is_locked()
