//! Baseline for scenario 8: a Redisson-style read/write lock (after the
//! public description of `RReadWriteLock`; no Redisson code).
//!
//! A lock is a hash: field `mode` = `read` or `write`, one field per owner
//! with its hold count (a writer's field is `owner:w`), and a `PEXPIRE`
//! lease on the hash. Every read hold also has a lease of its own, a
//! string `key:lease:owner:n` with `PX ttl`, and the hash lives as long as
//! the longest of them.
//!
//! - Read acquire grants when the hash is absent, in `read` mode, or in
//!   `write` mode held by the caller (downgrade) — whether or not a writer
//!   is waiting; otherwise it answers the hash's remaining ttl.
//! - Write acquire grants when the hash is absent (or re-enters the
//!   caller's own write hold); otherwise it answers the remaining ttl.
//! - Read release drops one hold and its lease key; while other holds
//!   remain, the hash's lease becomes the longest remaining read lease and
//!   nothing is announced; the last hold deletes the hash and publishes on
//!   the lock's channel.
//! - Write release drops one hold; the last one deletes the hash and
//!   publishes (or switches to `read` when the owner still holds reads).
//!
//! Waiters (readers and writers alike) use [`super::common::wait_on_channel`]:
//! try, subscribe, retry on every message or when the ttl the refusal gave
//! has passed. Nothing queues a writer, so readers that keep overlapping
//! keep the hash in `read` mode and the writer waits until they all stop.

use std::time::Duration;

use super::common::{Queue, Try};
use crate::resp::Reply;

/// KEYS[1] = lock hash, ARGV[1] = ttl ms, ARGV[2] = owner.
/// Returns nil when granted, else the hash's remaining ttl.
pub(super) const READ_ACQUIRE: &str = "\
local mode = redis.call('HGET', KEYS[1], 'mode')
if mode == 'write' and redis.call('HEXISTS', KEYS[1], ARGV[2] .. ':w') == 0 then
  return redis.call('PTTL', KEYS[1])
end
if not mode then
  redis.call('HSET', KEYS[1], 'mode', 'read')
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('SET', KEYS[1] .. ':lease:' .. ARGV[2] .. ':' .. n, 1, 'PX', ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return nil";

/// KEYS[1] = lock hash, KEYS[2] = channel, ARGV[1] = owner.
/// Returns nil when the caller holds no read lock, else its read holds left.
pub(super) const READ_RELEASE: &str = "\
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if n == nil then
  return nil
end
redis.call('DEL', KEYS[1] .. ':lease:' .. ARGV[1] .. ':' .. n)
if n > 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if redis.call('HLEN', KEYS[1]) > 1 then
  local longest = -1
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if fields[i] ~= 'mode' then
      for h = 1, tonumber(fields[i + 1]) do
        local left = redis.call('PTTL', KEYS[1] .. ':lease:' .. fields[i] .. ':' .. h)
        if left > longest then
          longest = left
        end
      end
    end
  end
  if longest > 0 then
    redis.call('PEXPIRE', KEYS[1], longest)
    return n - 1
  end
  if redis.call('HGET', KEYS[1], 'mode') == 'write' then
    return n - 1
  end
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], 'r')
return 0";

/// KEYS[1] = lock hash, ARGV[1] = ttl ms, ARGV[2] = owner.
/// Returns nil when granted, else the hash's remaining ttl.
pub(super) const WRITE_ACQUIRE: &str = "\
local me = ARGV[2] .. ':w'
local mode = redis.call('HGET', KEYS[1], 'mode')
if not mode then
  redis.call('HSET', KEYS[1], 'mode', 'write', me, 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return nil
end
if mode == 'write' and redis.call('HEXISTS', KEYS[1], me) == 1 then
  redis.call('HINCRBY', KEYS[1], me, 1)
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
  return nil
end
return redis.call('PTTL', KEYS[1])";

/// KEYS[1] = lock hash, KEYS[2] = channel, ARGV[1] = owner, ARGV[2] = ttl.
/// Returns nil when the caller does not hold the write lock, else its
/// write holds left.
pub(super) const WRITE_RELEASE: &str = "\
local me = ARGV[1] .. ':w'
if redis.call('HGET', KEYS[1], 'mode') ~= 'write' or redis.call('HEXISTS', KEYS[1], me) == 0 then
  return nil
end
local left = redis.call('HINCRBY', KEYS[1], me, -1)
if left > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return left
end
redis.call('HDEL', KEYS[1], me)
if redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'w')
else
  redis.call('HSET', KEYS[1], 'mode', 'read')
end
return 0";

/// The channel a lock's release is announced on.
pub(super) fn channel(key: &[u8]) -> Vec<u8> {
    let mut c = b"rwlock:".to_vec();
    c.extend_from_slice(key);
    c
}

/// Queues an acquire (read or write: the script decides).
pub(super) fn queue_acquire<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, ttl_ms, owner]);
}

/// Queues a release (read or write: the script decides).
pub(super) fn queue_release<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    let ch = channel(key);
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"2", key, &ch, owner, ttl_ms]);
}

/// An acquire reply: nil = granted, an integer = the remaining ttl (a
/// negative one, no ttl: wait for a message only).
pub(super) fn parse_acquire(r: &Reply) -> Option<Try> {
    match r {
        Reply::Nil => Some(Try::Granted),
        Reply::Int(ttl) => Some(Try::Busy(
            u64::try_from(*ttl).ok().map(Duration::from_millis),
        )),
        _ => None,
    }
}
