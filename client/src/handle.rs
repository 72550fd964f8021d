//! [`Handle`]: what a handle's clones (a [`Lock`](crate::Lock), an
//! [`RwLock`](crate::RwLock) or a [`Semaphore`](crate::Semaphore)), its
//! guards and its watchdogs share — the key, the owner string, the client's
//! connections, the serialisation of hold-changing requests and the current
//! lease — and the requests on the key: renew, release, force-release, info.
//!
//! A handle has at most one live lease at a time; re-entries join it (the
//! server keeps one lease per key and owner). The handle's acquires run one
//! at a time (`acquiring`), so that a re-entry always knows the lease it
//! joins. Releases, and the bookkeeping of an acquire once its reply is in,
//! run one at a time (`ops`), so that the handle always knows which of the
//! owner's holds on the server belong to which lease. An acquire waiting on
//! the server does not hold `ops`: the handle's guards can still release
//! (a semaphore waiter may need exactly those permits back).
//!
//! Each acquire and release of the handle gets the next request id, which
//! its retries repeat (see `retry`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::commands::{self, show};
use crate::connection::{Connection, Connections};
use crate::error::{Error, LeaseLost};
use crate::info::KeyInfo;
use crate::lease::{Hold, Lease};
use crate::options::LeaseParams;
use crate::retry::{self, Retries};

/// The state shared by a handle's clones, its guards and its watchdogs.
pub(crate) struct Handle<C> {
    pub connections: Arc<Connections<C>>,
    pub key: Vec<u8>,
    pub owner: String,
    /// Serialises the handle's acquires.
    pub acquiring: tokio::sync::Mutex<()>,
    /// Serialises the handle's releases and the bookkeeping of its grants.
    pub ops: tokio::sync::Mutex<()>,
    /// An acquire has been sent and its grant is not yet recorded (see
    /// [`Handle::clear_leftovers`]).
    in_flight: AtomicBool,
    /// The latest lease (it may have been lost or have ended since).
    current: Mutex<Option<Arc<Lease>>>,
    /// The number of the handle's last acquire or release (its request id).
    requests: AtomicU64,
}

/// What the server said to a release, after its retries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Released {
    /// What the owner still holds; `None` when it held nothing.
    pub remaining: Option<u64>,
    /// The answer came to a retry: a first attempt may have been applied.
    pub retried: bool,
    /// When the first attempt was sent.
    pub first_sent: Instant,
}

/// What [`Handle::record_grant`] did with a grant.
pub(crate) enum Recorded {
    /// A re-entry: it joined the live lease (whose watchdog runs already).
    Joined(Arc<Lease>),
    /// A new lease, which needs a watchdog.
    Started(Arc<Lease>),
}

/// Marks an acquire in flight on its handle until dropped.
pub(crate) struct InFlight<'a>(&'a AtomicBool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<C: Connection> Handle<C> {
    pub fn new(connections: Arc<Connections<C>>, key: Vec<u8>, owner: String) -> Self {
        Self {
            connections,
            key,
            owner,
            acquiring: tokio::sync::Mutex::new(()),
            ops: tokio::sync::Mutex::new(()),
            in_flight: AtomicBool::new(false),
            current: Mutex::new(None),
            requests: AtomicU64::new(0),
        }
    }

    /// The request id of the handle's next operation (`op`: `acquire` or
    /// `release`).
    pub fn request_id(&self, op: &str) -> String {
        retry::request_id(op, self.requests.fetch_add(1, Ordering::Relaxed) + 1)
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

    /// Marks an acquire in flight (the caller holds `acquiring`).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.store(true, Ordering::SeqCst);
        InFlight(&self.in_flight)
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

    /// Records a grant of `hold` confirmed by a request sent at `sent`: a
    /// re-entry joins the live lease with the same token; anything else
    /// starts a new lease (and a different token means the old one ended on
    /// the server).
    pub fn record_grant(
        &self,
        token: u64,
        params: LeaseParams,
        hold: Hold,
        sent: Instant,
    ) -> Recorded {
        let mut current = self.current();
        if let Some(lease) = current.as_ref().filter(|l| l.is_live()) {
            if lease.token == token && lease.attach(hold, sent) {
                debug!(key = %show(&self.key), owner = %self.owner, token, ?hold, "lock re-entered");
                return Recorded::Joined(Arc::clone(lease));
            }
            if lease.token != token && lease.lose(LeaseLost::NotHeld) {
                warn!(key = %show(&self.key), owner = %self.owner, token = lease.token, new_token = token, "the held lease had ended on the server; got a new grant");
            }
        }
        let lease = Lease::new(token, params, hold, sent);
        *current = Some(Arc::clone(&lease));
        info!(key = %show(&self.key), owner = %self.owner, token, ?hold, ttl_ms = params.ttl_ms(), watchdog = params.watchdog, "lock acquired");
        Recorded::Started(lease)
    }

    /// One `LOCK.RENEW` with `ttl_ms`: whether the owner still holds
    /// anything at the key. A key overwritten with another type
    /// (`WRONGTYPE`) is not held.
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

    /// `LOCK.RELEASE` of `count` holds or permits over the shared
    /// connection, with a request id of its own, retried for `window` when
    /// no answer comes (see `retry`).
    pub async fn release(&self, count: u64, window: Duration) -> Result<Released, Error> {
        let id = self.request_id("release");
        let mut retries = Retries::new("release", Some(window));
        loop {
            let cmd = commands::release(&self.key, &self.owner, count, &id);
            let reply = retries.attempt(async {
                let reply: Value = cmd.query_async(&mut self.conn()).await?;
                commands::remaining(reply)
            });
            match reply.await {
                Ok(remaining) => {
                    return Ok(Released {
                        remaining,
                        retried: retries.retried(),
                        first_sent: retries.first_sent(),
                    })
                }
                Err(e) => retries.after(e, &self.key, &self.owner).await?,
            }
        }
    }

    /// Gives back a grant of `hold` that failed its durability check
    /// (retried for `window`). The caller holds `ops`.
    pub async fn undo_grant(&self, hold: Hold, reentry: bool, window: Duration) {
        if hold == Hold::Shared && reentry {
            // Under a live exclusive guard, a release now would take the
            // exclusive hold (the server releases those first): the shared
            // one goes with the last exclusive guard.
            if let Some(lease) = self.live_lease() {
                if lease.owe_shared() {
                    return;
                }
            }
        }
        let count = match hold {
            Hold::Exclusive | Hold::Shared => 1,
            Hold::Permits(n) => n,
        };
        match self.release(count, window).await {
            Ok(Released {
                remaining: Some(remaining),
                ..
            }) if !reentry => self.clear_leftovers(remaining, window).await,
            Ok(_) => {}
            Err(e) => {
                warn!(key = %show(&self.key), owner = %self.owner, error = %e, "could not release an unacknowledged grant; it expires after its ttl")
            }
        }
    }

    /// After the handle's last live guard released, the owner may still
    /// hold things on the server that no guard stands for: grants whose
    /// reply was lost (a failed or cancelled acquire), or holds of a lease
    /// the client gave up as lost while the server still had it. The owner
    /// string belongs to this handle alone, and `ops` is held, so they are
    /// ours to clear in one `LOCK.RELEASE ... COUNT remaining` (retried for
    /// `window`) — unless a newer lease of this handle is live, or an
    /// acquire is in flight (its grant may be among them).
    pub async fn clear_leftovers(&self, remaining: u64, window: Duration) {
        if remaining == 0 || self.live_lease().is_some() || self.in_flight.load(Ordering::SeqCst) {
            return;
        }
        debug!(key = %show(&self.key), owner = %self.owner, remaining, "clearing leftover holds");
        if let Err(e) = self.release(remaining, window).await {
            warn!(key = %show(&self.key), owner = %self.owner, error = %e, "could not clear leftover holds; they expire after the ttl");
        }
    }

    /// `LOCK.INFO` over the shared connection.
    pub async fn info(&self) -> Result<Option<KeyInfo>, Error> {
        let reply: Value = commands::info(&self.key)
            .query_async(&mut self.conn())
            .await?;
        commands::key_info(reply)
    }

    /// `LOCK.FORCERELEASE key [owner]`: the whole key, or `owner`'s holds.
    /// When that takes this handle's holds, its live lease is marked lost at
    /// once.
    pub async fn force_release(&self, owner: Option<&str>) -> Result<bool, Error> {
        // The lease held when the request goes out: one granted later (to a
        // concurrent acquire of this handle) may well outlive it.
        let held = self
            .live_lease()
            .filter(|_| owner.is_none_or(|o| o == self.owner));
        let reply: Value = commands::force_release(&self.key, owner)
            .query_async(&mut self.conn())
            .await?;
        let removed = commands::forced(reply)?;
        // Whatever the reply, that lease is gone from the server now.
        if let Some(lease) = held.filter(|lease| lease.lose(LeaseLost::NotHeld)) {
            warn!(key = %show(&self.key), owner = %self.owner, token = lease.token, "lock force-released through its own handle");
        }
        Ok(removed)
    }
}
