/**
 * Real redis-server processes with the module for the tests: a single
 * server, a master with a replica, a 3-master cluster, and a TCP proxy that
 * cuts a connection right after the server applied a command (its reply is
 * swallowed). Every server runs on 127.0.0.1 on a free port in a temporary
 * directory and is killed at the end of its test, and at exit whatever
 * happened. The module is $FENCELOCK_MODULE, else the repository's
 * target/release/libfencelock.so.
 *
 * Time: tests never assume their own work is fast. They poll with
 * `PATIENCE` (generous: a slow, loaded machine), and allow `EXPIRY_SLACK`
 * after a lease's deadline.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import calculateSlot from "cluster-key-slot";
import { createClient, createCluster, RESP_TYPES } from "redis";
import type { NodeRedisClient, NodeRedisCluster } from "../src/index.js";

export const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
export const MODULE =
  process.env.FENCELOCK_MODULE ?? join(REPO, "target", "release", "libfencelock.so");

/** How long a test waits for something that should happen soon (ms). */
export const PATIENCE = 60_000;
/** How long after its deadline a lease may still be seen on a server (ms). */
export const EXPIRY_SLACK = 5_000;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns something truthy; fails after `timeout`. */
export async function waitFor<T>(
  what: string,
  check: () => T | Promise<T>,
  timeout = PATIENCE,
): Promise<NonNullable<T>> {
  const end = performance.now() + timeout;
  let delay = 5;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(delay);
    delay = Math.min(delay * 2, 100);
  }
}

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) {
    p.kill("SIGCONT");
    p.kill("SIGKILL");
  }
});

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

const used = new Set<number>();

/** A port free on 127.0.0.1 (and its cluster bus port + 10000). */
export async function freePort(cluster = false): Promise<number> {
  for (let i = 0; i < 1000; i++) {
    const port = 20000 + Math.floor(Math.random() * 30000);
    if (used.has(port)) continue;
    if (!(await bindable(port))) continue;
    if (cluster && !(await bindable(port + 10000))) continue;
    used.add(port);
    return port;
  }
  throw new Error("no free port");
}

/**
 * What the tests use of a node-redis client, typed by hand (node-redis's
 * generic types cost the compiler seconds at every use).
 */
export interface Admin {
  sendCommand(args: string[]): Promise<unknown>;
  destroy(): void;
}

interface RawClient extends Admin {
  on(event: string, listener: () => void): unknown;
  connect(): Promise<unknown>;
  withTypeMapping(mapping: object): Admin;
}

const newClient = createClient as unknown as (options: object) => RawClient;

/** A node-redis client as an application would make one (not connected: the library does not need that). */
export function nodeRedis(port: number, options: object = {}): NodeRedisClient {
  return newClient({
    socket: { host: "127.0.0.1", port },
    ...options,
  }) as unknown as NodeRedisClient;
}

/** A plain node-redis client for the test's own checks (integers as text, like the library). */
export async function admin(port: number): Promise<Admin> {
  const c = newClient({ socket: { host: "127.0.0.1", port, reconnectStrategy: false } });
  c.on("error", () => {});
  await c.connect();
  return c.withTypeMapping({ [RESP_TYPES.NUMBER]: String });
}

/** One redis-server with the module loaded. */
export class Server implements AsyncDisposable {
  dir = "";
  port = 0;
  proc: ChildProcess | undefined;
  stopped = false;
  #admin: Admin | undefined;

  static async start(extra: string[] = [], cluster = false): Promise<Server> {
    if (!existsSync(MODULE)) {
      throw new Error(`${MODULE} is missing: run cargo build --release -p fencelock`);
    }
    const s = new Server();
    s.dir = mkdtempSync(join(tmpdir(), "fencelock-node-"));
    s.port = await freePort(cluster);
    const args = [
      "--port",
      String(s.port),
      "--bind",
      "127.0.0.1",
      "--loadmodule",
      MODULE,
      "--dir",
      s.dir,
      "--save",
      "",
      "--appendonly",
      "no",
      "--enable-debug-command",
      "yes",
      "--logfile",
      "server.log",
    ];
    if (cluster) {
      args.push("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf");
      args.push("--cluster-node-timeout", "5000");
    }
    s.proc = spawn("redis-server", [...args, ...extra], { cwd: s.dir, stdio: "ignore" });
    live.add(s.proc);
    await waitFor(`redis-server on ${s.port}`, async () => {
      try {
        const c = await admin(s.port);
        await c.sendCommand(["PING"]);
        s.#admin = c;
        return true;
      } catch {
        return false;
      }
    });
    return s;
  }

  /** The test's own connection (no retries). */
  get admin(): Admin {
    if (this.#admin === undefined) throw new Error("not started");
    return this.#admin;
  }

  /** What an application would pass to `fencelock`'s Client (not connected: the Client does not need it to be). */
  redis(options: object = {}): NodeRedisClient {
    return nodeRedis(this.port, options);
  }

  /** `INFO lock` as numbers. */
  async lockInfo(): Promise<Record<string, number>> {
    return parseInfo(String(await this.admin.sendCommand(["INFO", "lock"])));
  }

  async lockCommand(...args: string[]): Promise<unknown> {
    return this.admin.sendCommand(args);
  }

  sigstop(): void {
    this.proc?.kill("SIGSTOP");
    this.stopped = true;
  }

  sigcont(): void {
    this.proc?.kill("SIGCONT");
    this.stopped = false;
  }

  async kill(): Promise<void> {
    const p = this.proc;
    if (p === undefined) return;
    this.#admin?.destroy();
    if (this.stopped) this.sigcont();
    if (p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGKILL");
      await exited;
    }
    live.delete(p);
    this.proc = undefined;
    rmSync(this.dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

export function parseInfo(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split(/\r?\n/)) {
    const m = /^(\w+):(-?\d+)$/.exec(line);
    if (m?.[1] !== undefined) out[m[1]] = Number(m[2]);
  }
  return out;
}

type Slots = [string, string, [string, string, ...unknown[]], ...unknown[]][];

/** Three masters, no replicas, slots split evenly (`redis-cli --cluster create`). */
export class Cluster implements AsyncDisposable {
  nodes: Server[] = [];

  static async start(): Promise<Cluster> {
    const c = new Cluster();
    try {
      c.nodes = await Promise.all([0, 1, 2].map(() => Server.start([], true)));
      execFileSync(
        "redis-cli",
        ["--cluster", "create", ...c.nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-yes"],
        { stdio: "ignore", timeout: PATIENCE },
      );
      for (const n of c.nodes) {
        // Every node must know every other one's slots before clients read the table.
        await waitFor("cluster_state:ok and all slots", async () => {
          const info = String(await n.admin.sendCommand(["CLUSTER", "INFO"]));
          const slots = (await n.admin.sendCommand(["CLUSTER", "SLOTS"])) as Slots;
          return info.includes("cluster_state:ok") && slots.length === 3;
        });
      }
      return c;
    } catch (e) {
      await c.kill();
      throw e;
    }
  }

  async #ranges(): Promise<[number, number, number][]> {
    const slots = (await this.nodes[0]?.admin.sendCommand(["CLUSTER", "SLOTS"])) as Slots;
    return slots.map(([s, e, m]) => [Number(s), Number(e), Number(m[1])]);
  }

  /** The master serving `key`'s slot. */
  async nodeOf(key: string): Promise<Server> {
    const slot = calculateSlot(key);
    const port = (await this.#ranges()).find(([s, e]) => s <= slot && slot <= e)?.[2];
    const node = this.nodes.find((n) => n.port === port);
    if (node === undefined) throw new Error(`no node serves slot ${slot}`);
    return node;
  }

  /** `perNode` key names for each node (by port). */
  async keysPerNode(prefix: string, perNode: number): Promise<Map<number, string[]>> {
    const ranges = await this.#ranges();
    const found = new Map(this.nodes.map((n) => [n.port, [] as string[]]));
    for (let i = 0; [...found.values()].some((v) => v.length < perNode); i++) {
      const key = `${prefix}${i}`;
      const slot = calculateSlot(key);
      const port = ranges.find(([s, e]) => s <= slot && slot <= e)?.[2] ?? 0;
      const list = found.get(port);
      if (list !== undefined && list.length < perNode) list.push(key);
    }
    return found;
  }

  redis(): NodeRedisCluster {
    const create = createCluster as unknown as (options: object) => NodeRedisCluster;
    return create({
      rootNodes: [{ socket: { host: "127.0.0.1", port: this.nodes[0]?.port ?? 0 } }],
    });
  }

  async kill(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.kill()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

/**
 * A TCP proxy in front of a server that can be told to cut the connection
 * right after the server received a command (the request is forwarded, the
 * reply swallowed, both sides closed): the server applied it, the client
 * never hears.
 */
export class CutProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #armed: string[] = [];
  #armedPending: string[] = [];
  cuts = 0;
  /** Commands (by name) seen from clients, counted. */
  readonly seen = new Map<string, number>();
  port = 0;

  private constructor(readonly upstreamPort: number) {
    this.#server = net.createServer((client) => this.#pump(client));
  }

  static async start(upstreamPort: number): Promise<CutProxy> {
    const p = new CutProxy(upstreamPort);
    await new Promise<void>((r) => p.#server.listen(0, "127.0.0.1", r));
    p.port = (p.#server.address() as net.AddressInfo).port;
    return p;
  }

  /** The next `times` requests of `command` are applied and their replies lost. */
  cutReply(command: string, times = 1): void {
    for (let i = 0; i < times; i++) this.#armed.push(command.toUpperCase());
  }

  /** The next reply to a request of `command` already sent (a waiter's hand-off) is lost. */
  cutPendingReply(command: string): void {
    this.#armedPending.push(command.toUpperCase());
  }

  #note(data: string): void {
    for (const word of ["LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.RENEW", "LOCK.INFO"]) {
      const n = data.split(word).length - 1;
      if (n) this.seen.set(word, (this.seen.get(word) ?? 0) + n);
    }
  }

  #pump(client: net.Socket): void {
    const upstream = net.connect(this.upstreamPort, "127.0.0.1");
    this.#sockets.add(client);
    this.#sockets.add(upstream);
    let swallow = false;
    let lastRequest = "";
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.#sockets.delete(client);
      this.#sockets.delete(upstream);
    };
    client.on("data", (data) => {
      const text = data.toString("latin1").toUpperCase();
      lastRequest = text;
      this.#note(text);
      const armed = this.#armed[0];
      if (armed !== undefined && text.includes(armed)) {
        this.#armed.shift();
        swallow = true;
      }
      upstream.write(data);
    });
    upstream.on("data", (data) => {
      const pending = this.#armedPending[0];
      if (pending !== undefined && lastRequest.includes(pending)) {
        this.#armedPending.shift();
        swallow = true;
      }
      if (swallow) {
        this.cuts += 1;
        close(); // the reply is lost; both sides are closed
        return;
      }
      client.write(data);
    });
    for (const s of [client, upstream]) {
      s.on("error", close);
      s.on("close", close);
    }
  }

  close(): void {
    this.#server.close();
    for (const s of this.#sockets) s.destroy();
  }
}
