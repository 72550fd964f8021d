/**
 * A 3-master Redis Cluster through node-redis's `createCluster`: locks on
 * every node held past their ttl by one watchdog, exclusion, a waiter on a
 * node handed the lock, and a slot that moved after the client read the slot
 * table (MOVED is followed).
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import calculateSlot from "cluster-key-slot";
import { Client } from "../src/index.js";
import { Cluster, PATIENCE, parseInfo, sleep, waitFor } from "./servers.js";

let cluster: Cluster;
const clients: Client[] = [];

before(async () => {
  cluster = await Cluster.start();
});

after(async () => {
  for (const c of clients.splice(0)) c.close();
  await cluster.kill();
});

function client(): Client {
  const c = new Client(cluster.redis());
  clients.push(c);
  return c;
}

async function lockInfoOf(port: number): Promise<Record<string, number>> {
  const node = cluster.nodes.find((n) => n.port === port);
  assert.ok(node);
  return parseInfo(String(await node.admin.sendCommand(["INFO", "lock"])));
}

test("locks on every node are kept past their ttl and exclusive", async () => {
  const keys = [...(await cluster.keysPerNode("held:", 2)).values()].flat();
  const c = client();
  const guards = await Promise.all(keys.map((k) => c.lock(k).acquire({ ttl: 1500 })));
  assert.ok(guards.every((g) => g !== null));
  const other = client();
  for (const k of keys) assert.equal(await other.lock(k).acquire(), null);
  await sleep(3000); // two ttls
  for (const [i, key] of keys.entries()) {
    assert.equal(guards[i]?.lostReason, undefined, `${key} lost`);
    const node = await cluster.nodeOf(key);
    assert.notEqual(
      await node.admin.sendCommand(["LOCK.INFO", key]),
      null,
      `${key} expired on its node`,
    );
  }
  assert.ok(c.renewals >= 2 * keys.length, `${c.renewals} renewals`);
  for (const g of guards) assert.equal(await g?.release(), true);
  for (const k of keys) assert.equal(await other.lock(k).isLocked(), false);
});

test("a waiter on a cluster node is handed the lock", async () => {
  const port = cluster.nodes[2]?.port ?? 0;
  const key = (await cluster.keysPerNode("wait:", 1)).get(port)?.[0] ?? "";
  const c = client();
  const holder = await c.lock(key).acquire({ ttl: 30_000 });
  assert.ok(holder);
  const waiting = c.lock(key).acquire({ ttl: 30_000, wait: PATIENCE });
  await waitFor("queued", async () => (await lockInfoOf(port)).lock_waiters === 1);
  assert.equal(await holder.release(), true);
  const guard = await waiting;
  assert.ok(guard && guard.token > holder.token);
  assert.equal(await guard.release(), true);
});

test("a moved slot is followed", async () => {
  const c = client();
  const [source, target, third] = cluster.nodes;
  assert.ok(source && target && third);
  const key = (await cluster.keysPerNode("moved:", 1)).get(source.port)?.[0] ?? "";
  assert.equal(await c.lock(key).info(), null); // the client has read the slot table
  const slot = String(calculateSlot(key));
  const targetId = String(await target.admin.sendCommand(["CLUSTER", "MYID"]));
  for (const node of [target, source, third]) {
    await node.admin.sendCommand(["CLUSTER", "SETSLOT", slot, "NODE", targetId]);
  }
  const moved = async () => {
    const text = String(await source.admin.sendCommand(["INFO", "errorstats"]));
    return Number(/errorstat_MOVED:count=(\d+)/.exec(text)?.[1] ?? 0);
  };
  const movedBefore = await moved();
  const guard = await c.lock(key).acquire({ ttl: 30_000 });
  assert.ok(guard);
  // The client went to the old node first and followed its MOVED.
  assert.ok((await moved()) > movedBefore);
  assert.notEqual(await target.admin.sendCommand(["LOCK.INFO", key]), null);
  assert.equal(String(await source.admin.sendCommand(["CLUSTER", "COUNTKEYSINSLOT", slot])), "0");
  assert.equal(await guard.release(), true);
  assert.equal(await c.lock(key).isLocked(), false);
});
