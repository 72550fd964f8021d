/**
 * The errors of the package. A lock that someone else holds is not an
 * error: `acquire()` resolves to `null`. Everything here extends
 * {@link FencelockError}.
 */

import { inspect } from "node:util";

/** Base class of every error this package throws. */
export class FencelockError extends Error {
  override name = "FencelockError";
}

/**
 * The options cannot be sent as they are (a ttl below 1 ms, a renewal
 * interval that leaves no time before the local deadline, a semaphore count
 * out of range, ...).
 */
export class InvalidOptionsError extends FencelockError {
  override name = "InvalidOptionsError";
}

/**
 * The server answered with an error. `message` is the server's message with
 * its code (`ERR ...`, `WRONGTYPE ...`); `code` is its first word. Nothing
 * changed on the server.
 */
export class ServerError extends FencelockError {
  override name = "ServerError";
  readonly code: string;

  constructor(message: string) {
    super(message);
    const first = message.split(" ", 1)[0] ?? "";
    this.code = /^[A-Z]+$/.test(first) ? first : "ERR";
  }

  /** The server's error reply as a `ServerError` (`WrongTypeError` for `WRONGTYPE`). */
  static of(message: string): ServerError {
    return message.startsWith("WRONGTYPE") ? new WrongTypeError(message) : new ServerError(message);
  }
}

/**
 * `WRONGTYPE`: the key holds another kind of lock (a semaphore of other
 * permits, a read/write lock where a semaphore was asked for) or another
 * Redis type.
 */
export class WrongTypeError extends ServerError {
  override name = "WrongTypeError";
}

/**
 * The write side of a read/write lock was asked for while its handle holds
 * the lock shared only. The server refuses upgrades (two readers upgrading
 * at once would wait for each other forever); nothing changed: release the
 * read guards first. The message is the server's.
 */
export class UpgradeError extends FencelockError {
  override name = "UpgradeError";
}

/** The key holds another kind of lock than the call reads (`Lock.info()` on a key held shared). */
export class WrongKindError extends FencelockError {
  override name = "WrongKindError";
  constructor(readonly found: string) {
    super(`the key holds a lock of another kind (${found})`);
  }
}

/**
 * No answer came (connection error or timeout) before the operation's retry
 * window closed. From an acquire the outcome is unknown: the lock may have
 * been granted; nothing renews such a grant, so it expires after its ttl
 * (and the handle's next final release clears it). `cause` is the last
 * connection error.
 */
export class ConnectionFailedError extends FencelockError {
  override name = "ConnectionFailedError";
}

/** The server answered something the command interface does not allow. */
export class UnexpectedReplyError extends FencelockError {
  override name = "UnexpectedReplyError";
  constructor(
    readonly command: string,
    readonly reply: unknown,
  ) {
    super(`unexpected reply to ${command}: ${inspect(reply)}`);
  }
}

/** Why a lease is known to be lost (see {@link LeaseLostError}). */
export type LostReason = "not-held" | "unconfirmed" | "expired";

const REASONS: Record<LostReason, string> = {
  "not-held": "the server says the lock is no longer held by this owner",
  unconfirmed: "no renewal was confirmed before the local deadline",
  expired: "the lease ran out (watchdog off)",
};

/**
 * The reason a guard's `signal` aborts with. `reason` is:
 * - `"not-held"`: the server said this owner does not hold the lock (a
 *   renewal answered 0, or a re-entry found it gone): it expired, was
 *   force-released or deleted, and may belong to someone else now;
 * - `"unconfirmed"`: no renewal was confirmed before the local deadline
 *   (send time of the last confirmed request + ttl - safety margin); the
 *   server may still hold it for a moment, but it expires there before
 *   anyone else can be granted the lock;
 * - `"expired"`: the watchdog is off and the ttl ran out.
 */
export class LeaseLostError extends FencelockError {
  override name = "LeaseLostError";
  constructor(readonly reason: LostReason) {
    super(`lease lost: ${REASONS[reason]}`);
  }
}
