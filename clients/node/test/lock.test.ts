/**
 * The exclusive lock on a real server: exclusion, re-entry, the watchdog
 * keeping a lease past its ttl, the lease lost by force-release and under
 * SIGSTOP of the server, waiting (timeout, FIFO hand-off, the shared
 * connection never blocked), cancellation by AbortSignal, concurrent tasks,
 * errors carrying the server's message, a dropped guard released.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import {
  Client,
  ConnectionFailedError,
  InvalidOptionsError,
  LeaseLostError,
  type LostReason,
  WrongKindError,
  WrongTypeError,
} from "../src/index.js";
import { seeded } from "./seed.js";
import { EXPIRY_SLACK, freePort, nodeRedis, PATIENCE, Server, sleep, waitFor } from "./servers.js";

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

test("a second handle is excluded until the first releases", async () => {
  const c = client();
  const first = c.lock("job");
  const second = c.lock("job");
  const guard = await first.acquire({ ttl: 10_000 });
  assert.ok(guard);
  assert.equal(await second.acquire({ ttl: 10_000 }), null);
  assert.equal(await client().lock("job").acquire(), null, "another client too");
  assert.equal(await guard.release(), true);
  const again = await second.acquire({ ttl: 10_000 });
  assert.ok(again);
  assert.ok(again.token > guard.token);
  assert.equal(await again.release(), true);
  assert.equal(await second.isLocked(), false);
});

test("re-entry keeps the token and counts holds", async () => {
  const lock = client().lock("job");
  const outer = await lock.acquire({ ttl: 10_000 });
  const inner = await lock.acquire({ ttl: 10_000 });
  assert.ok(outer && inner);
  assert.equal(outer.token, inner.token);
  assert.equal(await lock.holdCount(), 2);
  assert.equal(await inner.release(), true);
  assert.equal(await lock.holdCount(), 1);
  assert.equal(outer.signal.aborted, false);
  assert.equal(await outer.release(), true);
  assert.equal(await lock.holdCount(), 0);
  assert.equal(await lock.isLocked(), false);
  assert.equal(await outer.release(), false, "a second release of one guard does nothing");
});

test("await using releases and info shows the holder", async () => {
  const lock = client().lock("job");
  let kept: { remaining(): number } | undefined;
  {
    await using g = await lock.acquire({ ttl: 10_000 });
    assert.ok(g);
    kept = g;
    const info = await lock.info();
    assert.ok(info);
    assert.deepEqual(
      [info.owner, info.holds, info.token, info.waiters],
      [lock.owner, 1, g.token, 0],
    );
    assert.ok(info.ttl > 0 && info.ttl <= 10_000);
    assert.ok(g.remaining() > 0 && g.remaining() <= 9_000);
  }
  assert.equal(await lock.info(), null);
  assert.equal(kept?.remaining(), 0);
});

test("the watchdog keeps a lease far past its ttl", async () => {
  const c = client();
  const lock = c.lock("job");
  const guard = await lock.acquire({ ttl: 1500 });
  assert.ok(guard);
  const start = performance.now();
  let heldFor = 0;
  while (heldFor < 3000) {
    // two ttls
    await sleep(100);
    heldFor = performance.now() - start;
    const info = await lock.info();
    assert.equal(info?.token, guard.token, `lost after ${heldFor.toFixed(0)} ms`);
  }
  assert.equal(guard.signal.aborted, false);
  assert.ok(c.renewals >= 2, `${c.renewals} renewals`);
  assert.equal(await guard.release(), true);
  assert.equal((await server.lockInfo()).lock_expired, 0);
});

test("without the watchdog the lease expires and the guard says so", async () => {
  const lock = client().lock("job");
  const guard = await lock.acquire({ ttl: 300, watchdog: false });
  assert.ok(guard);
  await waitFor("the guard lost", () => guard.signal.aborted);
  assert.equal(guard.lostReason, "expired");
  assert.ok(guard.signal.reason instanceof LeaseLostError);
  assert.equal(guard.signal.reason.reason, "expired");
  await waitFor(
    "the server to expire it",
    async () => !(await lock.isLocked()),
    EXPIRY_SLACK + 1000,
  );
  assert.equal(await guard.release(), false, "a lost guard sends no release");
});

test("force-release by someone else is lost at the next renewal", async () => {
  const c = client();
  const lock = c.lock("job");
  const heard: LostReason[] = [];
  const guard = await lock.acquire({ ttl: 900, onLost: (r) => heard.push(r) });
  assert.ok(guard);
  assert.equal(await client().lock("job").forceRelease(), true);
  await waitFor("the guard lost", () => guard.signal.aborted);
  assert.equal(guard.lostReason, "not-held");
  await waitFor("onLost", () => heard.length === 1);
  assert.deepEqual(heard, ["not-held"]);
  // The next owner is not disturbed by the lost guard.
  const other = await c.lock("job").acquire({ ttl: 10_000 });
  assert.ok(other);
  assert.equal(await guard.release(), false);
  const info = await lock.info();
  assert.deepEqual([info?.owner, info?.holds, info?.token], [other.owner, 1, other.token]);
  assert.equal(await other.release(), true);
});

test("force-release through its own handle is lost at once", async () => {
  const lock = client().lock("job");
  const guard = await lock.acquire({ ttl: 30_000 });
  assert.ok(guard);
  assert.equal(await lock.forceRelease(), true);
  assert.equal(guard.signal.aborted, true);
  assert.equal(guard.lostReason, "not-held");
  assert.equal(await lock.forceRelease(), false);
});

test("a stopped server means lost before the server could expire it", async () => {
  const c = client();
  const lock = c.lock("job");
  const ttl = 3000;
  const guard = await lock.acquire({ ttl, safetyMargin: 1000 });
  assert.ok(guard);
  await waitFor("a confirmed renewal", () => c.renewals >= 1);
  let lostAt = Number.NaN;
  guard.signal.addEventListener("abort", () => {
    lostAt = performance.now();
  });
  const deadline = performance.now() + guard.remaining();
  server.sigstop();
  const stopped = performance.now();
  try {
    await waitFor("the guard lost", () => guard.signal.aborted);
  } finally {
    server.sigcont();
  }
  assert.equal(guard.lostReason, "unconfirmed");
  // Never before the local deadline ...
  assert.ok(lostAt >= deadline - 10, `${lostAt - deadline} ms before the deadline`);
  // ... and before the server could let the lease go: its last confirmed
  // renewal was sent before the stop, so the server holds it at least until
  // stop + ttl (the margin covers the timer waking up late).
  assert.ok(lostAt < stopped + ttl, `lost ${(lostAt - stopped).toFixed(0)} ms after the stop`);
  assert.equal(await guard.release(), false);
});

test("a waiting acquire times out on the server", async () => {
  const c = client();
  const holder = await c.lock("job").acquire({ ttl: 30_000 });
  assert.ok(holder);
  const start = performance.now();
  assert.equal(await c.lock("job").acquire({ wait: 300 }), null);
  assert.ok(performance.now() - start >= 299);
  assert.equal((await server.lockInfo()).lock_wait_timeouts, 1);
  assert.equal(await holder.release(), true);
});

test("waiters are served in order and the shared connection is never blocked", async () => {
  const c = client();
  const holder = await c.lock("job").acquire({ ttl: 30_000 });
  assert.ok(holder);
  const order: number[] = [];
  const tasks: Promise<void>[] = [];
  for (let i = 0; i < 3; i++) {
    tasks.push(
      (async () => {
        const guard = await c.lock("job").acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY });
        assert.ok(guard);
        order.push(i);
        await guard.release();
      })(),
    );
    await waitFor(`waiter ${i} queued`, async () => (await waiters()) === i + 1);
  }
  // Three acquires block on the server; everything else still goes on.
  const other = await c.lock("other").acquire({ ttl: 30_000 });
  assert.ok(other);
  assert.notEqual(await c.lock("job").info(), null);
  assert.equal(await other.release(), true);
  assert.equal(await holder.release(), true);
  await Promise.all(tasks);
  assert.deepEqual(order, [0, 1, 2]);
  assert.equal((await server.lockInfo()).lock_handoffs, 3);
});

test("cancelling a waiting acquire takes it out of the queue", async () => {
  const c = client();
  const holder = await c.lock("job").acquire({ ttl: 30_000 });
  assert.ok(holder);
  const cancel = new AbortController();
  const waiting = c
    .lock("job")
    .acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY, signal: cancel.signal });
  await waitFor("the waiter queued", async () => (await waiters()) === 1);
  cancel.abort();
  await assert.rejects(waiting, { name: "AbortError" });
  await waitFor("the queue empty", async () => (await waiters()) === 0);
  // A timeout signal cancels the same way.
  await assert.rejects(
    c.lock("job").acquire({ wait: Number.POSITIVE_INFINITY, signal: AbortSignal.timeout(300) }),
    { name: "TimeoutError" },
  );
  await waitFor("the queue empty", async () => (await waiters()) === 0);
  assert.equal(await holder.release(), true);
  assert.equal(await c.lock("job").isLocked(), false, "nobody got it");
});

test("tasks with handles of their own exclude each other", async (t) => {
  const rng = seeded(t.name);
  const c = client();
  let inside = 0;
  let most = 0;
  const tokens: bigint[] = [];
  const holds = Array.from({ length: 48 }, () => 1 + rng() * 4);
  await Promise.all(
    [0, 1, 2, 3, 4, 5, 6, 7].map(async (n) => {
      const lock = c.lock("counter");
      for (let i = n; i < holds.length; i += 8) {
        await using guard = await lock.acquire({ ttl: 30_000, wait: PATIENCE });
        assert.ok(guard);
        inside += 1;
        most = Math.max(most, inside);
        tokens.push(guard.token);
        await sleep(holds[i] ?? 1);
        inside -= 1;
      }
    }),
  );
  assert.equal(tokens.length, 48);
  assert.equal(most, 1);
  assert.deepEqual(
    tokens,
    [...tokens].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
  );
  assert.equal(new Set(tokens).size, 48);
});

test("errors carry the server's message", async () => {
  const c = client();
  await server.admin.sendCommand(["SET", "plain", "x"]);
  await assert.rejects(c.lock("plain").acquire(), (e: unknown) => {
    assert.ok(e instanceof WrongTypeError);
    assert.equal(e.message, "WRONGTYPE Operation against a key holding the wrong kind of value");
    assert.equal(e.code, "WRONGTYPE");
    return true;
  });
  const sem = await c.semaphore("pool", 2).acquire();
  assert.ok(sem);
  await assert.rejects(c.lock("pool").acquire(), {
    name: "WrongTypeError",
    message: /semaphore of 2 permits: acquire it with LIMIT 2/,
  });
  await assert.rejects(c.lock("pool").info(), WrongKindError);
  await assert.rejects(c.lock("job").acquire({ ttl: 0 }), InvalidOptionsError);
  await assert.rejects(c.semaphore("pool", 2).acquire({ count: 3 }), InvalidOptionsError);
  assert.equal(await sem.release(), true);
});

test("a RESP2 client reads and takes the lock as a RESP3 one does", async () => {
  const resp2 = new Client(server.redis({ RESP: 2 }));
  clients.push(resp2);
  const lock = resp2.lock("job");
  const guard = await lock.acquire({ ttl: 10_000 });
  assert.ok(guard);
  const seen2 = await lock.info();
  const seen3 = await client().lock("job").info();
  assert.deepEqual([seen2?.owner, seen2?.holds, seen2?.token], [lock.owner, 1, guard.token]);
  assert.deepEqual([seen3?.owner, seen3?.token], [lock.owner, guard.token]);
  const sem = resp2.semaphore("pool", 3);
  const permits = await sem.acquire({ ttl: 10_000, count: 2 });
  assert.ok(permits);
  assert.equal(await sem.available(), 1);
  assert.equal(await permits.release(), true);
  assert.equal(await guard.release(), true);
});

test("no server: the acquire is retried for its ttl, then fails with ConnectionFailedError", async () => {
  const port = await freePort();
  const c = new Client(nodeRedis(port));
  clients.push(c);
  const start = performance.now();
  await assert.rejects(c.lock("job").acquire({ ttl: 300 }), ConnectionFailedError);
  assert.ok(performance.now() - start >= 299, "retried until the window's end");
});

test("leases and waits longer than a Node timer can count (24.8 days) are kept", async () => {
  const c = client();
  const month = 2_592_000_000; // 30 days, the module's most
  const guard = await c.lock("job").acquire({ ttl: month, watchdog: false });
  assert.ok(guard);
  const connections = async () => {
    const text = String(await server.admin.sendCommand(["INFO", "stats"]));
    return Number(/total_connections_received:(\d+)/.exec(text)?.[1]);
  };
  const before = await connections();
  const waiting = c.lock("job").acquire({ ttl: month, wait: month - 1 });
  await waitFor("the waiter queued", async () => (await waiters()) === 1);
  await sleep(300);
  // Neither the lease's deadline nor the wait's reply timeout fired early:
  // still held, still one waiter on the one connection it opened.
  assert.equal(guard.signal.aborted, false);
  assert.ok(guard.remaining() > 0.85 * month, "the ttl less its margin (a tenth)");
  assert.equal(await waiters(), 1);
  assert.ok((await connections()) - before <= 2, "no reconnection loop");
  assert.equal(await guard.release(), true);
  const handed = await waiting;
  assert.ok(handed);
  assert.equal(await handed.release(), true);
});

test("closing the client ends its waits, queued or retrying", async () => {
  const holder = await client().lock("job").acquire({ ttl: 30_000 });
  assert.ok(holder);
  const closed = { name: "FencelockError", message: "the client is closed" };
  // Queued on the server.
  const queued = client();
  const first = queued.lock("job").acquire({ wait: Number.POSITIVE_INFINITY });
  await waitFor("the waiter queued", async () => (await waiters()) === 1);
  queued.close();
  await assert.rejects(first, closed);
  await waitFor("the queue empty", async () => (await waiters()) === 0);
  // Between retries: its connection was cut.
  const retrying = client();
  const second = retrying.lock("job").acquire({ wait: Number.POSITIVE_INFINITY });
  await waitFor("the waiter queued", async () => (await waiters()) === 1);
  await server.admin.sendCommand(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
  retrying.close();
  await assert.rejects(second, closed);
});

test("a dropped guard is released", {
  skip: typeof globalThis.gc !== "function" && "needs --expose-gc",
}, async () => {
  const lock = client().lock("job");
  await (async () => {
    const guard = await lock.acquire({ ttl: 30_000 });
    assert.ok(guard);
  })();
  await waitFor("the background release", async () => {
    globalThis.gc?.();
    await sleep(10);
    return !(await lock.isLocked());
  });
});
