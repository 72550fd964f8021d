/**
 * A master with a replica: what the client does on the master reaches the
 * replica (grant, renewals, release), a client on the replica reads the lock
 * there and gets the server's READONLY error when it tries to take it, and
 * after a promotion the lock is still held with its token.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { Client, ServerError } from "../src/index.js";
import { Server, waitFor } from "./servers.js";

let master: Server;
let replica: Server;
const clients: Client[] = [];

beforeEach(async () => {
  master = await Server.start(["--repl-diskless-sync-delay", "0"]);
  replica = await Server.start(["--replicaof", "127.0.0.1", String(master.port)]);
  await waitFor("the replica in sync", async () => {
    const m = String(await master.admin.sendCommand(["INFO", "replication"]));
    const r = String(await replica.admin.sendCommand(["INFO", "replication"]));
    return m.includes("connected_slaves:1") && r.includes("master_link_status:up");
  });
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await replica.kill();
  await master.kill();
});

function client(s: Server): Client {
  const c = new Client(s.redis());
  clients.push(c);
  return c;
}

/**
 * Until the replica shows `key` with `token` (or free, for null). WAIT would
 * not do: it counts from the offset of the connection's own last write, and
 * the test's connection wrote nothing (it would answer at once).
 */
async function onReplica(key: string, token: bigint | null): Promise<void> {
  const c = client(replica);
  await waitFor(`the replica to show ${key} ${token}`, async () => {
    const info = await c.lock(key).info();
    return token === null ? info === null : info?.token === token;
  });
}

test("grants, renewals and releases reach the replica", async () => {
  const c = client(master);
  const lock = c.lock("job");
  const guard = await lock.acquire({ ttl: 1500 });
  assert.ok(guard);
  await onReplica("job", guard.token);
  assert.equal((await client(replica).lock("job").info())?.owner, lock.owner);
  // Past several ttls the replica still shows it (it hides a passed lease):
  // renewals are replicated.
  await waitFor("three renewals", () => c.renewals >= 3);
  await onReplica("job", guard.token);
  assert.equal(await guard.release(), true);
  // The key itself goes (a lease that merely passed would leave it there
  // until the master's expiry reached the replica).
  await waitFor("the key gone on the replica", async () => {
    return String(await replica.admin.sendCommand(["EXISTS", "job"])) === "0";
  });
  assert.equal((await master.lockInfo()).lock_expired, 0);
});

test("the replica refuses with its own message", async () => {
  await assert.rejects(client(replica).lock("job").acquire(), (e: unknown) => {
    assert.ok(e instanceof ServerError);
    assert.equal(e.code, "READONLY");
    assert.equal(e.message, "READONLY You can't write against a read only replica.");
    return true;
  });
});

test("a promoted replica keeps the lock and its token", async () => {
  const guard = await client(master).lock("job").acquire({ ttl: 30_000 });
  assert.ok(guard);
  await onReplica("job", guard.token);
  await master.kill();
  await replica.admin.sendCommand(["REPLICAOF", "NO", "ONE"]);
  const promoted = client(replica);
  assert.equal(await promoted.lock("job").acquire(), null);
  assert.equal((await promoted.lock("job").info())?.token, guard.token);
  assert.equal(await promoted.lock("job").forceRelease(), true);
  const later = await promoted.lock("job").acquire({ ttl: 30_000 });
  assert.ok(later && later.token > guard.token);
  assert.equal(await later.release(), true);
});
