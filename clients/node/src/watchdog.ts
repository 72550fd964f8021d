/**
 * The watchdog of one client: for each lease, a timer that sends its
 * `LOCK.RENEW` every `renewEvery` (renewals due in the same moment share one
 * write per node), and a timer for its local deadline (send time of the last
 * confirmed request + ttl - safety margin) that marks the lease lost when no
 * renewal was confirmed by then, also while a renewal hangs on a server that
 * does not answer, so that the application learns of the loss before the
 * server can grant the lock to anyone else. With the watchdog off the
 * deadline marks the lease expired. A renewal answered 0 marks it lost at
 * once. The timers do not keep the process alive (`unref`).
 */

import { ServerError } from "./errors.js";
import { type Lease, retryDelay } from "./lease.js";
import { type Key, renewArgs } from "./protocol.js";
import type { Transport } from "./transport.js";

/** What the watchdog needs of the transport. */
export type Renewer = Pick<Transport, "batch">;

/**
 * The longest delay a Node timer takes (about 24.8 days; a longer one fires
 * at once). A lease may last 30 days: its timers wake up early and look again.
 */
const MAX_TIMER = 2 ** 31 - 1;

/** A renewal may go out this fraction of its interval early, to share a write with others. */
const EARLY = 1 / 20;

/** One lease under the watchdog. */
export class Watched {
  failures = 0;
  /** When its renewal was last due. */
  due = 0;
  renewTimer: NodeJS.Timeout | undefined;
  deadlineTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly lease: Lease,
    readonly key: Key,
    readonly owner: string,
  ) {}

  /**
   * When the renewal after one sent at `sent` is due: a period after the last
   * one was due (a late renewal does not stretch the period), never later
   * than a period after the send, and at least half a period after it.
   */
  nextDue(sent: number): number {
    const every = this.lease.params.renewEvery;
    return Math.max(Math.min(this.due + every, sent + every), sent + every / 2);
  }
}

export class Watchdog {
  readonly #watched = new Map<Lease, Watched>();
  #pending: Watched[] = [];
  #closed = false;
  /** Renewals sent and answered 1 (for tests and the benchmark). */
  renewals = 0;

  constructor(readonly transport: Renewer) {}

  watch(w: Watched): void {
    if (this.#closed) return;
    this.#watched.set(w.lease, w);
    this.#armDeadline(w);
    if (w.lease.params.watchdog) this.#schedule(w, w.lease.confirmedAt + w.lease.params.renewEvery);
  }

  close(): void {
    this.#closed = true;
    for (const w of this.#watched.values()) {
      clearTimeout(w.renewTimer);
      clearTimeout(w.deadlineTimer);
    }
    this.#watched.clear();
  }

  /** A lease whose guards are all gone: its timers go at once. */
  forget(lease: Lease): void {
    const w = this.#watched.get(lease);
    if (w !== undefined) this.#drop(w);
  }

  #drop(w: Watched): void {
    clearTimeout(w.renewTimer);
    clearTimeout(w.deadlineTimer);
    if (this.#watched.get(w.lease) === w) this.#watched.delete(w.lease);
  }

  #armDeadline(w: Watched): void {
    clearTimeout(w.deadlineTimer);
    const delay = Math.max(w.lease.deadline - performance.now(), 0);
    w.deadlineTimer = setTimeout(() => this.#checkDeadline(w), Math.min(delay + 1, MAX_TIMER));
    w.deadlineTimer.unref();
  }

  #checkDeadline(w: Watched): void {
    const lease = w.lease;
    if (!lease.live) {
      this.#drop(w);
    } else if (lease.deadline > performance.now()) {
      this.#armDeadline(w); // confirmed since
    } else {
      lease.lose(lease.params.watchdog ? "unconfirmed" : "expired");
      this.#drop(w);
    }
  }

  #schedule(w: Watched, at: number): void {
    if (this.#closed) return;
    w.due = at;
    const early = at - w.lease.params.renewEvery * EARLY;
    clearTimeout(w.renewTimer);
    const delay = Math.max(early - performance.now(), 0);
    if (delay > MAX_TIMER) {
      w.renewTimer = setTimeout(() => this.#schedule(w, at), MAX_TIMER);
    } else {
      w.renewTimer = setTimeout(() => this.#due(w), delay);
    }
    w.renewTimer.unref();
  }

  /** Renewals that fall due in the same moment go out together. */
  #due(w: Watched): void {
    if (!w.lease.live) {
      this.#drop(w);
      return;
    }
    this.#pending.push(w);
    if (this.#pending.length === 1) {
      setImmediate(() => {
        const due = this.#pending;
        this.#pending = [];
        void this.#renew(due);
      });
    }
  }

  async #renew(due: Watched[]): Promise<void> {
    // The deadline counts from the moment the request is sent: the server
    // cannot start the renewed lease before receiving it.
    const sent = performance.now();
    // A reply is of use until the nearest local deadline, however late.
    const timeout = Math.min(...due.map((w) => w.lease.deadline)) - sent;
    let replies: unknown[];
    try {
      replies = await this.transport.batch(
        due.map((w) => [w.key, renewArgs(w.key, w.owner, w.lease.params.ttl)] as const),
        Math.max(timeout, 1),
      );
    } catch (e) {
      replies = due.map(() => e);
    }
    const now = performance.now();
    for (const [i, w] of due.entries()) {
      const lease = w.lease;
      if (!lease.live) {
        this.#drop(w);
        continue;
      }
      const reply = replies[i];
      if (reply === "1") {
        lease.confirm(sent);
        this.renewals += 1;
        w.failures = 0;
        this.#schedule(w, w.nextDue(sent));
      } else if (reply === "0" || (reply instanceof ServerError && reply.code === "WRONGTYPE")) {
        lease.lose("not-held");
        this.#drop(w);
      } else {
        w.failures += 1;
        this.#schedule(w, now + retryDelay(lease.params));
      }
    }
  }
}
