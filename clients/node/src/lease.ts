/**
 * One lease as the client knows it, and the options that fix it. Pure
 * bookkeeping, no I/O.
 *
 * The server keeps one lease per key and owner, whatever the owner holds
 * there: every guard of one handle (exclusive, shared, or some permits)
 * joins the handle's one lease, and one renewal renews them all.
 *
 * Why the local deadline is safe: every request that refreshes a lease
 * (acquire, re-entry, renewal) carries the lease's one fixed ttl, and the
 * server starts the new lease when it processes the request, which is after
 * the client *sent* it. So after a confirmed request sent at `s` the server
 * holds the lease at least until `s + ttl` on its clock, and the local
 * deadline `s + ttl - margin` comes before that. Times here are
 * `performance.now()` milliseconds (monotonic).
 */

import { InvalidOptionsError, LeaseLostError, type LostReason } from "./errors.js";

/** The largest ttl and wait the module accepts: 30 days, in milliseconds. */
export const MAX_MS = 2_592_000_000;

/** What one guard stands for on the server. */
export type Hold = "exclusive" | "shared" | "permits";

/** The fixed parameters of one lease (checked), in milliseconds. */
export interface LeaseParams {
  readonly ttl: number;
  readonly watchdog: boolean;
  readonly renewEvery: number;
  readonly safetyMargin: number;
}

/** How long after a confirmed request was *sent* the client stops counting on the lease. */
export function confirmedFor(p: LeaseParams): number {
  return p.ttl - p.safetyMargin;
}

/**
 * The watchdog's pause after a failed renewal: several tries before the
 * deadline, but no spinning on a refused connection.
 */
export function retryDelay(p: LeaseParams): number {
  return Math.min(Math.max(p.renewEvery / 3, 10), p.renewEvery);
}

function isNumber(v: unknown): v is number {
  return typeof v === "number" && !Number.isNaN(v);
}

/**
 * Checks an acquire's options and computes the lease's parameters
 * (defaults: renewal every ttl/3, safety margin ttl/10).
 */
export function leaseParams(
  ttl: number,
  watchdog: boolean,
  renewEvery: number | undefined,
  safetyMargin: number | undefined,
): LeaseParams {
  if (!isNumber(ttl) || !Number.isFinite(ttl)) {
    throw new InvalidOptionsError("ttl must be a number of milliseconds");
  }
  const ttlMs = ttl > 0 ? Math.ceil(ttl) : 0;
  if (ttlMs < 1 || ttlMs > MAX_MS) {
    throw new InvalidOptionsError("ttl must be between 1 ms and 30 days");
  }
  const margin = safetyMargin ?? ttlMs / 10;
  if (!isNumber(margin) || margin < 0 || margin >= ttlMs) {
    throw new InvalidOptionsError("safetyMargin must be at least 0 and shorter than the ttl");
  }
  const every = renewEvery ?? ttlMs / 3;
  if (!isNumber(every) || !(every > 0)) {
    throw new InvalidOptionsError("renewEvery must be positive");
  }
  if (every >= ttlMs - margin) {
    throw new InvalidOptionsError("renewEvery must be shorter than ttl minus the safety margin");
  }
  return { ttl: ttlMs, watchdog, renewEvery: every, safetyMargin: margin };
}

/**
 * `LOCK.ACQUIRE`'s `WAIT` argument: `undefined` for no wait (`wait`
 * undefined or 0), `0` for no limit (`Infinity`), else whole ms, at least 1
 * (0 would mean no limit to the server).
 */
export function waitMs(wait: number | undefined): number | undefined {
  if (wait === undefined) return undefined;
  if (!isNumber(wait) || wait < 0) {
    throw new InvalidOptionsError("wait must be undefined, milliseconds >= 0, or Infinity");
  }
  if (wait === 0) return undefined;
  if (wait === Number.POSITIVE_INFINITY) return 0;
  const ms = Math.ceil(wait);
  if (ms > MAX_MS) throw new InvalidOptionsError("wait must be at most 30 days (or Infinity)");
  return Math.max(ms, 1);
}

/** What {@link Lease.detach} found. */
export interface Detached {
  /** This was the last guard: the lease has ended. */
  readonly last: boolean;
  /** The lease had been lost: nothing must be sent for it. */
  readonly lost: boolean;
  /**
   * The `COUNT` to release now: the guard's own holds or permits, plus the
   * shared holds owed when this was the last exclusive guard; 0 when its
   * release is put off (a shared hold under a live exclusive one).
   */
  readonly count: number;
}

/** A lease shared by the guards of one handle. */
export class Lease {
  #guards = 1;
  #exclusive: number;
  #owed = 0;
  #deadline: number;
  #confirmedAt: number;
  #ended = false;
  #lost: LostReason | undefined;
  readonly #controller = new AbortController();

  constructor(
    readonly token: bigint,
    readonly params: LeaseParams,
    hold: Hold,
    sent: number,
  ) {
    this.#exclusive = hold === "exclusive" ? 1 : 0;
    this.#deadline = sent + confirmedFor(params);
    this.#confirmedAt = sent;
  }

  /** Aborts (with a {@link LeaseLostError}) once the lease is known lost; never when it ends first. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Held as far as the client knows: neither lost nor ended. */
  get live(): boolean {
    return !this.#ended && this.#lost === undefined;
  }

  get lost(): LostReason | undefined {
    return this.#lost;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The local deadline. */
  get deadline(): number {
    return this.#deadline;
  }

  /** The send time of the request that last confirmed the lease. */
  get confirmedAt(): number {
    return this.#confirmedAt;
  }

  /** Milliseconds from `now` the lease is still known held; 0 once lost or ended. */
  remaining(now: number): number {
    return this.live ? Math.max(0, this.#deadline - now) : 0;
  }

  /**
   * A request sent at `sent` was confirmed: moves the deadline forward
   * (never back: a late reply to an older request must not shorten it).
   */
  confirm(sent: number): void {
    if (!this.live) return;
    const deadline = sent + confirmedFor(this.params);
    if (deadline > this.#deadline) {
      this.#deadline = deadline;
      this.#confirmedAt = sent;
    }
  }

  /**
   * Another guard (a re-entry confirmed by a request sent at `sent`) joins
   * the lease. False when the lease is no longer live (the caller starts a
   * new one).
   */
  attach(hold: Hold, sent: number): boolean {
    if (!this.live) return false;
    this.#guards += 1;
    if (hold === "exclusive") this.#exclusive += 1;
    this.confirm(sent);
    return true;
  }

  /**
   * Marks the lease lost and aborts its signal. The first reason wins; a
   * lease whose guards are all gone ended, it is not lost. Returns whether
   * this call marked it.
   */
  lose(reason: LostReason): boolean {
    if (!this.live) return false;
    this.#lost = reason;
    this.#controller.abort(new LeaseLostError(reason));
    return true;
  }

  /**
   * The guard standing for `hold` goes away; the last one ends the lease
   * (its watchdog stops renewing it before any release is sent).
   *
   * The server releases an owner's exclusive holds before its shared ones.
   * So a shared guard that goes while an exclusive guard of the lease lives
   * must not release anything yet (that would end the write lock under the
   * live exclusive guard): its hold is owed, and the last exclusive guard
   * releases it with its own. (The exclusive guard going first is the
   * downgrade: the shared holds stay.)
   */
  detach(hold: Hold, permits: number): Detached {
    this.#guards = Math.max(0, this.#guards - 1);
    let count: number;
    if (hold === "exclusive") {
      this.#exclusive = Math.max(0, this.#exclusive - 1);
      if (this.#exclusive === 0) {
        count = 1 + this.#owed;
        this.#owed = 0;
      } else {
        count = 1;
      }
    } else if (hold === "shared") {
      if (this.#exclusive > 0) {
        this.#owed += 1;
        count = 0;
      } else {
        count = 1;
      }
    } else {
      count = permits;
    }
    const last = this.#guards === 0;
    if (last) this.#ended = true;
    return { last, lost: this.#lost !== undefined, count };
  }
}
