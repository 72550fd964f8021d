//! The fencelock module's commands, as documented in `docs/INTERFACE.md`.

use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use crate::locks::WaitOutcome;
use crate::resp::{Conn, Reply};

pub(super) fn queue_acquire(
    c: &mut Conn,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    wait_ms: Option<&[u8]>,
) {
    match wait_ms {
        None => c.queue(&[b"LOCK.ACQUIRE", key, owner, ttl_ms]),
        Some(w) => c.queue(&[b"LOCK.ACQUIRE", key, owner, ttl_ms, b"WAIT", w]),
    }
}

pub(super) fn queue_release(c: &mut Conn, key: &[u8], owner: &[u8]) {
    c.queue(&[b"LOCK.RELEASE", key, owner]);
}

pub(super) fn queue_renew(c: &mut Conn, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
    c.queue(&[b"LOCK.RENEW", key, owner, ttl_ms]);
}

/// One `LOCK.ACQUIRE ... WAIT`: the server queues the request and answers
/// when the lock is handed over (or the wait times out: nil).
pub(super) async fn acquire_waiting(
    c: &mut Conn,
    key: &[u8],
    owner: &[u8],
    ttl_ms: &[u8],
    give_up: Instant,
) -> Result<WaitOutcome> {
    let wait = give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let wait_ms = wait.as_millis().to_string();
    queue_acquire(c, key, owner, ttl_ms, Some(wait_ms.as_bytes()));
    c.flush().await?;
    let before = c.read_timeout;
    c.read_timeout = wait + Duration::from_secs(10);
    let r = c.read_reply().await;
    c.read_timeout = before;
    match r? {
        Reply::Int(_) => Ok(WaitOutcome {
            granted: true,
            wasted: 0,
        }),
        Reply::Nil => Ok(WaitOutcome {
            granted: false,
            wasted: 1,
        }),
        other => Err(BenchError::unexpected("LOCK.ACQUIRE WAIT", &other)),
    }
}
