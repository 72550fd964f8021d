/**
 * What `LOCK.INFO` shows, in its three shapes: {@link LockInfo} (an
 * exclusive holder), {@link SharedInfo} (readers) and {@link SemaphoreInfo}
 * (permit holders). Each is a snapshot: by the time you read it the lock may
 * have changed hands. `ttl` is milliseconds on the server's clock.
 */

import { UnexpectedReplyError } from "./errors.js";
import { integer } from "./protocol.js";

/** A lock held exclusively. */
export interface LockInfo {
  readonly mode: "exclusive";
  /** The holder's owner string (`<uuid>:<n>` for this package's handles). */
  readonly owner: string;
  /** Its holds (each re-entry adds one; after a downgrade its read holds count here too). */
  readonly holds: number;
  readonly ttl: number;
  readonly token: bigint;
  /** Acquires waiting in the server's queue. */
  readonly waiters: number;
}

/** One reader of a read/write lock held shared. */
export interface Holder {
  readonly owner: string;
  readonly holds: number;
  readonly ttl: number;
  readonly token: bigint;
}

/** A read/write lock held shared (readers only); holders oldest grant first. */
export interface SharedInfo {
  readonly mode: "shared";
  readonly waiters: number;
  readonly holders: readonly Holder[];
}

/** One holder of a semaphore's permits. */
export interface PermitHolder {
  readonly owner: string;
  readonly permits: number;
  readonly ttl: number;
  readonly token: bigint;
}

/** A semaphore; holders oldest grant first. */
export interface SemaphoreInfo {
  readonly mode: "semaphore";
  /** Its permits (the `LIMIT` it was created with). */
  readonly limit: number;
  /** Permits nobody holds. */
  readonly available: number;
  readonly waiters: number;
  readonly holders: readonly PermitHolder[];
}

export type KeyInfo = LockInfo | SharedInfo | SemaphoreInfo;

/** What `owner` holds at the key (holds, or permits), per the snapshot. */
export function heldBy(info: KeyInfo | null, owner: string): number {
  if (info === null) return 0;
  if (info.mode === "exclusive") return info.owner === owner ? info.holds : 0;
  if (info.mode === "shared") {
    return info.holders.reduce((n, h) => n + (h.owner === owner ? h.holds : 0), 0);
  }
  return info.holders.reduce((n, h) => n + (h.owner === owner ? h.permits : 0), 0);
}

class Bad extends Error {}

function text(v: unknown): string {
  if (typeof v === "string") return v;
  if (Buffer.isBuffer(v)) return v.toString("utf8");
  throw new Bad();
}

/** The field/value pairs of a map (RESP3) or a flat array (RESP2). */
function fields(reply: unknown): Map<string, unknown> {
  if (Array.isArray(reply) && reply.length % 2 === 0) {
    const out = new Map<string, unknown>();
    for (let i = 0; i < reply.length; i += 2) out.set(text(reply[i]), reply[i + 1]);
    return out;
  }
  if (reply instanceof Map) return new Map([...reply].map(([k, v]) => [text(k), v]));
  if (typeof reply === "object" && reply !== null) return new Map(Object.entries(reply));
  throw new Bad();
}

function big(f: Map<string, unknown>, name: string): bigint {
  const n = integer(f.get(name));
  if (n === undefined || n < 0n) throw new Bad();
  return n;
}

function count(f: Map<string, unknown>, name: string): number {
  return Number(big(f, name));
}

function holders(f: Map<string, unknown>): Map<string, unknown>[] {
  const list = f.get("holders");
  if (!Array.isArray(list)) throw new Bad();
  return list.map(fields);
}

/** Reads a `LOCK.INFO` reply, RESP2 or RESP3; `null` when nothing is held. */
export function parseKeyInfo(reply: unknown): KeyInfo | null {
  if (reply === null) return null;
  try {
    const f = fields(reply);
    const mode = f.has("mode") ? text(f.get("mode")) : "exclusive";
    if (mode === "exclusive") {
      return {
        mode,
        owner: text(f.get("owner")),
        holds: count(f, "holds"),
        ttl: count(f, "ttl"),
        token: big(f, "token"),
        waiters: count(f, "waiters"),
      };
    }
    if (mode === "shared") {
      return {
        mode,
        waiters: count(f, "waiters"),
        holders: holders(f).map((h) => ({
          owner: text(h.get("owner")),
          holds: count(h, "holds"),
          ttl: count(h, "ttl"),
          token: big(h, "token"),
        })),
      };
    }
    if (mode === "semaphore") {
      return {
        mode,
        limit: count(f, "limit"),
        available: count(f, "available"),
        waiters: count(f, "waiters"),
        holders: holders(f).map((h) => ({
          owner: text(h.get("owner")),
          permits: count(h, "permits"),
          ttl: count(h, "ttl"),
          token: big(h, "token"),
        })),
      };
    }
  } catch (e) {
    if (!(e instanceof Bad)) throw e;
  }
  throw new UnexpectedReplyError("LOCK.INFO", reply);
}
