/**
 * Holders as separate processes: a holder killed with SIGKILL stops
 * renewing, and a waiter in another process gets the lock once the lease
 * ran out (about a ttl after the kill, never before the last renewal's lease
 * ended); a holder that leaves its `await using` block releases at once.
 */

import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { afterEach, beforeEach, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Client } from "../src/index.js";
import { EXPIRY_SLACK, Server, sleep, waitFor } from "./servers.js";

const HOLDER = fileURLToPath(new URL("./holder.js", import.meta.url));

let server: Server;
const clients: Client[] = [];
const children: ChildProcessWithoutNullStreams[] = [];

beforeEach(async () => {
  server = await Server.start();
});

afterEach(async () => {
  for (const p of children.splice(0)) p.kill("SIGKILL");
  for (const c of clients.splice(0)) c.close();
  await server.kill();
});

async function startHolder(
  ttl: number,
  mode: string,
): Promise<[ChildProcessWithoutNullStreams, bigint]> {
  const proc = spawn(process.execPath, [HOLDER, String(server.port), String(ttl), mode]);
  children.push(proc);
  const lines = createInterface({ input: proc.stdout });
  const [line] = (await once(lines, "line")) as [string];
  assert.ok(line.trim(), "the holder printed no token");
  return [proc, BigInt(line.trim())];
}

test("a killed holder is replaced after about a ttl", async () => {
  const ttl = 2000;
  const [proc, token] = await startHolder(ttl, "hang");
  const c = new Client(server.redis());
  clients.push(c);
  const lock = c.lock("job");
  // Let its watchdog renew at least once: the lease must outlive the ttl.
  await sleep(ttl * 0.6);
  assert.equal((await lock.info())?.token, token);
  const exited = once(proc, "exit");
  proc.kill("SIGKILL");
  const killed = performance.now();
  await exited;
  const guard = await lock.acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY });
  const granted = performance.now();
  assert.ok(guard && guard.token > token);
  // The last renewal was at most renewEvery (ttl/3) before the kill, so its
  // lease ends at least ttl - ttl/3 after it; and the server expires it on time.
  assert.ok(
    granted - killed >= ttl - ttl / 3 - 50,
    `granted ${granted - killed} ms after the kill`,
  );
  assert.ok(granted - killed <= ttl + EXPIRY_SLACK);
  assert.equal((await server.lockInfo()).lock_expired, 1);
  assert.equal(await guard.release(), true);
});

test("a holder that leaves its await using block releases at once", async () => {
  const [proc, token] = await startHolder(30_000, "line");
  const c = new Client(server.redis());
  clients.push(c);
  const lock = c.lock("job");
  assert.equal(await lock.acquire(), null);
  const exited = once(proc, "exit");
  proc.stdin.write("go\n");
  const [code] = (await exited) as [number];
  assert.equal(code, 0);
  const guard = await lock.acquire();
  assert.ok(guard && guard.token > token);
  assert.equal((await server.lockInfo()).lock_expired, 0);
  assert.equal(await guard.release(), true);
  await waitFor("released", async () => !(await lock.isLocked()));
});
