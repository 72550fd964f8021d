/**
 * Read/write locks and semaphores: readers share and a writer waits for all
 * of them, a queued writer keeps later readers out, the downgrade, the
 * upgrade refusal, a read released under the write guard, permits per owner
 * and per guard, FIFO service of permit waiters, eviction of one owner, the
 * watchdog keeping shared and permit leases, the wrong kind.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { Client, type Guard, UpgradeError, WrongTypeError } from "../src/index.js";
import { PATIENCE, Server, sleep, waitFor } from "./servers.js";

let server: Server;
const clients: Client[] = [];

beforeEach(async () => {
  server = await Server.start();
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server.kill();
});

function client(): Client {
  const c = new Client(server.redis());
  clients.push(c);
  return c;
}

async function waiters(): Promise<number> {
  return (await server.lockInfo()).lock_waiters ?? -1;
}

test("readers share and a writer waits for all of them", async () => {
  const c = client();
  const r1 = c.rwLock("doc");
  const r2 = c.rwLock("doc");
  const a = await r1.read().acquire({ ttl: 30_000 });
  const b = await r2.read().acquire({ ttl: 30_000 });
  assert.ok(a && b);
  assert.notEqual(a.token, b.token);
  const info = await r1.info();
  assert.equal(info?.mode, "shared");
  assert.deepEqual(
    info.holders.map((h) => h.owner),
    [r1.owner, r2.owner],
  );
  assert.equal(await c.rwLock("doc").write().acquire({ ttl: 30_000 }), null);
  const got: { guard?: Guard | null } = {};
  const writer = c
    .rwLock("doc")
    .write()
    .acquire({ ttl: 30_000, wait: PATIENCE })
    .then((g) => {
      got.guard = g;
    });
  await waitFor("the writer queued", async () => (await waiters()) === 1);
  // A queued writer is not overtaken by later readers.
  assert.equal(await c.rwLock("doc").read().acquire({ ttl: 30_000 }), null);
  assert.equal(await a.release(), true);
  await sleep(50);
  assert.equal(got.guard, undefined);
  assert.equal(await b.release(), true);
  await writer;
  const w = got.guard as Guard | null | undefined;
  assert.ok(w);
  assert.equal((await r1.info())?.mode, "exclusive");
  assert.equal(await w.release(), true);
});

test("the downgrade keeps the token and lets readers in", async () => {
  const c = client();
  const config = c.rwLock("config");
  const write = await config.write().acquire({ ttl: 30_000 });
  assert.ok(write);
  const read = await config.read().acquire({ ttl: 30_000 });
  assert.equal(read?.token, write.token);
  assert.equal(await write.release(), true);
  const info = await config.info();
  assert.equal(info?.mode, "shared");
  assert.equal(await config.holdCount(), 1);
  const other = await c.rwLock("config").read().acquire({ ttl: 30_000 });
  assert.ok(read && other);
  assert.equal(await read.release(), true);
  assert.equal(await other.release(), true);
  assert.equal(await config.isLocked(), false);
});

test("an upgrade is refused and the read holds stay", async () => {
  const config = client().rwLock("config");
  const read = await config.read().acquire({ ttl: 30_000 });
  assert.ok(read);
  await assert.rejects(config.write().acquire({ ttl: 30_000 }), (e: unknown) => {
    assert.ok(e instanceof UpgradeError);
    assert.match(e.message, /upgrading to exclusive would deadlock/);
    return true;
  });
  assert.equal(read.signal.aborted, false);
  assert.equal(await config.holdCount(), 1);
  assert.equal(await read.release(), true);
});

test("a read released under the write guard goes with the write guard", async () => {
  const config = client().rwLock("config");
  const write = await config.write().acquire({ ttl: 30_000 });
  const read = await config.read().acquire({ ttl: 30_000 });
  assert.ok(write && read);
  assert.equal(await read.release(), true);
  // Releasing it now would have ended the write lock.
  const info = await config.info();
  assert.equal(info?.mode, "exclusive");
  assert.equal(info.holds, 2);
  assert.equal(await write.release(), true);
  assert.equal(await config.isLocked(), false);
});

test("permits are counted per owner and per guard", async () => {
  const c = client();
  const mine = c.semaphore("pool", 4);
  const theirs = c.semaphore("pool", 4);
  const three = await mine.acquire({ ttl: 30_000, count: 3 });
  assert.ok(three);
  assert.equal(three.permits, 3);
  assert.equal(await theirs.acquire({ ttl: 30_000, count: 2 }), null);
  const one = await theirs.acquire({ ttl: 30_000 });
  assert.ok(one);
  const info = await mine.info();
  assert.ok(info);
  assert.deepEqual(
    [info.limit, info.available, await mine.held(), await theirs.held()],
    [4, 0, 3, 1],
  );
  // A second guard of the same handle joins its lease (same token).
  assert.equal(await three.release(), true);
  const two = await mine.acquire({ ttl: 30_000, count: 2 });
  const more = await mine.acquire({ ttl: 30_000, count: 1 });
  assert.ok(two && more);
  assert.equal(two.token, more.token);
  assert.equal(await mine.held(), 3);
  assert.equal(await two.release(), true);
  assert.equal(await mine.held(), 1);
  assert.equal(more.signal.aborted, false);
  assert.equal(await more.release(), true);
  assert.equal(await one.release(), true);
  assert.equal(await mine.available(), 4);
});

test("permit waiters are served in order when permits return", async () => {
  const c = client();
  const holder = await c.semaphore("pool", 3).acquire({ ttl: 30_000, count: 3 });
  assert.ok(holder);
  const order: string[] = [];
  const guards = new Map<string, Guard>();
  const waiter = async (name: string, count: number) => {
    const guard = await c.semaphore("pool", 3).acquire({ ttl: 30_000, count, wait: PATIENCE });
    assert.ok(guard);
    guards.set(name, guard);
    order.push(name);
  };
  const big = waiter("big", 3);
  await waitFor("big queued", async () => (await waiters()) === 1);
  const small = waiter("small", 1);
  await waitFor("small queued", async () => (await waiters()) === 2);
  assert.equal(await holder.release(), true);
  await big;
  assert.deepEqual(order, ["big"], "the waiter needing 3 is not overtaken");
  assert.equal(await waiters(), 1);
  assert.equal(await guards.get("big")?.release(), true);
  await small;
  assert.deepEqual(order, ["big", "small"]);
  assert.equal(await guards.get("small")?.release(), true);
});

test("evicting one owner leaves the others", async () => {
  const c = client();
  const a = c.rwLock("doc");
  const b = c.rwLock("doc");
  const ga = await a.read().acquire({ ttl: 900 });
  const gb = await b.read().acquire({ ttl: 900 });
  assert.ok(ga && gb);
  assert.equal(await a.forceReleaseOwner(b.owner), true);
  await waitFor("b lost", () => gb.signal.aborted);
  assert.equal(gb.lostReason, "not-held");
  assert.equal(ga.signal.aborted, false);
  const info = await a.info();
  assert.equal(info?.mode, "shared");
  assert.deepEqual(
    info.holders.map((h) => h.owner),
    [a.owner],
  );
  assert.equal(await ga.release(), true);
});

test("the watchdog keeps shared and permit leases", async () => {
  const c = client();
  const read = await c.rwLock("doc").read().acquire({ ttl: 1200 });
  const permits = await c.semaphore("pool", 2).acquire({ ttl: 1200, count: 2 });
  assert.ok(read && permits);
  await sleep(2400); // two ttls
  assert.equal(read.signal.aborted, false);
  assert.equal(permits.signal.aborted, false);
  assert.equal(await c.semaphore("pool", 2).available(), 0);
  assert.equal(await read.release(), true);
  assert.equal(await permits.release(), true);
  assert.equal((await server.lockInfo()).lock_expired, 0);
});

test("the wrong kind is the server's WRONGTYPE", async () => {
  const c = client();
  const read = await c.rwLock("doc").read().acquire({ ttl: 30_000 });
  assert.ok(read);
  await assert.rejects(c.semaphore("doc", 2).acquire(), (e: unknown) => {
    assert.ok(e instanceof WrongTypeError);
    assert.match(e.message, /not a semaphore: acquire it without LIMIT/);
    return true;
  });
  assert.equal(await read.release(), true);
});
