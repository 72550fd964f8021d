//! Baseline for scenario 9: a Redisson-style permit-expirable semaphore
//! (after the public description of `RPermitExpirableSemaphore`; no
//! Redisson code).
//!
//! A semaphore is two keys and a channel: a counter of free permits
//! (`key`, set to the number of permits when the run starts), and a sorted
//! set of the permits handed out (`key:timeout`), member = the permit's id
//! (fresh per acquisition), score = when its lease ends (Unix ms, computed
//! by the client, as Redisson does).
//!
//! - Acquire (one permit) first reclaims the leases that have run out
//!   (members scored ≤ now go back to the counter, announced on the
//!   channel), then grants when the counter is positive: decrement, add the
//!   id with its expiry. Refused, it answers the earliest expiry among the
//!   permits handed out (when a permit expires the waiter may take it).
//! - Release removes the id; when it was there, increments the counter and
//!   publishes the number of free permits.
//!
//! Waiters use [`super::common::wait_on_channel`]: try, subscribe, retry on
//! every message (every release is announced to every waiter) or at the
//! earliest expiry. Nothing orders the waiters: whoever's try arrives
//! first after a release takes the permit.

use std::time::Duration;

use super::common::{Queue, Try};
use crate::resp::Reply;

/// KEYS[1] = counter, KEYS[2] = permits zset, KEYS[3] = channel;
/// ARGV[1] = permit id, ARGV[2] = its expiry (Unix ms), ARGV[3] = now
/// (Unix ms). Returns `OK` when granted, else the earliest expiry of a
/// permit handed out (nil when there is none).
pub(super) const ACQUIRE: &str = "\
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if #expired > 0 then
  redis.call('ZREM', KEYS[2], unpack(expired))
  redis.call('PUBLISH', KEYS[3], redis.call('INCRBY', KEYS[1], #expired))
end
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return redis.status_reply('OK')
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  return tonumber(first[2])
end
return nil";

/// KEYS[1] = counter, KEYS[2] = permits zset, KEYS[3] = channel;
/// ARGV[1] = permit id. Returns nil when the permit was not held, else 0
/// (permits the caller still holds under this id).
pub(super) const RELEASE: &str = "\
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return nil
end
redis.call('PUBLISH', KEYS[3], redis.call('INCR', KEYS[1]))
return 0";

/// The sorted set of permits handed out.
fn permits_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(b":timeout");
    k
}

/// The channel releases are announced on.
pub(super) fn channel(key: &[u8]) -> Vec<u8> {
    let mut c = b"semaphore:".to_vec();
    c.extend_from_slice(key);
    c
}

/// Queues one try for permit `id` with a lease of `ttl_ms`, at `now_ms`.
pub(super) fn queue_acquire<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    id: &[u8],
    ttl_ms: u64,
    now_ms: u64,
) {
    let (zset, ch) = (permits_key(key), channel(key));
    let expiry = (now_ms + ttl_ms).to_string();
    let now = now_ms.to_string();
    c.queue(&[
        b"EVALSHA",
        sha.as_bytes(),
        b"3",
        key,
        &zset,
        &ch,
        id,
        expiry.as_bytes(),
        now.as_bytes(),
    ]);
}

/// Queues the release of permit `id`.
pub(super) fn queue_release<Q: Queue + ?Sized>(c: &mut Q, sha: &str, key: &[u8], id: &[u8]) {
    let (zset, ch) = (permits_key(key), channel(key));
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"3", key, &zset, &ch, id]);
}

/// An acquire reply, read at `now_ms`: `OK` = granted; an expiry = retry
/// at the latest then; nil = wait for a message.
pub(super) fn parse_acquire(r: &Reply, now_ms: u64) -> Option<Try> {
    match r {
        Reply::Status(s) if s == "OK" => Some(Try::Granted),
        Reply::Int(at) => Some(Try::Busy(Some(Duration::from_millis(
            u64::try_from(*at).unwrap_or(0).saturating_sub(now_ms),
        )))),
        Reply::Nil => Some(Try::Busy(None)),
        _ => None,
    }
}
