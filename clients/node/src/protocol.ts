/**
 * The module's commands as the client sends them, the checks on their
 * replies (docs/INTERFACE.md is the contract), and the retry rules.
 *
 * Retries: a connection can fail between the server applying a request and
 * the client reading the reply. Sent again as it was, a release would
 * release twice and an acquire would re-enter (or take its permits) twice.
 * Every acquire and release therefore carries `ID request-id`, unique per
 * operation of the handle and the same on each of its retries: the server
 * answers an id it has applied with the reply it gave and changes nothing.
 * The client sends over connections of its own with node-redis's offline
 * queue off, so node-redis never sends a command a second time by itself.
 * How long an operation is retried, from its first send: an acquire without
 * a wait, and a release, for the lease's ttl (a grant made by a lost attempt
 * has expired by then anyway); a waiting acquire until its wait deadline and
 * at least as long, each retry sending the wait that is left; a wait without
 * limit until an answer comes. Renewals carry no id (`LOCK.RENEW` is
 * idempotent; the watchdog retries until the local deadline).
 * `LOCK.FORCERELEASE` is never retried: sent again it could remove a holder
 * granted in between.
 */

import { ServerError, UnexpectedReplyError } from "./errors.js";
import type { Hold } from "./lease.js";

export type Key = string | Buffer;
export type Arg = string | Buffer;
export type Args = readonly Arg[];

/** The pause before the first retry; it doubles after each failure, up to `MAX_DELAY`. */
export const FIRST_DELAY = 10;
export const MAX_DELAY = 1000;

/** How long a reply to a request that does not block may take before the attempt counts as failed. */
export const DEFAULT_RESPONSE_TIMEOUT = 2000;

/** Server errors that say "not now, nothing was applied". */
const RETRYABLE_CODES = new Set(["LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"]);

const UPGRADE_PREFIX = "ERR the owner holds this lock shared";
const OVER_COUNT_PREFIX = "ERR COUNT is more than the owner holds";

/** What an acquire asks for: the options of `LOCK.ACQUIRE` before `WAIT`. */
export interface Request {
  readonly hold: Hold;
  /** For a semaphore: its `LIMIT` and the `COUNT` asked for. */
  readonly limit: number;
  readonly count: number;
}

export function releaseCount(r: Request): number {
  return r.hold === "permits" ? r.count : 1;
}

/** `LOCK.ACQUIRE key owner ttl-ms [SHARED | LIMIT p COUNT n] [WAIT ms] ID request-id`. */
export function acquireArgs(
  key: Key,
  owner: string,
  ttlMs: number,
  request: Request,
  waitMs: number | undefined,
  requestId: string,
): Args {
  const args: Arg[] = ["LOCK.ACQUIRE", key, owner, String(ttlMs)];
  if (request.hold === "shared") args.push("SHARED");
  else if (request.hold === "permits") {
    args.push("LIMIT", String(request.limit), "COUNT", String(request.count));
  }
  if (waitMs !== undefined) args.push("WAIT", String(waitMs));
  args.push("ID", requestId);
  return args;
}

export function renewArgs(key: Key, owner: string, ttlMs: number): Args {
  return ["LOCK.RENEW", key, owner, String(ttlMs)];
}

/** `LOCK.RELEASE key owner [COUNT n] ID request-id` (`COUNT` only when it is not 1). */
export function releaseArgs(key: Key, owner: string, count: number, requestId: string): Args {
  return count === 1
    ? ["LOCK.RELEASE", key, owner, "ID", requestId]
    : ["LOCK.RELEASE", key, owner, "COUNT", String(count), "ID", requestId];
}

export function forceReleaseArgs(key: Key, owner: string | undefined): Args {
  return owner === undefined ? ["LOCK.FORCERELEASE", key] : ["LOCK.FORCERELEASE", key, owner];
}

export function infoArgs(key: Key): Args {
  return ["LOCK.INFO", key];
}

/** An integer reply (node-redis gives them as text here, so that tokens above 2^53 stay exact). */
export function integer(reply: unknown): bigint | undefined {
  if (typeof reply === "string" && /^-?\d+$/.test(reply)) return BigInt(reply);
  if (typeof reply === "number" && Number.isSafeInteger(reply)) return BigInt(reply);
  return undefined;
}

/** `LOCK.ACQUIRE`: a positive token, or null (not granted). */
export function token(reply: unknown): bigint | null {
  if (reply === null) return null;
  const n = integer(reply);
  if (n !== undefined && n > 0n) return n;
  throw new UnexpectedReplyError("LOCK.ACQUIRE", reply);
}

/** `LOCK.RELEASE`: what the owner still holds, or null (held nothing). */
export function remaining(reply: unknown): number | null {
  if (reply === null) return null;
  const n = integer(reply);
  if (n !== undefined && n >= 0n) return Number(n);
  throw new UnexpectedReplyError("LOCK.RELEASE", reply);
}

/** `LOCK.RENEW` (1 held, 0 not) and `LOCK.FORCERELEASE` (1 removed something, 0 nothing). */
export function flag(command: string, reply: unknown): boolean {
  const n = integer(reply);
  if (n === 0n || n === 1n) return n === 1n;
  throw new UnexpectedReplyError(command, reply);
}

export function isUpgrade(error: ServerError): boolean {
  return error.message.startsWith(UPGRADE_PREFIX);
}

/** The `h` of `ERR COUNT is more than the owner holds (h); ...`, or undefined for another error. */
export function heldInOverCount(error: ServerError): number | undefined {
  if (!error.message.startsWith(OVER_COUNT_PREFIX)) return undefined;
  const m = /\((\d+)\)/.exec(error.message);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

/**
 * Whether a failed attempt may be sent again: the connection failed (the
 * request may or may not have been applied), or the server said it cannot
 * take requests right now (nothing was applied). Any other answer is final.
 */
export function isRetryable(error: unknown): boolean {
  if (error instanceof ServerError) return RETRYABLE_CODES.has(error.code);
  return error instanceof ConnectionError;
}

/** A request that got no answer: the connection failed or the reply did not come in time. */
export class ConnectionError extends Error {
  override name = "ConnectionError";
}

/** The attempts of one operation: when the first was sent, until when retries are sent, the next pause. */
export class Retries {
  readonly firstSent: number;
  /** No attempt is sent after this; undefined: until an answer comes. */
  readonly deadline: number | undefined;
  #delay = FIRST_DELAY;
  failed = 0;

  constructor(window: number | undefined, now: number) {
    this.firstSent = now;
    this.deadline = window === undefined ? undefined : now + window;
  }

  /** Whether an attempt failed before: the answer may be to a retry. */
  get retried(): boolean {
    return this.failed > 0;
  }

  /**
   * After a failed attempt: the pause before the next one, or undefined when
   * the error is final or the window has closed.
   */
  pause(error: unknown, now: number): number | undefined {
    if (!isRetryable(error)) return undefined;
    this.failed += 1;
    if (this.deadline !== undefined && now >= this.deadline) return undefined;
    let pause = this.#delay;
    if (this.deadline !== undefined) pause = Math.min(pause, this.deadline - now);
    this.#delay = Math.min(this.#delay * 2, MAX_DELAY);
    return Math.max(pause, 0);
  }
}

/**
 * How long an acquire is retried while no answer comes: until the wait
 * deadline and at least for the ttl; undefined for a wait without limit.
 */
export function retryWindow(ttl: number, waitMs: number | undefined): number | undefined {
  if (waitMs === undefined) return ttl;
  if (waitMs === 0) return undefined;
  return Math.max(ttl, waitMs);
}

/** The `WAIT` of an attempt sent at `now` when the first went at `firstSent`: what is left, >= 1 ms. */
export function waitMsLeft(
  waitMs: number | undefined,
  firstSent: number,
  now: number,
): number | undefined {
  if (waitMs === undefined || waitMs === 0) return waitMs;
  const left = Math.ceil(firstSent + waitMs - now);
  return Math.min(Math.max(left, 1), waitMs);
}

/** The request id of a handle's `n`-th operation (ids are kept per key and owner on the server). */
export function requestId(op: string, n: number): string {
  return `${op}-${n}`;
}
