/**
 * The client and its handles: {@link Client} (one random UUID, one
 * watchdog), {@link Lock}, {@link RwLock} (its {@link ReadLock} and
 * {@link WriteLock} sides) and {@link Semaphore}, and the {@link Guard} an
 * acquire resolves to.
 *
 * A handle is one owner on the server (`<uuid>:<n>`): acquiring again
 * through it re-enters, and all its guards share one lease (one token, one
 * renewal, one `signal`). Its acquires run one at a time, so that a
 * re-entry always knows the lease it joins; its releases, and the
 * bookkeeping of an acquire once its reply is in, also run one at a time
 * (`ops`), so that the handle always knows which of the owner's holds on the
 * server belong to which lease. An acquire waiting on the server does not
 * hold `ops`: the handle's guards can still release (a semaphore waiter may
 * need exactly those permits back).
 */

import "./dispose.js";
import { randomUUID } from "node:crypto";
import {
  ConnectionFailedError,
  FencelockError,
  InvalidOptionsError,
  type LostReason,
  ServerError,
  UpgradeError,
  WrongKindError,
} from "./errors.js";
import { heldBy, type KeyInfo, type LockInfo, parseKeyInfo, type SemaphoreInfo } from "./info.js";
import { type Detached, type Hold, Lease, type LeaseParams, leaseParams, waitMs } from "./lease.js";
import * as proto from "./protocol.js";
import { type NodeRedisClient, type NodeRedisCluster, Transport } from "./transport.js";
import { Watchdog, Watched } from "./watchdog.js";

/** A semaphore has at most this many permits. */
export const MAX_PERMITS = 1_000_000;

/** The options of an acquire. Times are milliseconds. */
export interface AcquireOptions {
  /** The lease's length on the server (default 30 000). The watchdog renews it for as long as the guard is held. */
  ttl?: number;
  /**
   * How long to wait in the server's FIFO queue when someone else holds it:
   * undefined or 0 (default) tries once; `Infinity` waits without limit.
   */
  wait?: number;
  /** Renew the lease until released (default true); off: it expires after `ttl`. */
  watchdog?: boolean;
  /** How often the watchdog renews (default ttl/3). */
  renewEvery?: number;
  /** How long before the server could expire it the guard counts it lost (default ttl/10). */
  safetyMargin?: number;
  /** Cancels a waiting acquire: it rejects with the signal's reason and leaves the server's queue. */
  signal?: AbortSignal;
  /** Called once when the lease is lost, with the reason (the guard's `signal` aborts too). */
  onLost?: (reason: LostReason) => void;
}

/** A semaphore's acquire also takes `count`, the permits to take (default 1). */
export interface SemaphoreAcquireOptions extends AcquireOptions {
  count?: number;
}

export interface ClientOptions {
  /** How long a reply to a request that does not block may take before it is sent again (ms, default 2000). */
  responseTimeout?: number;
}

/** A tiny FIFO async mutex. */
class Mutex {
  #tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.#tail;
    let unlock!: () => void;
    this.#tail = new Promise((r) => {
      unlock = r;
    });
    await before;
    try {
      return await fn();
    } finally {
      unlock();
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A connection failure as the error the caller sees; server errors as they are. */
function giveUp(error: unknown): unknown {
  if (error instanceof proto.ConnectionError) {
    return new ConnectionFailedError(`no answer from the server: ${error.message}`, {
      cause: error,
    });
  }
  return error;
}

/** What the server said to a release, after its retries. */
export interface Released {
  /** What the owner still holds; null when it held nothing. */
  readonly remaining: number | null;
  /** The answer came to a retry: a first attempt may have been applied. */
  readonly retried: boolean;
  /** When the first attempt was sent. */
  readonly firstSent: number;
}

/**
 * The reply to a guard's release (`last`: it was the lease's last guard):
 * whether the guard still held it, and the leftover holds the handle should
 * clear (0: none). Marks the lease lost where the reply says it is gone.
 * (Exported for the unit tests; not part of the package's API.)
 */
export function releaseOutcome(
  lease: Lease,
  last: boolean,
  released: Released,
): { held: boolean; clear: number } {
  if (released.remaining === null) {
    if (released.retried && last && released.firstSent < lease.deadline) {
      // The reply to an earlier attempt was lost, and that attempt released
      // the owner's last hold: the server keeps no record once the owner
      // holds nothing, so the retry is answered as a release of nothing. The
      // first attempt was sent while the lease was known held.
      return { held: true, clear: 0 };
    }
    lease.lose("not-held");
    return { held: false, clear: 0 };
  }
  if (last) return { held: true, clear: released.remaining };
  // The server counted fewer holds than this lease has guards (someone else
  // used the owner string): the lock is free now.
  if (released.remaining === 0) lease.lose("not-held");
  return { held: true, clear: 0 };
}

/** A handle's identity, lease bookkeeping and requests. */
class Handle {
  /** An acquire has been sent and its grant is not yet recorded (see `mayClearLeftovers`). */
  inFlight = false;
  #current: Lease | undefined;
  #requests = 0;
  readonly acquiring = new Mutex();
  readonly ops = new Mutex();

  constructor(
    readonly client: Client,
    readonly key: proto.Key,
    readonly owner: string,
  ) {}

  get transport(): Transport {
    return this.client.transport;
  }

  nextId(op: string): string {
    this.#requests += 1;
    return proto.requestId(op, this.#requests);
  }

  liveLease(): Lease | undefined {
    return this.#current?.live ? this.#current : undefined;
  }

  /**
   * Records a grant confirmed by a request sent at `sent`: a re-entry joins
   * the live lease (same token); anything else starts a new lease (a
   * different token means the old one ended on the server). Returns the
   * lease and whether it is new (it then needs its watchdog).
   */
  recordGrant(token: bigint, params: LeaseParams, hold: Hold, sent: number): [Lease, boolean] {
    const current = this.liveLease();
    if (current !== undefined) {
      if (current.token === token && current.attach(hold, sent)) return [current, false];
      if (current.token !== token) current.lose("not-held");
    }
    const lease = new Lease(token, params, hold, sent);
    this.#current = lease;
    return [lease, true];
  }

  /**
   * After the handle's last live guard released, the owner may still hold
   * things on the server that no guard stands for: grants whose reply was
   * lost (a failed or cancelled acquire), or holds of a lease the client gave
   * up as lost while the server still had it. They are the handle's to clear,
   * unless a newer lease of the handle is live or an acquire is in flight.
   */
  mayClearLeftovers(remaining: number): boolean {
    return remaining > 0 && this.liveLease() === undefined && !this.inFlight;
  }

  async call(args: proto.Args): Promise<unknown> {
    try {
      return await this.transport.call(this.key, args);
    } catch (e) {
      throw giveUp(e);
    }
  }

  async acquire(request: proto.Request, opts: AcquireOptions): Promise<Guard | null> {
    if (this.client.closed) throw new FencelockError("the client is closed");
    const fresh = leaseParams(
      opts.ttl ?? 30_000,
      opts.watchdog ?? true,
      opts.renewEvery,
      opts.safetyMargin,
    );
    const w = waitMs(opts.wait);
    opts.signal?.throwIfAborted();
    return this.acquiring.run(async () => {
      const held = this.liveLease();
      const params = held?.params ?? fresh;
      this.inFlight = true;
      let token: bigint | null;
      let firstSent: number;
      try {
        [token, firstSent] = await this.#sendAcquire(request, params, w, opts.signal);
      } catch (e) {
        this.inFlight = false;
        throw e;
      }
      return this.ops.run(async () => {
        this.inFlight = false;
        if (token === null) {
          if (request.hold !== "permits") this.liveLease()?.lose("not-held");
          return null;
        }
        const [sent, gone] = await this.#confirmAfterWait(params, w, firstSent);
        const [lease, started] = this.recordGrant(token, params, request.hold, sent);
        if (started) this.client.watchdog.watch(new Watched(lease, this.key, this.owner));
        if (gone) lease.lose("not-held");
        const onLost = opts.onLost;
        if (onLost !== undefined) {
          const call = () => {
            try {
              onLost(lease.lost ?? "not-held");
            } catch {
              // a listener's failure must not break the watchdog
            }
          };
          if (lease.signal.aborted) queueMicrotask(call);
          else lease.signal.addEventListener("abort", call, { once: true });
        }
        return new Guard(this, lease, request);
      });
    });
  }

  async #sendAcquire(
    request: proto.Request,
    params: LeaseParams,
    w: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<[bigint | null, number]> {
    const rid = this.nextId("acquire");
    const retries = new proto.Retries(proto.retryWindow(params.ttl, w), performance.now());
    for (;;) {
      const left = proto.waitMsLeft(w, retries.firstSent, performance.now());
      const args = proto.acquireArgs(this.key, this.owner, params.ttl, request, left, rid);
      let error: unknown;
      try {
        const reply = await this.transport.call(
          this.key,
          args,
          w === undefined
            ? undefined
            : {
                timeout:
                  left === 0 || left === undefined ? undefined : left + this.client.responseTimeout,
                signal,
              },
        );
        return [proto.token(reply), retries.firstSent];
      } catch (e) {
        if (signal?.aborted && e === signal.reason) throw e;
        if (e instanceof ServerError && proto.isUpgrade(e)) throw new UpgradeError(e.message);
        error = e;
      }
      const pause = retries.pause(error, performance.now());
      if (pause === undefined) throw giveUp(error);
      await sleep(pause, signal);
    }
  }

  /**
   * A grant that came after a long wait was confirmed by a request sent
   * long ago: one renewal confirms it now (or finds it gone).
   */
  async #confirmAfterWait(
    params: LeaseParams,
    w: number | undefined,
    firstSent: number,
  ): Promise<[number, boolean]> {
    if (w === undefined || performance.now() < firstSent + params.renewEvery) {
      return [firstSent, false];
    }
    const sent = performance.now();
    try {
      return (await this.renewOnce(params.ttl)) ? [sent, false] : [firstSent, true];
    } catch {
      return [firstSent, false];
    }
  }

  async renewOnce(ttl: number): Promise<boolean> {
    try {
      return proto.flag(
        "LOCK.RENEW",
        await this.transport.call(this.key, proto.renewArgs(this.key, this.owner, ttl)),
      );
    } catch (e) {
      if (e instanceof ServerError && e.code === "WRONGTYPE") return false;
      throw e;
    }
  }

  async #releaseCmd(count: number, window: number): Promise<Released> {
    const rid = this.nextId("release");
    const retries = new proto.Retries(window, performance.now());
    const args = proto.releaseArgs(this.key, this.owner, count, rid);
    for (;;) {
      try {
        const reply = await this.transport.call(this.key, args);
        return {
          remaining: proto.remaining(reply),
          retried: retries.retried,
          firstSent: retries.firstSent,
        };
      } catch (e) {
        const pause = retries.pause(e, performance.now());
        if (pause === undefined) throw giveUp(e);
        await sleep(pause);
      }
    }
  }

  finishRelease(lease: Lease, detached: Detached): Promise<boolean> {
    if (detached.count === 0) return Promise.resolve(true);
    return this.ops.run(async () => {
      if (lease.lost !== undefined) return false;
      const window = lease.params.ttl;
      let released: Released;
      try {
        released = await this.#releaseCmd(detached.count, window);
      } catch (e) {
        const held = e instanceof ServerError ? proto.heldInOverCount(e) : undefined;
        if (held !== undefined) {
          lease.lose("not-held");
          if (detached.last) await this.#clearLeftovers(held, window);
        }
        throw e;
      }
      const outcome = releaseOutcome(lease, detached.last, released);
      if (outcome.clear) await this.#clearLeftovers(outcome.clear, window);
      return outcome.held;
    });
  }

  async #clearLeftovers(remaining: number, window: number): Promise<void> {
    if (!this.mayClearLeftovers(remaining)) return;
    try {
      await this.#releaseCmd(remaining, window);
    } catch {
      // they expire after the ttl
    }
  }

  async info(): Promise<KeyInfo | null> {
    return parseKeyInfo(await this.call(proto.infoArgs(this.key)));
  }

  async forceRelease(owner: string | undefined): Promise<boolean> {
    const held = owner === undefined || owner === this.owner ? this.liveLease() : undefined;
    const removed = proto.flag(
      "LOCK.FORCERELEASE",
      await this.call(proto.forceReleaseArgs(this.key, owner)),
    );
    held?.lose("not-held");
    return removed;
  }
}

/** What a dropped guard leaves for the finalizer: enough to release it in the background. */
interface Dropped {
  readonly handle: Handle;
  readonly cell: Lease[];
  readonly request: proto.Request;
}

const finalizer = new FinalizationRegistry<Dropped>(({ handle, cell, request }) => {
  const lease = cell.pop();
  if (lease === undefined || handle.client.closed) return;
  const detached = lease.detach(request.hold, proto.releaseCount(request));
  if (detached.last) handle.client.watchdog.forget(lease);
  if (!detached.lost) void handle.finishRelease(lease, detached).catch(() => {});
});

/**
 * A granted lock. `token` is the fencing token; `signal` aborts (with a
 * `LeaseLostError` whose `reason` says why) as soon as the lease is known
 * lost; `remaining()` is the time to the local deadline; `release()` gives
 * back exactly what the guard stands for. `await using` releases it at the
 * end of the block. A guard that is garbage-collected without a release is
 * released in the background.
 */
export class Guard implements AsyncDisposable {
  /** The fencing token: pass it with every write the lock protects. */
  readonly token: bigint;
  readonly #handle: Handle;
  readonly #lease: Lease;
  readonly #request: proto.Request;
  readonly #cell: Lease[];

  /** @internal */
  constructor(handle: Handle, lease: Lease, request: proto.Request) {
    this.#handle = handle;
    this.#lease = lease;
    this.#request = request;
    this.token = lease.token;
    this.#cell = [lease];
    finalizer.register(this, { handle, cell: this.#cell, request }, this);
  }

  get key(): proto.Key {
    return this.#handle.key;
  }

  get owner(): string {
    return this.#handle.owner;
  }

  /** The holds or permits this guard stands for. */
  get permits(): number {
    return proto.releaseCount(this.#request);
  }

  /** Aborts when the lease is known lost (`signal.reason` is a `LeaseLostError`); never when released first. */
  get signal(): AbortSignal {
    return this.#lease.signal;
  }

  /** Why the lease was lost, if it was. */
  get lostReason(): LostReason | undefined {
    return this.#lease.lost;
  }

  /** Milliseconds the lease is still known held (to the local deadline), without asking the server; 0 once lost or released. */
  remaining(): number {
    return this.#cell.length === 0 ? 0 : this.#lease.remaining(performance.now());
  }

  /**
   * Gives back what the guard stands for. Resolves to true if it was still
   * held; a lost guard sends nothing (false), and so does a second release.
   */
  async release(): Promise<boolean> {
    const lease = this.#cell.pop();
    if (lease === undefined) return false;
    finalizer.unregister(this);
    const detached = lease.detach(this.#request.hold, proto.releaseCount(this.#request));
    if (detached.last) this.#handle.client.watchdog.forget(lease);
    if (detached.lost) return false;
    return this.#handle.finishRelease(lease, detached);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

function checkedPermits(permits: number): number {
  if (!Number.isInteger(permits) || permits < 1 || permits > MAX_PERMITS) {
    throw new InvalidOptionsError("a semaphore has 1 to 1000000 permits");
  }
  return permits;
}

/**
 * A lock client over node-redis (`createClient(...)` or `createCluster(...)`):
 * one random UUID, one watchdog, and the handles taken from it. It opens
 * connections of its own with the given client's options (the given client
 * itself is not used and need not be connected). `close()` (or
 * `await using`) closes them; held leases then expire after their ttl.
 */
export class Client implements AsyncDisposable {
  readonly id = randomUUID();
  readonly responseTimeout: number;
  /** @internal */
  readonly transport: Transport;
  /** @internal */
  readonly watchdog: Watchdog;
  #handles = 0;
  #closed = false;

  constructor(redis: NodeRedisClient | NodeRedisCluster, options: ClientOptions = {}) {
    this.responseTimeout = options.responseTimeout ?? proto.DEFAULT_RESPONSE_TIMEOUT;
    if (!(this.responseTimeout > 0))
      throw new InvalidOptionsError("responseTimeout must be positive");
    this.transport = new Transport(redis, this.responseTimeout);
    this.watchdog = new Watchdog(this.transport);
  }

  #owner(): string {
    this.#handles += 1;
    return `${this.id}:${this.#handles}`;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Renewals answered 1 so far. */
  get renewals(): number {
    return this.watchdog.renewals;
  }

  /** An exclusive lock handle (one owner: acquiring again through it re-enters). */
  lock(key: proto.Key): Lock {
    return new Lock(new Handle(this, key, this.#owner()));
  }

  /** A read/write lock handle: `.read()` and `.write()` share one owner. */
  rwLock(key: proto.Key): RwLock {
    return new RwLock(new Handle(this, key, this.#owner()));
  }

  /** A semaphore of `permits` (every handle on the key must agree). */
  semaphore(key: proto.Key, permits: number): Semaphore {
    return new Semaphore(new Handle(this, key, this.#owner()), checkedPermits(permits));
  }

  /** Stops the watchdog and closes the connections. */
  close(): void {
    this.#closed = true;
    this.watchdog.close();
    this.transport.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** What every handle shows: its key and owner, the server's view, force-release. */
abstract class HandleView {
  /** @internal */
  constructor(protected readonly h: Handle) {}

  get key(): proto.Key {
    return this.h.key;
  }

  /** The owner string this handle acquires as (`<uuid>:<n>`). */
  get owner(): string {
    return this.h.owner;
  }

  async isLocked(): Promise<boolean> {
    return (await this.h.info()) !== null;
  }

  /** `LOCK.FORCERELEASE key` (administrative): this handle's guards are lost at once, another holder's at its next renewal. */
  forceRelease(): Promise<boolean> {
    return this.h.forceRelease(undefined);
  }
}

/** An exclusive lock handle. */
export class Lock extends HandleView {
  /** The guard when granted, `null` when not (after the wait). */
  acquire(options: AcquireOptions = {}): Promise<Guard | null> {
    return this.h.acquire({ hold: "exclusive", limit: 0, count: 1 }, options);
  }

  async info(): Promise<LockInfo | null> {
    const info = await this.h.info();
    if (info === null || info.mode === "exclusive") return info;
    throw new WrongKindError(info.mode);
  }

  /** This handle's holds on the server. */
  async holdCount(): Promise<number> {
    return heldBy(await this.h.info(), this.h.owner);
  }
}

/** A read/write lock handle. */
export class RwLock extends HandleView {
  read(): ReadLock {
    return new ReadLock(this.h, "shared");
  }

  write(): WriteLock {
    return new WriteLock(this.h, "exclusive");
  }

  info(): Promise<KeyInfo | null> {
    return this.h.info();
  }

  async holdCount(): Promise<number> {
    return heldBy(await this.h.info(), this.h.owner);
  }

  /** `LOCK.FORCERELEASE key owner`: evicts one owner (a dead reader). */
  forceReleaseOwner(owner: string): Promise<boolean> {
    return this.h.forceRelease(owner);
  }
}

class Side {
  /** @internal */
  constructor(
    private readonly h: Handle,
    private readonly hold: Hold,
  ) {}

  get owner(): string {
    return this.h.owner;
  }

  acquire(options: AcquireOptions = {}): Promise<Guard | null> {
    return this.h.acquire({ hold: this.hold, limit: 0, count: 1 }, options);
  }
}

/** The read side of an {@link RwLock}. */
export class ReadLock extends Side {}

/** The write side of an {@link RwLock}. */
export class WriteLock extends Side {}

/** A semaphore handle. */
export class Semaphore extends HandleView {
  /** @internal */
  constructor(
    h: Handle,
    readonly permits: number,
  ) {
    super(h);
  }

  /** Takes `count` permits (default 1); the guard gives back exactly those. */
  acquire(options: SemaphoreAcquireOptions = {}): Promise<Guard | null> {
    const count = options.count ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > this.permits) {
      return Promise.reject(
        new InvalidOptionsError("a semaphore acquire takes 1 to all of its permits"),
      );
    }
    return this.h.acquire({ hold: "permits", limit: this.permits, count }, options);
  }

  async info(): Promise<SemaphoreInfo | null> {
    const info = await this.h.info();
    if (info === null || info.mode === "semaphore") return info;
    throw new WrongKindError(info.mode);
  }

  /** Permits nobody holds. */
  async available(): Promise<number> {
    return (await this.info())?.available ?? this.permits;
  }

  /** This handle's permits on the server. */
  async held(): Promise<number> {
    return heldBy(await this.info(), this.h.owner);
  }

  forceReleaseOwner(owner: string): Promise<boolean> {
    return this.h.forceRelease(owner);
  }
}
