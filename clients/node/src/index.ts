/**
 * fencelock: the Node.js client for the fencelock Redis module (exclusive,
 * read/write and semaphore locks with fencing tokens, a watchdog, waiting in
 * the server's FIFO queue, exactly-once retries), over node-redis.
 */

import "./dispose.js";

export {
  type AcquireOptions,
  Client,
  type ClientOptions,
  Guard,
  Lock,
  MAX_PERMITS,
  ReadLock,
  RwLock,
  Semaphore,
  type SemaphoreAcquireOptions,
  WriteLock,
} from "./client.js";
export {
  ConnectionFailedError,
  FencelockError,
  InvalidOptionsError,
  LeaseLostError,
  type LostReason,
  ServerError,
  UnexpectedReplyError,
  UpgradeError,
  WrongKindError,
  WrongTypeError,
} from "./errors.js";
export type {
  Holder,
  KeyInfo,
  LockInfo,
  PermitHolder,
  SemaphoreInfo,
  SharedInfo,
} from "./info.js";
export type { NodeRedisClient, NodeRedisCluster } from "./transport.js";
