/**
 * Exactly-once retries: a proxy between the client and the server cuts the
 * connection right after the server applied an acquire or a release (the
 * reply is lost). The client sends it again with the same request id on a
 * new connection, and the server answers it from the holder's record without
 * applying it twice: no second re-entry, no second release, no permits taken
 * twice.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { Client, type Guard } from "../src/index.js";
import { CutProxy, nodeRedis, Server, waitFor } from "./servers.js";

let server: Server;
let proxy: CutProxy;
const clients: Client[] = [];

beforeEach(async () => {
  server = await Server.start();
  proxy = await CutProxy.start(server.port);
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  proxy.close();
  await server.kill();
});

function through(port: number): Client {
  const c = new Client(nodeRedis(port));
  clients.push(c);
  return c;
}

async function holds(key: string): Promise<number> {
  // RESP2 (a flat array) or RESP3 (a map), whatever the server's client speaks.
  const reply = (await server.admin.sendCommand(["LOCK.INFO", key])) as
    | string[]
    | Record<string, string>
    | null;
  if (reply === null) return 0;
  if (Array.isArray(reply)) return Number(reply[reply.indexOf("holds") + 1]);
  return Number(reply.holds);
}

async function answered(): Promise<number | undefined> {
  return (await server.lockInfo()).lock_retries_answered;
}

test("an acquire whose reply was lost is answered, not applied again", async () => {
  const lock = through(proxy.port).lock("job");
  const first = await lock.acquire({ ttl: 30_000 });
  assert.ok(first);
  proxy.cutReply("LOCK.ACQUIRE");
  const second = await lock.acquire({ ttl: 30_000 }); // a re-entry, its reply lost once
  assert.equal(second?.token, first.token);
  assert.equal(proxy.cuts, 1);
  assert.equal(proxy.seen.get("LOCK.ACQUIRE"), 3);
  assert.equal(await holds("job"), 2, "the retry did not re-enter again");
  assert.equal(await answered(), 1);
  assert.ok(second);
  assert.equal(await second.release(), true);
  assert.equal(await first.release(), true);
  assert.equal(await holds("job"), 0);
});

test("a fresh acquire whose reply was lost gets its grant", async () => {
  const lock = through(proxy.port).lock("job");
  proxy.cutReply("LOCK.ACQUIRE");
  const guard = await lock.acquire({ ttl: 30_000 });
  assert.ok(guard);
  assert.equal(await holds("job"), 1);
  assert.equal(await answered(), 1);
  assert.equal(await guard.release(), true);
  assert.equal(await lock.isLocked(), false);
});

test("a release whose reply was lost is not released twice", async () => {
  const lock = through(proxy.port).lock("job");
  const outer = await lock.acquire({ ttl: 30_000 });
  const inner = await lock.acquire({ ttl: 30_000 });
  assert.ok(outer && inner);
  proxy.cutReply("LOCK.RELEASE");
  assert.equal(await inner.release(), true);
  assert.equal(proxy.cuts, 1);
  assert.equal(await holds("job"), 1, "the retry did not release again");
  assert.equal(await answered(), 1);
  assert.equal(outer.signal.aborted, false);
  // The last release, its reply lost: the retry finds nothing (the first
  // attempt released it) and the guard knows it was released.
  proxy.cutReply("LOCK.RELEASE");
  assert.equal(await outer.release(), true);
  assert.equal(proxy.cuts, 2);
  assert.equal(await lock.isLocked(), false);
});

test("semaphore permits are not taken twice", async () => {
  const sem = through(proxy.port).semaphore("pool", 4);
  proxy.cutReply("LOCK.ACQUIRE");
  const guard = await sem.acquire({ ttl: 30_000, count: 3 });
  assert.ok(guard);
  assert.equal(await sem.held(), 3);
  assert.equal(await sem.available(), 1);
  assert.equal(await guard.release(), true);
  assert.equal(await sem.available(), 4);
});

test("a waiting acquire granted by hand-off whose reply was lost", async () => {
  const holder = await through(server.port).lock("job").acquire({ ttl: 30_000 });
  assert.ok(holder);
  const c = through(proxy.port);
  let guard: Guard | null = null;
  const waiting = c
    .lock("job")
    .acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY })
    .then((g) => {
      guard = g;
    });
  await waitFor("the waiter queued", async () => (await server.lockInfo()).lock_waiters === 1);
  proxy.cutPendingReply("LOCK.ACQUIRE"); // the hand-off's reply is lost
  assert.equal(await holder.release(), true);
  await waiting;
  const got = guard as Guard | null;
  assert.ok(got);
  assert.equal(proxy.cuts, 1);
  assert.equal(await holds("job"), 1);
  assert.equal(await answered(), 1);
  assert.equal((await c.lock("job").info())?.token, got.token);
  assert.equal(await got.release(), true);
});
