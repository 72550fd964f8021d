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

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Client, Lock, WaitOutcome};
use crate::resp::{Conn, Reply};

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

pub(super) fn queue_acquire(c: &mut Conn, sha: &str, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, ttl_ms, owner]);
}

pub(super) fn queue_release(c: &mut Conn, sha: &str, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
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

pub(super) fn queue_renew(c: &mut Conn, sha: &str, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, ttl_ms, owner]);
}

/// Is `r` a pub/sub frame of `kind` ("message", "subscribe", ...)?
fn is_frame(r: &Reply, kind: &[u8]) -> bool {
    matches!(r, Reply::Array(items) if matches!(items.first(), Some(Reply::Bulk(k)) if k == kind))
}

/// Subscribes and waits for the confirmation; anything before it (messages
/// and acknowledgements of an earlier subscription) is stale and dropped.
async fn subscribe(sub: &mut Conn, ch: &[u8]) -> Result<()> {
    sub.queue(&[b"SUBSCRIBE", ch]);
    sub.flush().await?;
    for _ in 0..100_000 {
        let r = sub.read_reply().await?;
        if is_frame(&r, b"subscribe") {
            return Ok(());
        }
        if let Reply::Error(_) = r {
            return Err(BenchError::unexpected("SUBSCRIBE", &r));
        }
    }
    Err(BenchError::Protocol("no SUBSCRIBE confirmation".into()))
}

async fn unsubscribe(sub: &mut Conn, ch: &[u8]) -> Result<()> {
    // Not awaited: the acknowledgement is skipped by the next subscribe.
    sub.queue(&[b"UNSUBSCRIBE", ch]);
    sub.flush().await
}

pub(super) async fn acquire_waiting(
    lock: &Lock,
    client: &mut Client,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    give_up: Instant,
) -> Result<WaitOutcome> {
    let Client { cmd, sub } = client;
    let Some(sub) = sub.as_mut() else {
        return Err(BenchError::Setup(
            "Redisson client without a pub/sub connection".into(),
        ));
    };
    if lock.try_acquire(cmd, key, owner, ttl_ms).await? == Acquired::Granted {
        return Ok(WaitOutcome {
            granted: true,
            wasted: 0,
        });
    }
    let mut wasted = 1;
    let ch = channel(key);
    subscribe(sub, &ch).await?;
    loop {
        let holder_ttl = match lock.try_acquire(cmd, key, owner, ttl_ms).await? {
            Acquired::Granted => {
                unsubscribe(sub, &ch).await?;
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
            unsubscribe(sub, &ch).await?;
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
            while let Some(r) = sub.read_reply_within(bound).await? {
                if is_frame(&r, b"message") {
                    break;
                }
            }
        }
    }
}
