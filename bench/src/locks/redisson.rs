//! Baseline 2: a Redisson-style reentrant lock, written from Redisson's
//! description of its algorithm (no Redisson code).
//!
//! A lock is a hash: field = owner, value = hold count, with a PEXPIRE
//! lease. Acquire grants when the hash is absent or the caller already owns
//! it (holds + 1, lease reset) and otherwise answers the holder's remaining
//! ttl. Release decrements the caller's count; at 0 it deletes the hash and
//! publishes on the lock's channel. A waiter subscribes to that channel after
//! its first refusal, retries on every message (or when the holder's ttl has
//! run out, whichever comes first) and unsubscribes once it holds the lock.

use std::time::{Duration, Instant};

use super::common::{Acquired, Link, Queue, WaitOutcome};
use crate::error::{BenchError, Result};
use crate::resp::Reply;

/// KEYS[1] = lock hash, ARGV[1] = ttl ms, ARGV[2] = owner.
/// Returns nil when the caller now holds the lock, else the holder's pttl.
pub(super) const ACQUIRE: &str = "\
local free = redis.call('EXISTS', KEYS[1]) == 0
if free or redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return nil
end
return redis.call('PTTL', KEYS[1])";

/// KEYS[1] = lock hash, KEYS[2] = channel, ARGV[1] = ttl ms, ARGV[2] =
/// owner, ARGV[3] = message. Returns nil when the caller does not hold the
/// lock, else the holds left (0 = released and announced).
pub(super) const RELEASE: &str = "\
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return nil
end
local left = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if left > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return left
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 0";

/// KEYS[1] = lock hash, ARGV[1] = ttl ms, ARGV[2] = owner.
/// Returns 1 when the caller holds the lock (lease extended), else 0.
pub(super) const RENEW: &str = "\
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0";

/// The channel a lock's release is announced on.
fn channel(key: &[u8]) -> Vec<u8> {
    let mut c = b"unlock:".to_vec();
    c.extend_from_slice(key);
    c
}

pub(super) fn queue_acquire<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, ttl_ms, owner]);
}

pub(super) fn queue_release<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    let ch = channel(key);
    c.queue(&[
        b"EVALSHA",
        sha.as_bytes(),
        b"2",
        key,
        &ch,
        ttl_ms,
        owner,
        b"0",
    ]);
}

pub(super) fn queue_renew<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, ttl_ms, owner]);
}

/// The acquire script: nil when granted, else the holder's remaining ttl.
pub(super) fn acquired(r: &Reply) -> Option<Acquired> {
    match r {
        Reply::Nil => Some(Acquired::Granted),
        Reply::Int(ttl) => Some(Acquired::Busy {
            holder_ttl_ms: Some(*ttl),
        }),
        _ => None,
    }
}

async fn try_acquire(
    c: &mut impl Link,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) -> Result<Acquired> {
    let r = c
        .call(|q| queue_acquire(q, sha, key, owner, ttl_ms))
        .await?;
    acquired(&r).ok_or_else(|| BenchError::unexpected("Redisson-style acquire", &r))
}

/// Acquires, waiting on the lock's channel for release messages.
pub(super) async fn acquire_waiting(
    c: &mut impl Link,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    give_up: Instant,
) -> Result<WaitOutcome> {
    if try_acquire(c, sha, key, owner, ttl_ms).await? == Acquired::Granted {
        return Ok(WaitOutcome {
            granted: true,
            wasted: 0,
        });
    }
    let mut wasted = 1;
    let ch = channel(key);
    c.subscribe(&ch).await?;
    loop {
        let holder_ttl = match try_acquire(c, sha, key, owner, ttl_ms).await? {
            Acquired::Granted => {
                c.unsubscribe(&ch).await?;
                return Ok(WaitOutcome {
                    granted: true,
                    wasted,
                });
            }
            Acquired::Busy { holder_ttl_ms } => holder_ttl_ms,
        };
        wasted += 1;
        let now = Instant::now();
        if now >= give_up {
            c.unsubscribe(&ch).await?;
            return Ok(WaitOutcome {
                granted: false,
                wasted,
            });
        }
        // The holder's remaining ttl bounds the wait (negative: no ttl, or the
        // key vanished in between: retry at once).
        let ttl = Duration::from_millis(holder_ttl.unwrap_or(0).max(0) as u64);
        let bound = ttl.min(give_up - now);
        if !bound.is_zero() {
            // A message, or the bound passing, both mean: try again.
            c.message_within(bound).await?;
        }
    }
}
