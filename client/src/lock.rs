//! [`Lock`]: a handle on one key with one owner string, and `acquire`.
//!
//! A handle has at most one live lease at a time; re-entries join it. The
//! hold-changing requests of one handle (acquire, release) run one at a time
//! (`ops`), so that the handle always knows which of the owner's holds on the
//! server belong to which lease.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::{ClientInner, Connection};
use crate::commands::{self, show};
use crate::error::{Error, LeaseLost};
use crate::guard::Guard;
use crate::lease::Lease;
use crate::options::{AcquireOptions, Durability, LeaseParams};
use crate::watchdog;

/// Bounds the loop that clears an owner's leftover holds (see
/// [`Handle::clear_leftovers`]); the server's count is the real bound.
const MAX_LEFTOVER_RELEASES: u64 = 10_000;

/// A lock handle: one key, one owner string (`<client uuid>:<n>`).
///
/// Take it from [`Client::lock`](crate::Client::lock). Acquiring through the
/// same handle again while it holds the lock re-enters (the server counts
/// holds; the token stays the same); another handle, of this client or any
/// other, is excluded. Cloning the handle keeps the owner.
pub struct Lock<C> {
    pub(crate) handle: Arc<Handle<C>>,
}

impl<C> Clone for Lock<C> {
    fn clone(&self) -> Self {
        Self {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<C> fmt::Debug for Lock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .finish_non_exhaustive()
    }
}

/// The state shared by a handle's clones, its guards and its watchdogs.
pub(crate) struct Handle<C> {
    pub client: Arc<ClientInner<C>>,
    pub key: Vec<u8>,
    pub owner: String,
    /// Serialises the handle's acquires and releases.
    pub ops: tokio::sync::Mutex<()>,
    /// The latest lease (it may have been lost or have ended since).
    current: Mutex<Option<Arc<Lease>>>,
}

impl<C: Connection> Lock<C> {
    pub(crate) fn new(client: Arc<ClientInner<C>>, key: Vec<u8>, owner: String) -> Self {
        Self {
            handle: Arc::new(Handle {
                client,
                key,
                owner,
                ops: tokio::sync::Mutex::new(()),
                current: Mutex::new(None),
            }),
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.handle.key
    }

    /// The owner string sent to the server: `<client uuid>:<n>`.
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// Takes the lock (or re-enters it), as `options` say.
    ///
    /// Returns `Ok(Some(guard))` when granted, `Ok(None)` when another owner
    /// holds it (after the wait, if one was asked for), and an error when
    /// the options are invalid, the connection failed (the lock may then
    /// have been granted: it expires after its ttl), or the grant was not
    /// acknowledged by enough replicas (then it has been released).
    ///
    /// A re-entry joins the lease the handle already holds: it refreshes it
    /// with that lease's own ttl, keeps that lease's watchdog, and its guard
    /// shares the lease's token and [`lost`](Guard::lost) signal; only the
    /// wait and replica options of a re-entry apply.
    ///
    /// Cancelling a waiting acquire (dropping the future) closes its
    /// dedicated connection, which takes it out of the server's queue; a
    /// grant that raced with that is never renewed and expires after its ttl.
    pub async fn acquire(&self, options: AcquireOptions) -> Result<Option<Guard<C>>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let fresh_params = options.params()?;
        let h = &self.handle;
        let _op = h.ops.lock().await;

        let held = h.live_lease();
        // A re-entry keeps the held lease's parameters (one fixed ttl per
        // lease is what keeps the local deadline safe).
        let params = held.as_ref().map_or(fresh_params, |l| l.params);
        let wait_ms = options.wait_ms();
        let durability = options.durability();
        let may_block = wait_ms.is_some() || durability.is_some();
        let mut conn = if may_block {
            h.client.blocking_connection().await?
        } else {
            h.client.conn.clone()
        };

        let cmd = commands::acquire(&h.key, &h.owner, params.ttl_ms(), wait_ms);
        let mut sent = Instant::now();
        let (token, acked) = match durability {
            None => {
                let reply: Value = cmd.query_async(&mut conn).await?;
                (commands::token(reply)?, None)
            }
            Some(d) => {
                // One pipeline, so that WAIT runs on the same server
                // connection right after the grant: it then counts the
                // replicas that have the grant, and on a cluster connection
                // it is routed with the key (a lone WAIT goes to every
                // primary).
                let mut pipe = redis::pipe();
                pipe.ignore_errors()
                    .add_command(cmd)
                    .add_command(commands::wait_replicas(d));
                let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                let mut replies = replies.into_iter();
                let token = commands::token(replies.next().unwrap_or(Value::Nil))?;
                let acked = replies
                    .next()
                    .ok_or_else(|| Error::UnexpectedReply {
                        command: "WAIT",
                        reply: "no reply".into(),
                    })
                    .and_then(commands::acked);
                (token, Some((d, acked)))
            }
        };
        drop(conn);

        let Some(token) = token else {
            if let Some(lease) = held {
                // Another owner holds it now: the lease we had is gone.
                if lease.lose(LeaseLost::NotHeld) {
                    warn!(key = %show(&h.key), owner = %h.owner, token = lease.token, "lock re-entry found the lease lost");
                }
            }
            debug!(key = %show(&h.key), owner = %h.owner, "lock not granted");
            return Ok(None);
        };
        let reentry = held.as_ref().is_some_and(|l| l.token == token);

        if let Some((d, acked)) = acked {
            if let Err(e) = check_durability(d, acked) {
                warn!(key = %show(&h.key), owner = %h.owner, token, error = %e, "grant not acknowledged by replicas; releasing it");
                if !reentry {
                    if let Some(lease) = &held {
                        lease.lose(LeaseLost::NotHeld);
                    }
                }
                h.undo_grant(reentry).await;
                return Err(e);
            }
        }

        let mut gone = false;
        if may_block && Instant::now() >= sent + params.renew_every {
            // The grant may have come at any time during the wait: confirm
            // the lease with a renewal so that the local deadline is measured
            // from a known send time. (If this fails, the watchdog finds the
            // deadline near or past and says so.)
            let confirm_sent = Instant::now();
            let mut conn = h.client.conn.clone();
            let reply = commands::renew(&h.key, &h.owner, params.ttl_ms())
                .query_async::<Value>(&mut conn)
                .await
                .map_err(Error::from)
                .and_then(commands::renewed);
            match reply {
                Ok(true) => sent = confirm_sent,
                Ok(false) => gone = true,
                Err(e) => {
                    warn!(key = %show(&h.key), owner = %h.owner, token, error = %e, "could not confirm a lease granted after a wait");
                }
            }
        }

        let guard = h.grant(token, params, sent, &runtime);
        if gone {
            // Granted, then gone before the confirmation (a ttl shorter than
            // the round trip): hand out the guard already lost.
            guard.lease_lost(LeaseLost::NotHeld);
        }
        Ok(Some(guard))
    }
}

fn check_durability(d: Durability, acked: Result<u64, Error>) -> Result<(), Error> {
    let acked = acked?;
    if acked >= d.replicas {
        Ok(())
    } else {
        Err(Error::NotDurable {
            acked,
            wanted: d.replicas,
            timeout: std::time::Duration::from_millis(d.timeout_ms),
        })
    }
}

impl<C: Connection> Handle<C> {
    /// The current lease if it is still live.
    pub(crate) fn live_lease(&self) -> Option<Arc<Lease>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|l| l.is_live())
            .cloned()
    }

    /// Records a grant: a re-entry joins the live lease with the same token;
    /// anything else starts a new lease (and a different token means the
    /// old one ended on the server).
    fn grant(
        self: &Arc<Self>,
        token: u64,
        params: LeaseParams,
        sent: Instant,
        runtime: &tokio::runtime::Handle,
    ) -> Guard<C> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = current.as_ref().filter(|l| l.is_live()) {
            if lease.token == token && lease.attach(sent) {
                debug!(key = %show(&self.key), owner = %self.owner, token, "lock re-entered");
                return Guard::new(Arc::clone(self), Arc::clone(lease));
            }
            if lease.token != token && lease.lose(LeaseLost::NotHeld) {
                warn!(key = %show(&self.key), owner = %self.owner, token = lease.token, new_token = token, "the held lease had ended on the server; got a new grant");
            }
        }
        let lease = Lease::new(token, params, sent);
        *current = Some(Arc::clone(&lease));
        drop(current);
        watchdog::spawn(runtime, Arc::clone(&lease), Arc::clone(self));
        info!(key = %show(&self.key), owner = %self.owner, token, ttl_ms = params.ttl_ms(), watchdog = params.watchdog, "lock acquired");
        Guard::new(Arc::clone(self), lease)
    }

    /// Gives back a grant that failed its durability check. The caller holds
    /// `ops`.
    async fn undo_grant(&self, reentry: bool) {
        let mut conn = self.client.conn.clone();
        match self.release_once(&mut conn).await {
            Ok(Some(remaining)) if !reentry => self.clear_leftovers(&mut conn, remaining).await,
            Ok(_) => {}
            Err(e) => {
                warn!(key = %show(&self.key), owner = %self.owner, error = %e, "could not release an unacknowledged grant; it expires after its ttl")
            }
        }
    }

    /// One `LOCK.RELEASE`: the remaining hold count, `None` when not held.
    pub(crate) async fn release_once(&self, conn: &mut C) -> Result<Option<u64>, Error> {
        let reply: Value = commands::release(&self.key, &self.owner)
            .query_async(conn)
            .await?;
        commands::remaining(reply)
    }

    /// After the handle's last live guard released, the owner may still
    /// count holds on the server that no guard stands for: grants whose
    /// reply was lost (a failed or cancelled acquire), or holds of a lease
    /// the client gave up as lost while the server still had it. The owner
    /// string belongs to this handle alone, and `ops` is held, so they are
    /// ours to clear — unless a newer lease of this handle is live.
    pub(crate) async fn clear_leftovers(&self, conn: &mut C, mut remaining: u64) {
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
