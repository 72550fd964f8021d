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
  // What is left of its lease, as the server counts it just before the kill:
  // the server computed it after `asked`, so the lease ends after asked + ttl.
  const asked = performance.now();
  const info = await lock.info();
  assert.equal(info?.token, token);
  const exited = once(proc, "exit");
  proc.kill("SIGKILL");
  const killed = performance.now();
  await exited;
  const guard = await lock.acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY });
  const granted = performance.now();
  assert.ok(guard && guard.token > token);
  // Never before the holder's last lease ended (1 ms: the server's rounding),
  // and the server expires it on time: at most a ttl after the kill.
  const left = info?.ttl ?? 0;
  assert.ok(
    granted - asked >= left - 1,
    `granted ${granted - asked} ms after a read of ${left} left`,
  );
  assert.ok(
    granted - killed <= ttl + EXPIRY_SLACK,
    `granted ${granted - killed} ms after the kill`,
  );
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
