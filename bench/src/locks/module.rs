//! The fencelock module's commands, as documented in `docs/INTERFACE.md`.

use std::time::{Duration, Instant};

use super::common::{Acquired, Link, Queue, WaitOutcome};
use crate::error::{BenchError, Result};
use crate::resp::Reply;

pub(super) fn queue_acquire<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"LOCK.ACQUIRE", key, owner, ttl_ms]);
}

pub(super) fn queue_release<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8]) {
    c.queue(&[b"LOCK.RELEASE", key, owner]);
}

pub(super) fn queue_renew<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"LOCK.RENEW", key, owner, ttl_ms]);
}

/// `LOCK.ACQUIRE`: the fencing token when granted, nil when held by another.
pub(super) fn acquired(r: &Reply) -> Option<Acquired> {
    match r {
        Reply::Int(_) => Some(Acquired::Granted),
        Reply::Nil => Some(Acquired::Busy {
            holder_ttl_ms: None,
        }),
        _ => None,
    }
}

/// One `LOCK.ACQUIRE ... WAIT`: the server queues the request and answers
/// when the lock is handed over (or the wait times out: nil).
pub(super) async fn acquire_waiting(
    c: &mut impl Link,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    give_up: Instant,
) -> Result<WaitOutcome> {
    let wait = give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let wait_ms = wait.as_millis().to_string();
    let queue = |q: &mut dyn Queue| {
        q.queue(&[
            b"LOCK.ACQUIRE",
            key,
            owner,
            ttl_ms,
            b"WAIT",
            wait_ms.as_bytes(),
        ]);
    };
    let Some(r) = c.call_within(queue, wait + Duration::from_secs(10)).await? else {
        return Err(BenchError::Timeout(format!(
            "LOCK.ACQUIRE WAIT {wait_ms} did not answer"
        )));
    };
    match acquired(&r) {
        Some(a) => Ok(WaitOutcome {
            granted: a == Acquired::Granted,
            wasted: u64::from(a != Acquired::Granted),
        }),
        None => Err(BenchError::unexpected("LOCK.ACQUIRE WAIT", &r)),
    }
}
