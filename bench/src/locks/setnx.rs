//! Baseline 1: the redis.io single-instance lock recipe.
//!
//! Acquire is `SET key owner NX PX ttl`; release deletes the key only when
//! it still holds our owner value, renew extends it only then (both as Lua,
//! so the compare and the write are atomic); a client that finds the lock
//! taken polls again after a random, exponentially growing delay.

use std::time::{Duration, Instant};

use super::common::{Acquired, Link, Queue, WaitOutcome};
use crate::error::{BenchError, Result};
use crate::resp::Reply;

/// Compare-and-delete. KEYS[1] = lock, ARGV[1] = owner. Returns 1 when
/// deleted, 0 when someone else (or no one) holds the lock.
pub(super) const RELEASE: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Compare-and-pexpire. KEYS[1] = lock, ARGV[1] = owner, ARGV[2] = ttl ms.
/// Returns 1 when extended, 0 otherwise.
pub(super) const RENEW: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// First polling delay.
const BACKOFF_START: Duration = Duration::from_millis(1);
/// Longest polling delay. Common libraries wait 50-250 ms between tries;
/// 16 ms is deliberately aggressive (quicker hand-offs, more wasted tries).
const BACKOFF_MAX: Duration = Duration::from_millis(16);

pub(super) fn queue_acquire<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"SET", key, owner, b"NX", b"PX", ttl_ms]);
}

pub(super) fn queue_release<Q: Queue + ?Sized>(c: &mut Q, sha: &str, key: &[u8], owner: &[u8]) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, owner]);
}

pub(super) fn queue_renew<Q: Queue + ?Sized>(
    c: &mut Q,
    sha: &str,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
) {
    c.queue(&[b"EVALSHA", sha.as_bytes(), b"1", key, owner, ttl_ms]);
}

/// `SET ... NX`: OK when set, nil when the key exists.
pub(super) fn acquired(r: &Reply) -> Option<Acquired> {
    match r {
        Reply::Status(s) if s == "OK" => Some(Acquired::Granted),
        Reply::Nil => Some(Acquired::Busy {
            holder_ttl_ms: None,
        }),
        _ => None,
    }
}

/// Polls until granted: after each refusal sleeps a random time in
/// [b/2, b], b doubling from 1 ms up to 16 ms.
pub(super) async fn acquire_waiting(
    c: &mut impl Link,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    give_up: Instant,
    rng: &mut fastrand::Rng,
) -> Result<WaitOutcome> {
    let mut backoff = BACKOFF_START;
    let mut wasted = 0;
    loop {
        let r = c.call(|q| queue_acquire(q, key, owner, ttl_ms)).await?;
        match acquired(&r) {
            Some(Acquired::Granted) => {
                return Ok(WaitOutcome {
                    granted: true,
                    wasted,
                })
            }
            Some(Acquired::Busy { .. }) => wasted += 1,
            None => return Err(BenchError::unexpected("SET NX PX", &r)),
        }
        if Instant::now() >= give_up {
            return Ok(WaitOutcome {
                granted: false,
                wasted,
            });
        }
        let half = backoff / 2;
        let jitter = Duration::from_micros(rng.u64(..=half.as_micros() as u64));
        tokio::time::sleep(half + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
