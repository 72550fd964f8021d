/**
 * A lock holder in a process of its own, for test/processes.test.ts:
 * `node holder.js <port> <ttl-ms> hang|line` takes "job", prints its token,
 * then hangs (to be killed) or releases when a line comes on stdin.
 */

import { Client } from "../src/index.js";
import { nodeRedis } from "./servers.js";

const [port, ttl, mode] = process.argv.slice(2);
await using client = new Client(nodeRedis(Number(port)));
{
  await using guard = await client.lock("job").acquire({ ttl: Number(ttl) });
  if (guard === null) throw new Error("not granted");
  process.stdout.write(`${guard.token}\n`);
  if (mode === "hang") await new Promise(() => setInterval(() => {}, 1000));
  await new Promise((resolve) => process.stdin.once("data", resolve));
  process.stdin.destroy(); // else it keeps the process alive
}
