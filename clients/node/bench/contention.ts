/**
 * Benchmark of the Node.js client (`make bench` and `npm run bench` run it):
 * on one redis-server with the module, 16 concurrent acquirers (async tasks
 * in one process, each with a lock object of its own, all over one client)
 * on one key, each holding the lock 1 ms per acquisition, for this package
 * (waiting in the server's FIFO queue), redis-semaphore's Mutex (SET NX
 * polling) and redlock (a Lua SET NX with retries), both over ioredis.
 * Per row: acquisitions/s, wait p50/p99/max (acquire called -> granted),
 * server commands per acquisition (`INFO commandstats` deltas; the
 * benchmark's own INFO calls and new connections' handshakes left out),
 * fairness (max/min grants per acquirer). Three rounds of `SECONDS` per row,
 * the rows interleaved. Prints a Markdown table with the targets and the
 * verdicts computed from the data, and writes it to bench/results.md.
 *
 * The peers poll: they are given a 1 ms retry interval (redis-semaphore's
 * default is 10 ms, redlock's 200 ms with 100 ms jitter, which would make
 * them slower and the comparison easier).
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { createClient } from "redis";
import { Mutex } from "redis-semaphore";
import Redlock from "redlock";
import { Client, type NodeRedisClient } from "../src/index.js";

const HERE = fileURLToPath(new URL("../../bench/", import.meta.url));
const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
const MODULE = process.env.FENCELOCK_MODULE ?? join(REPO, "target", "release", "libfencelock.so");
const WORKERS = 16;
const HOLD_MS = 1;
const ROUNDS = 3;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const KEY = "bench:contended";
/** Commands that every new connection or the benchmark itself sends, whatever the lock does. */
const LEFT_OUT = new Set(["info", "hello", "client|setinfo", "client|setname", "auth", "select"]);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Admin {
  sendCommand(args: string[]): Promise<unknown>;
  destroy(): void;
  connect(): Promise<unknown>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

class BenchServer {
  proc: ChildProcess | undefined;
  dir = mkdtempSync(join(tmpdir(), "fencelock-nodebench-"));
  port = 0;
  admin: Admin | undefined;

  async start(): Promise<void> {
    this.port = await freePort();
    this.proc = spawn(
      "redis-server",
      [
        ...["--port", String(this.port), "--bind", "127.0.0.1", "--loadmodule", MODULE],
        ...["--dir", this.dir, "--save", "", "--appendonly", "no", "--maxclients", "10000"],
      ],
      { stdio: "ignore" },
    );
    const create = createClient as unknown as (o: object) => Admin;
    for (let i = 0; ; i++) {
      const admin = create({
        socket: { host: "127.0.0.1", port: this.port, reconnectStrategy: false },
      });
      try {
        await admin.connect();
        this.admin = admin;
        return;
      } catch (e) {
        if (i > 300) throw e;
        await sleep(20);
      }
    }
  }

  /** Commands the server has run, leaving out `LEFT_OUT`. */
  async commands(): Promise<number> {
    const text = String(await this.admin?.sendCommand(["INFO", "commandstats"]));
    let total = 0;
    for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      if (!LEFT_OUT.has(m[1] ?? "")) total += Number(m[2]);
    }
    return total;
  }

  version(): string {
    return (
      execFileSync("redis-server", ["--version"])
        .toString()
        .match(/v=(\S+)/)?.[1] ?? "?"
    );
  }

  close(): void {
    this.admin?.destroy();
    this.proc?.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** One contender: makes the per-acquirer lock objects, and closes its client at the end. */
interface Contender {
  readonly name: string;
  setup(port: number): Promise<void>;
  acquirer(i: number): { acquire(): Promise<void>; release(): Promise<void> };
  teardown(): Promise<void>;
}

function fencelock(): Contender {
  let client: Client | undefined;
  return {
    name: "fencelock",
    async setup(port) {
      const create = createClient as unknown as (o: object) => NodeRedisClient;
      client = new Client(create({ socket: { host: "127.0.0.1", port } }));
    },
    acquirer() {
      const lock = client?.lock(KEY);
      let guard: Awaited<ReturnType<NonNullable<typeof lock>["acquire"]>> = null;
      return {
        async acquire() {
          guard = (await lock?.acquire({ ttl: 30_000, wait: Number.POSITIVE_INFINITY })) ?? null;
          if (guard === null) throw new Error("fencelock: not granted");
        },
        async release() {
          await guard?.release();
        },
      };
    },
    async teardown() {
      client?.close();
    },
  };
}

function redisSemaphore(): Contender {
  let redis: Redis | undefined;
  return {
    name: "redis-semaphore Mutex",
    async setup(port) {
      redis = new Redis({ host: "127.0.0.1", port });
    },
    acquirer() {
      const mutex = new Mutex(redis as Redis, KEY, {
        lockTimeout: 30_000,
        acquireTimeout: 60_000,
        retryInterval: 1,
      });
      return { acquire: () => mutex.acquire(), release: () => mutex.release() };
    },
    async teardown() {
      redis?.disconnect();
    },
  };
}

function redlock(): Contender {
  let redis: Redis | undefined;
  let rl: Redlock | undefined;
  return {
    name: "redlock",
    async setup(port) {
      redis = new Redis({ host: "127.0.0.1", port });
      rl = new Redlock([redis], { retryCount: -1, retryDelay: 1, retryJitter: 1 });
    },
    acquirer() {
      let lock: Awaited<ReturnType<Redlock["lock"]>> | undefined;
      return {
        async acquire() {
          lock = await rl?.lock(KEY, 30_000);
        },
        async release() {
          await lock?.unlock();
        },
      };
    },
    async teardown() {
      redis?.disconnect();
    },
  };
}

interface Round {
  grants: number[];
  waits: number[];
  seconds: number;
  commands: number;
}

async function round(server: BenchServer, c: Contender): Promise<Round> {
  await c.setup(server.port);
  const acquirers = Array.from({ length: WORKERS }, (_, i) => c.acquirer(i));
  // Warm up: every acquirer once (connections, scripts loaded).
  for (const a of acquirers) {
    await a.acquire();
    await a.release();
  }
  const grants = new Array<number>(WORKERS).fill(0);
  const waits: number[] = [];
  const before = await server.commands();
  const start = performance.now();
  const end = start + SECONDS * 1000;
  await Promise.all(
    acquirers.map(async (a, i) => {
      while (performance.now() < end) {
        const asked = performance.now();
        await a.acquire();
        waits.push(performance.now() - asked);
        grants[i] = (grants[i] ?? 0) + 1;
        await sleep(HOLD_MS);
        await a.release();
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  const commands = (await server.commands()) - before;
  await c.teardown();
  return { grants, waits, seconds, commands: Math.max(commands, 0) };
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

interface Row {
  name: string;
  rate: number;
  p50: number;
  p99: number;
  max: number;
  perAcquisition: number;
  fairness: number;
  rates: number[];
}

function summarize(name: string, rounds: Round[]): Row {
  const rates = rounds.map((r) => r.grants.reduce((a, b) => a + b, 0) / r.seconds);
  const waits = rounds.flatMap((r) => r.waits).sort((a, b) => a - b);
  const total = rounds.reduce((n, r) => n + r.grants.reduce((a, b) => a + b, 0), 0);
  const commands = rounds.reduce((n, r) => n + r.commands, 0);
  const fairness = Math.max(
    ...rounds.map((r) => Math.max(...r.grants) / Math.max(1, Math.min(...r.grants))),
  );
  return {
    name,
    rate: [...rates].sort((a, b) => a - b)[Math.floor(rates.length / 2)] ?? 0,
    p50: quantile(waits, 0.5),
    p99: quantile(waits, 0.99),
    max: waits[waits.length - 1] ?? Number.NaN,
    perAcquisition: commands / total,
    fairness,
    rates,
  };
}

function pkgVersion(name: string): string {
  const path = fileURLToPath(new URL(`../../node_modules/${name}/package.json`, import.meta.url));
  return (JSON.parse(execFileSync("cat", [path]).toString()) as { version: string }).version;
}

async function main(): Promise<void> {
  const server = new BenchServer();
  try {
    await server.start();
    const contenders = [fencelock(), redisSemaphore(), redlock()];
    const rounds = new Map<string, Round[]>(contenders.map((c) => [c.name, []]));
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of contenders) {
        rounds.get(c.name)?.push(await round(server, c));
        process.stderr.write(".");
      }
    }
    process.stderr.write("\n");
    const rows = contenders.map((c) => summarize(c.name, rounds.get(c.name) ?? []));
    const ours = rows[0] as Row;
    const peers = rows.slice(1);
    const best = peers.reduce((a, b) => (b.rate > a.rate ? b : a));
    const f = (n: number, d = 2) => n.toFixed(d);
    const date = new Date().toISOString().slice(0, 10);
    const lines = [
      `Measured ${date} by \`make bench\` (\`cd clients/node && npm run bench\`, bench/contention.ts): one redis-server ${server.version()} with the module on 127.0.0.1, Node ${process.version}, node-redis ${pkgVersion("redis")}, ioredis ${pkgVersion("ioredis")}, redis-semaphore ${pkgVersion("redis-semaphore")}, redlock ${pkgVersion("redlock")}; ${WORKERS} async acquirers in one process on one key, hold ${HOLD_MS} ms per acquisition; ${ROUNDS} rounds of ${SECONDS} s per row, the rows interleaved (acquisitions/s: the median round; waits: all rounds; fairness: the worst round). The peers poll every 1 ms.`,
      "",
      "| lock | acquisitions/s | wait p50 ms | wait p99 ms | wait max ms | server commands / acquisition | max/min grants per acquirer |",
      "|---|---:|---:|---:|---:|---:|---:|",
      ...rows.map(
        (r) =>
          `| ${r.name} | ${f(r.rate, 0)} | ${f(r.p50)} | ${f(r.p99)} | ${f(r.max, 1)} | ${f(r.perAcquisition)} | ${f(r.fairness)} |`,
      ),
      "",
      "| target | measured | verdict |",
      "|---|---|---|",
      `| acquisitions/s ≥ 1.2 × the better peer's (${best.name}) | ${f(ours.rate, 0)} vs ${f(best.rate, 0)}: ${f(ours.rate / best.rate)}× | ${ours.rate >= 1.2 * best.rate ? "pass" : "**FAIL**"} |`,
      `| wait p99 ≤ 1/2 of the better peer's (${best.name}) | ${f(ours.p99)} ms vs ${f(best.p99)} ms | ${ours.p99 <= best.p99 / 2 ? "pass" : "**FAIL**"} |`,
      `| ≤ 2 server commands per acquisition | ${f(ours.perAcquisition)} | ${ours.perAcquisition <= 2.005 ? "pass" : "**FAIL**"} |`,
      "",
    ];
    const text = lines.join("\n");
    process.stdout.write(text);
    writeFileSync(join(HERE, "results.md"), text);
  } finally {
    server.close();
  }
}

await main();
