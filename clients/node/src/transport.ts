/**
 * How the client reaches the server: over node-redis connections of its own
 * (made from the application's client's options), never through the
 * application's client and never with node-redis's offline queue, so that
 * node-redis cannot send a command again by itself (the client's own retries
 * carry request ids).
 *
 * Per node: one shared connection for the quick commands (every reply
 * awaited at most `responseTimeout`; a connection whose reply did not come in
 * time is dropped, so that nothing it carried can come back later), and a
 * set of connections for waiting acquires, one per waiting acquire, so that
 * the shared one is never blocked by a `WAIT`. Cancelling a wait closes its
 * connection, which takes the waiter out of the server's queue.
 *
 * A cluster: the client reads the slot table (`CLUSTER SLOTS`) from the
 * cluster's root nodes, sends each command to the master of its key's slot,
 * and follows `MOVED` (re-reading the table) and `ASK` (`ASKING` first).
 */

import calculateSlot from "cluster-key-slot";
import { createClient, ErrorReply, RESP_TYPES } from "redis";
import { FencelockError, ServerError } from "./errors.js";
import { type Args, ConnectionError, type Key } from "./protocol.js";

// biome-ignore lint/suspicious/noExplicitAny: any node-redis client, whatever its modules and scripts
export type NodeRedisClient = import("redis").RedisClientType<any, any, any, any, any>;
// biome-ignore lint/suspicious/noExplicitAny: any node-redis cluster, whatever its modules and scripts
export type NodeRedisCluster = import("redis").RedisClusterType<any, any, any, any, any>;

/** Integers as text: fencing tokens are above 2^53. */
const TYPES = { [RESP_TYPES.NUMBER]: String } as const;
/**
 * The longest delay a Node timer takes (about 24.8 days; a longer one fires
 * at once): a longer reply timeout (a wait of up to 30 days) is no timeout.
 */
const MAX_TIMER = 2 ** 31 - 1;
/** Idle waiting connections kept per node. */
const MAX_IDLE = 16;
const MAX_REDIRECTS = 5;

type ClientOptions = Record<string, unknown>;

/**
 * What the transport uses of a node-redis client. Typed by hand: node-redis's
 * own generic types cost the compiler seconds at every use.
 */
interface RawClient {
  readonly isReady: boolean;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  off(event: string, listener: (...args: unknown[]) => void): unknown;
  connect(): Promise<unknown>;
  destroy(): void;
  sendCommand(args: Args, options: { typeMapping: object }): Promise<unknown>;
}

const newClient = createClient as unknown as (options: ClientOptions) => RawClient;

/** One connection the transport owns, connected in the background and reconnected by node-redis. */
class Conn {
  readonly client: RawClient;
  #closed = false;

  constructor(options: ClientOptions) {
    this.client = newClient({ ...options, disableOfflineQueue: true });
    // Errors come back as rejected commands; without a listener node-redis would throw them.
    this.client.on("error", () => {});
    this.client.connect().catch(() => {});
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.client.destroy();
    } catch {
      // already closed
    }
  }

  /** Resolves once the connection is ready; rejects after `timeout` ms or on `signal`. */
  ready(timeout: number | undefined, signal: AbortSignal | undefined): Promise<void> {
    if (this.client.isReady) return Promise.resolve();
    if (this.#closed) return Promise.reject(new ConnectionError("connection closed"));
    return new Promise((resolve, reject) => {
      const done = (err?: unknown) => {
        clearTimeout(timer);
        this.client.off("ready", onReady);
        signal?.removeEventListener("abort", onAbort);
        if (err === undefined) resolve();
        else reject(err);
      };
      const onReady = () => done();
      const onAbort = () => done(signal?.reason);
      const timer =
        timeout === undefined
          ? undefined
          : setTimeout(() => done(new ConnectionError("could not connect in time")), timeout);
      this.client.on("ready", onReady);
      signal?.addEventListener("abort", onAbort);
    });
  }

  /**
   * Sends `commands` in one write and awaits their replies within `timeout`
   * ms (undefined: no limit). A server error is returned as `ServerError`;
   * anything else that goes wrong rejects with `ConnectionError`, or the
   * signal's reason when `signal` aborts. On an abort, and on a timeout when
   * `dropOnTimeout`, the connection is closed (else a late reply is read and
   * ignored).
   */
  async send(
    commands: readonly Args[],
    maybeTimeout: number | undefined,
    signal?: AbortSignal,
    dropOnTimeout = true,
  ): Promise<unknown[]> {
    const timeout =
      maybeTimeout !== undefined && maybeTimeout > MAX_TIMER ? undefined : maybeTimeout;
    const start = performance.now();
    try {
      await this.ready(timeout, signal);
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw e;
    }
    if (signal?.aborted) throw signal.reason;
    const replies = commands.map((args) =>
      this.client.sendCommand(args, { typeMapping: TYPES }).then(
        (reply: unknown) => reply,
        (e: unknown) => {
          if (e instanceof ErrorReply) return ServerError.of(e.message);
          throw new ConnectionError(e instanceof Error ? e.message : String(e), { cause: e });
        },
      ),
    );
    const all = Promise.all(replies);
    all.catch(() => {});
    const left =
      timeout === undefined ? undefined : Math.max(timeout - (performance.now() - start), 1);
    if (left === undefined && signal === undefined) return all;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stop = new Promise<never>((_, reject) => {
      if (left !== undefined) {
        timer = setTimeout(() => {
          if (dropOnTimeout) this.close();
          reject(new ConnectionError(`no reply within ${Math.round(timeout ?? 0)} ms`));
        }, left);
      }
      if (signal !== undefined) {
        onAbort = () => {
          this.close();
          reject(signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
    try {
      return await Promise.race([all, stop]);
    } finally {
      clearTimeout(timer);
      if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
    }
  }
}

/** One server: its connection options, its shared connection and its idle waiting connections. */
export class Node {
  #quick: Conn | undefined;
  readonly #idle: Conn[] = [];
  /** Waiting connections in use: closed with the client, which ends their waits. */
  readonly #busy = new Set<Conn>();
  #closed = false;

  constructor(
    readonly name: string,
    readonly options: ClientOptions,
    readonly responseTimeout: number,
  ) {}

  #shared(): Conn {
    if (this.#closed) throw new FencelockError("the client is closed"); // not retried
    if (this.#quick === undefined || this.#quick.closed) this.#quick = new Conn(this.options);
    return this.#quick;
  }

  /** Quick commands on the shared connection (a reply each within `responseTimeout`). */
  quick(commands: readonly Args[]): Promise<unknown[]> {
    return this.#shared().send(commands, this.responseTimeout);
  }

  /**
   * Renewals on the shared connection: their replies are awaited until
   * `timeout` (the nearest local deadline), and a late one does not drop the
   * connection that the other commands share (the watchdog tries again; a
   * reply after the deadline is of no use).
   */
  renewals(commands: readonly Args[], timeout: number): Promise<unknown[]> {
    return this.#shared().send(commands, timeout, undefined, false);
  }

  /**
   * A blocking command on a connection of its own (`timeout`: undefined for
   * no limit), kept for the next wait when the reply came.
   */
  async waiting(
    commands: readonly Args[],
    timeout: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<unknown[]> {
    if (this.#closed) throw new FencelockError("the client is closed"); // not retried
    const conn = this.#idle.pop() ?? new Conn(this.options);
    this.#busy.add(conn);
    let ok = false;
    try {
      const replies = await conn.send(commands, timeout, signal);
      ok = true;
      return replies;
    } finally {
      this.#busy.delete(conn);
      if (ok && !conn.closed && !this.#closed && this.#idle.length < MAX_IDLE)
        this.#idle.push(conn);
      else conn.close();
    }
  }

  close(): void {
    this.#closed = true;
    this.#quick?.close();
    for (const c of [...this.#idle.splice(0), ...this.#busy]) c.close();
  }
}

interface Redirect {
  readonly ask: boolean;
  readonly address: string;
}

function redirect(reply: unknown): Redirect | undefined {
  if (!(reply instanceof ServerError)) return undefined;
  const m = /^(MOVED|ASK) \d+ (\S+)$/.exec(reply.message);
  return m?.[1] === undefined || m[2] === undefined
    ? undefined
    : { ask: m[1] === "ASK", address: m[2] };
}

function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at), port: Number(address.slice(at + 1)) };
}

/** The nodes of one client: a single server, or a cluster's masters. */
export class Transport {
  readonly #single: Node | undefined;
  readonly #nodes = new Map<string, Node>();
  readonly #roots: ClientOptions[] = [];
  readonly #defaults: ClientOptions = {};
  #slots: (string | undefined)[] = [];
  #refreshing: Promise<void> | undefined;

  constructor(
    conn: NodeRedisClient | NodeRedisCluster,
    readonly responseTimeout: number,
  ) {
    const raw = conn as unknown as {
      _options?: { rootNodes?: ClientOptions[]; defaults?: ClientOptions };
      options?: ClientOptions;
    };
    const cluster = raw._options;
    if (cluster?.rootNodes !== undefined) {
      this.#defaults = cluster.defaults ?? {};
      this.#roots = cluster.rootNodes.map((r) => ({ ...this.#defaults, ...r }));
    } else if (raw.options !== undefined) {
      this.#single = new Node("server", { ...raw.options }, responseTimeout);
    } else {
      throw new TypeError("fencelock's Client needs a node-redis client or cluster");
    }
  }

  get cluster(): boolean {
    return this.#single === undefined;
  }

  #node(address: string): Node {
    let node = this.#nodes.get(address);
    if (node === undefined) {
      const { host, port } = splitAddress(address);
      const socket = { ...((this.#defaults.socket as object | undefined) ?? {}), host, port };
      node = new Node(address, { ...this.#defaults, socket }, this.responseTimeout);
      this.#nodes.set(address, node);
    }
    return node;
  }

  /** Reads the slot table from the first root node that answers. */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#readSlots().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  async #readSlots(): Promise<void> {
    let last: unknown = new ConnectionError("no root node");
    const known = [...this.#nodes.values()].map((n) => n.options);
    for (const options of [...known, ...this.#roots]) {
      const conn = new Conn(options);
      try {
        const [reply] = await conn.send([["CLUSTER", "SLOTS"]], this.responseTimeout);
        if (reply instanceof ServerError) throw reply;
        const slots: (string | undefined)[] = new Array(16384);
        for (const range of reply as [string, string, [string, string]][]) {
          const [start, end, master] = range;
          const address = `${master[0]}:${master[1]}`;
          for (let s = Number(start); s <= Number(end); s++) slots[s] = address;
        }
        this.#slots = slots;
        return;
      } catch (e) {
        last = e;
      } finally {
        conn.close();
      }
    }
    throw last;
  }

  async nodeFor(key: Key): Promise<Node> {
    if (this.#single !== undefined) return this.#single;
    if (this.#slots.length === 0) await this.refresh();
    const address = this.#slots[calculateSlot(key)];
    if (address === undefined) throw new ServerError("CLUSTERDOWN no node serves the key's slot");
    return this.#node(address);
  }

  /**
   * One command for `key`, following cluster redirections. `waiting`: on a
   * connection of its own with `timeout` (undefined: no limit) and `signal`.
   * Resolves to the reply; rejects with `ServerError` for an error reply.
   */
  async call(
    key: Key,
    args: Args,
    waiting?: { timeout: number | undefined; signal: AbortSignal | undefined },
  ): Promise<unknown> {
    let node = await this.nodeFor(key);
    let ask = false;
    for (let i = 0; i < MAX_REDIRECTS; i++) {
      const commands = ask ? [["ASKING"], args] : [args];
      let replies: unknown[];
      try {
        replies =
          waiting === undefined
            ? await node.quick(commands)
            : await node.waiting(commands, waiting.timeout, waiting.signal);
      } catch (e) {
        // A master that does not answer may have failed over: the retry
        // should find its slots where they are now.
        if (this.cluster && e instanceof ConnectionError) void this.refresh().catch(() => {});
        throw e;
      }
      const reply = replies[replies.length - 1];
      const to = redirect(reply);
      if (to === undefined) {
        if (reply instanceof ServerError) throw reply;
        return reply;
      }
      if (!to.ask) void this.refresh().catch(() => {});
      node = this.#node(to.address);
      ask = to.ask;
    }
    throw new ServerError("TRYAGAIN too many cluster redirections");
  }

  /**
   * Renewals for several keys, one write per node, replies awaited until
   * `timeout`; each result is the reply, a `ServerError`, or the
   * `ConnectionError` of its node.
   */
  async batch(commands: readonly (readonly [Key, Args])[], timeout: number): Promise<unknown[]> {
    const byNode = new Map<Node, number[]>();
    const results: unknown[] = new Array(commands.length);
    for (const [i, [key]] of commands.entries()) {
      try {
        const node = await this.nodeFor(key);
        const list = byNode.get(node) ?? [];
        list.push(i);
        byNode.set(node, list);
      } catch (e) {
        results[i] = e;
      }
    }
    let moved = false;
    await Promise.all(
      [...byNode].map(async ([node, indexes]) => {
        try {
          const replies = await node.renewals(
            indexes.map((i) => (commands[i] as readonly [Key, Args])[1]),
            timeout,
          );
          for (const [j, i] of indexes.entries()) {
            results[i] = replies[j];
            moved ||= redirect(replies[j]) !== undefined;
          }
        } catch (e) {
          for (const i of indexes) results[i] = e;
          moved ||= this.cluster && e instanceof ConnectionError;
        }
      }),
    );
    // Redirected or unreachable: the next renewals use a fresh slot table.
    if (moved) void this.refresh().catch(() => {});
    return results;
  }

  close(): void {
    this.#single?.close();
    for (const n of this.#nodes.values()) n.close();
  }
}
