/**
 * Takes the lock "job" on a server with the module (default 127.0.0.1:6379),
 * does some work in steps while the watchdog renews the lease, stops if the
 * lease is lost, and releases at the end of the `await using` block.
 *
 *     npm run example                      # after `make run` in another terminal
 *     node dist/examples/job.js [port] [seconds]
 */

import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "redis";
import { Client } from "../src/index.js";

const port = Number(process.argv[2] ?? 6379);
const seconds = Number(process.argv[3] ?? 3);

await using client = new Client(createClient({ socket: { host: "127.0.0.1", port } }));
// A 2 s lease, renewed every 2/3 s; queue up to 10 s if someone else holds it.
await using guard = await client.lock("job").acquire({ ttl: 2000, wait: 10_000 });
if (guard === null) {
  console.error("someone else held the lock for 10 s");
  process.exit(1);
}
console.log(`got the lock: fencing token ${guard.token}`);
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  // One step of work; it stops at once if the lease is lost meanwhile.
  await sleep(500, undefined, { signal: guard.signal });
  console.log(`working ... lease known held for ${(guard.remaining() / 1000).toFixed(2)} s more`);
}
console.log("done; releasing");
