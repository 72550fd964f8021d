//! The fencelock module's commands, as documented in `docs/INTERFACE.md`.

use std::time::{Duration, Instant};

use super::common::{Acquired, Link, Queue, WaitOutcome, Waited};
use crate::error::{BenchError, Result};
use crate::resp::Reply;

pub(super) fn queue_acquire<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"LOCK.ACQUIRE", key, owner, ttl_ms]);
}

pub(super) fn queue_release<Q: Queue + ?Sized>(c: &mut Q, key: &[u8], owner: &[u8]) {
    c.queue(&[b"LOCK.RELEASE", key, owner]);
}

/// `LOCK.ACQUIRE key owner ttl ID request-id` (exactly-once retries).
pub(super) fn queue_acquire_with_id<Q: Queue + ?Sized>(
    c: &mut Q,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    id: &[u8],
) {
    c.queue(&[b"LOCK.ACQUIRE", key, owner, ttl_ms, b"ID", id]);
}

/// `LOCK.RELEASE key owner ID request-id` (exactly-once retries).
pub(super) fn queue_release_with_id<Q: Queue + ?Sized>(
    c: &mut Q,
    key: &[u8],
    owner: &[u8],
    id: &[u8],
) {
    c.queue(&[b"LOCK.RELEASE", key, owner, b"ID", id]);
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
    let w = acquire_family(c, key, owner, ttl_ms, &[], give_up).await?;
    Ok(WaitOutcome {
        granted: w.granted,
        wasted: w.wasted,
    })
}

/// One `LOCK.ACQUIRE key owner ttl [options] WAIT ms` (`options`: none for
/// the exclusive lock, `SHARED`, or `LIMIT p`): queued on the server,
/// answered with the token at the hand-off, nil when the wait times out.
/// One request per grant; a timed-out wait is one wasted request.
pub(super) async fn acquire_family(
    c: &mut impl Link,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    options: &[&[u8]],
    give_up: Instant,
) -> Result<Waited> {
    let wait = give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let wait_ms = wait.as_millis().to_string();
    let queue = |q: &mut dyn Queue| {
        let mut args: Vec<&[u8]> = vec![b"LOCK.ACQUIRE", key, owner, ttl_ms];
        args.extend_from_slice(options);
        args.extend_from_slice(&[b"WAIT", wait_ms.as_bytes()]);
        q.queue(&args);
    };
    let Some(r) = c.call_within(queue, wait + Duration::from_secs(10)).await? else {
        return Err(BenchError::Timeout(format!(
            "LOCK.ACQUIRE WAIT {wait_ms} did not answer"
        )));
    };
    match acquired(&r) {
        Some(a) => Ok(Waited {
            granted: a == Acquired::Granted,
            wasted: u64::from(a != Acquired::Granted),
            ..Waited::default()
        }),
        None => Err(BenchError::unexpected("LOCK.ACQUIRE WAIT", &r)),
    }
}
