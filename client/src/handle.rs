//! [`Handle`]: what a lock handle's clones, its guards and its watchdogs
//! share — the key, the owner string, the client's connections, the
//! serialisation of hold-changing requests and the current lease — and the
//! requests on the handle's own holds (renew, release).
//!
//! A handle has at most one live lease at a time; re-entries join it. The
//! hold-changing requests of one handle (acquire, release) run one at a time
//! (`ops`), so that the handle always knows which of the owner's holds on the
//! server belong to which lease.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::commands::{self, show};
use crate::connection::{Connection, Connections};
use crate::error::{Error, LeaseLost};
use crate::lease::Lease;
use crate::options::LeaseParams;

/// Bounds the loop that clears an owner's leftover holds (see
/// [`Handle::clear_leftovers`]); the server's count is the real bound.
const MAX_LEFTOVER_RELEASES: u64 = 10_000;

/// The state shared by a handle's clones, its guards and its watchdogs.
pub(crate) struct Handle<C> {
    pub connections: Arc<Connections<C>>,
    pub key: Vec<u8>,
    pub owner: String,
    /// Serialises the handle's acquires and releases.
    pub ops: tokio::sync::Mutex<()>,
    /// The latest lease (it may have been lost or have ended since).
    current: Mutex<Option<Arc<Lease>>>,
}

/// What [`Handle::record_grant`] did with a grant.
pub(crate) enum Recorded {
    /// A re-entry: it joined the live lease (whose watchdog runs already).
    Joined(Arc<Lease>),
    /// A new lease, which needs a watchdog.
    Started(Arc<Lease>),
}

impl<C: Connection> Handle<C> {
    pub fn new(connections: Arc<Connections<C>>, key: Vec<u8>, owner: String) -> Self {
        Self {
            connections,
            key,
            owner,
            ops: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
        }
    }

    /// The client's shared connection.
    pub fn conn(&self) -> C {
        self.connections.shared()
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Lease>>> {
        // Nothing panics while holding this lock; a poisoned one is still
        // consistent.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current lease if it is still live.
    pub fn live_lease(&self) -> Option<Arc<Lease>> {
        self.current().as_ref().filter(|l| l.is_live()).cloned()
    }

    /// Marks the live lease lost, if there is one; returns its token when
    /// this call marked it.
    pub fn lose_live_lease(&self, reason: LeaseLost) -> Option<u64> {
        self.live_lease()
            .filter(|lease| lease.lose(reason))
            .map(|lease| lease.token)
    }

    /// Records a grant confirmed by a request sent at `sent`: a re-entry
    /// joins the live lease with the same token; anything else starts a new
    /// lease (and a different token means the old one ended on the server).
    pub fn record_grant(&self, token: u64, params: LeaseParams, sent: Instant) -> Recorded {
        let mut current = self.current();
        if let Some(lease) = current.as_ref().filter(|l| l.is_live()) {
            if lease.token == token && lease.attach(sent) {
                debug!(key = %show(&self.key), owner = %self.owner, token, "lock re-entered");
                return Recorded::Joined(Arc::clone(lease));
            }
            if lease.token != token && lease.lose(LeaseLost::NotHeld) {
                warn!(key = %show(&self.key), owner = %self.owner, token = lease.token, new_token = token, "the held lease had ended on the server; got a new grant");
            }
        }
        let lease = Lease::new(token, params, sent);
        *current = Some(Arc::clone(&lease));
        info!(key = %show(&self.key), owner = %self.owner, token, ttl_ms = params.ttl_ms(), watchdog = params.watchdog, "lock acquired");
        Recorded::Started(lease)
    }

    /// One `LOCK.RENEW` with `ttl_ms`: whether the owner still holds the
    /// lock. A key overwritten with another type (`WRONGTYPE`) is not held.
    pub async fn renew(&self, conn: &mut C, ttl_ms: u64) -> Result<bool, Error> {
        let reply = commands::renew(&self.key, &self.owner, ttl_ms)
            .query_async::<Value>(conn)
            .await;
        match reply {
            Ok(v) => commands::renewed(v),
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(false),
            Err(e) => Err(Error::Redis(e)),
        }
    }

    /// One `LOCK.RELEASE`: the remaining hold count, `None` when not held.
    pub async fn release_once(&self, conn: &mut C) -> Result<Option<u64>, Error> {
        let reply: Value = commands::release(&self.key, &self.owner)
            .query_async(conn)
            .await?;
        commands::remaining(reply)
    }

    /// Gives back a grant that failed its durability check. The caller holds
    /// `ops`.
    pub async fn undo_grant(&self, reentry: bool) {
        let mut conn = self.conn();
        match self.release_once(&mut conn).await {
            Ok(Some(remaining)) if !reentry => self.clear_leftovers(&mut conn, remaining).await,
            Ok(_) => {}
            Err(e) => {
                warn!(key = %show(&self.key), owner = %self.owner, error = %e, "could not release an unacknowledged grant; it expires after its ttl")
            }
        }
    }

    /// After the handle's last live guard released, the owner may still
    /// count holds on the server that no guard stands for: grants whose
    /// reply was lost (a failed or cancelled acquire), or holds of a lease
    /// the client gave up as lost while the server still had it. The owner
    /// string belongs to this handle alone, and `ops` is held, so they are
    /// ours to clear — unless a newer lease of this handle is live.
    pub async fn clear_leftovers(&self, conn: &mut C, mut remaining: u64) {
        if remaining == 0 || self.live_lease().is_some() {
            return;
        }
        debug!(key = %show(&self.key), owner = %self.owner, remaining, "clearing leftover holds");
        let mut sent = 0;
        while remaining > 0 && sent < MAX_LEFTOVER_RELEASES {
            sent += 1;
            match self.release_once(conn).await {
                Ok(Some(r)) => remaining = r,
                Ok(None) => return,
                Err(e) => {
                    warn!(key = %show(&self.key), owner = %self.owner, error = %e, "could not clear leftover holds; they expire after the ttl");
                    return;
                }
            }
        }
    }
}
