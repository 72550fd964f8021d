//! [`Guard`]: proof of a granted lock, read lock or semaphore permits — the
//! fencing token, the "lost" signal, and the release of exactly what it
//! stands for (explicit, or in the background on drop).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::commands::{self, show};
use crate::connection::Connection;
use crate::error::{Error, LeaseLost};
use crate::handle::{Handle, Released};
use crate::lease::{Hold, Lease};

/// A granted lock: from [`Lock::acquire`](crate::Lock::acquire), the read
/// or write side of an [`RwLock`](crate::RwLock), or
/// [`Semaphore::acquire`](crate::Semaphore::acquire). While it lives, its
/// watchdog (if on) renews the lease.
///
/// - [`token`](Self::token): the fencing token, to pass along with every
///   write the lock protects.
/// - [`lost`](Self::lost): completes as soon as the lease is known lost;
///   [`remaining`](Self::remaining): how long it is still known held.
/// - [`release`](Self::release): gives the lock back and says whether it was
///   still held. Dropping the guard stops the watchdog at once and releases
///   in the background (on the current tokio runtime).
///
/// Guards that re-entered through one handle share one lease: one token,
/// one watchdog, one "lost" signal (the server keeps one lease per key and
/// owner, and one renewal renews all it holds there). Each guard gives back
/// only what it took: one hold (exclusive or shared), or its permits; the
/// handle holds the key until all its guards are released.
#[must_use = "dropping the guard releases the lock"]
pub struct Guard<C: Connection> {
    handle: Arc<Handle<C>>,
    /// What it stands for on the server.
    hold: Hold,
    /// `None` once released.
    lease: Option<Arc<Lease>>,
    lost_rx: watch::Receiver<Option<LeaseLost>>,
    token: u64,
}

impl<C: Connection> fmt::Debug for Guard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .field("token", &self.token)
            .field("hold", &self.hold)
            .field("lost", &*self.lost_rx.borrow())
            .finish()
    }
}

impl<C: Connection> Guard<C> {
    pub(crate) fn new(handle: Arc<Handle<C>>, lease: Arc<Lease>, hold: Hold) -> Self {
        Self {
            handle,
            hold,
            lost_rx: lease.subscribe(),
            token: lease.token,
            lease: Some(lease),
        }
    }

    /// The fencing token: a positive number, strictly larger for every new
    /// grant of this key (re-entries keep it). Storage that receives writes
    /// under the lock should reject a token smaller than one it has seen.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.handle.key
    }

    /// The owner string the server knows this holder by.
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// A future that completes as soon as the lease is known lost: a
    /// renewal answered 0 ([`LeaseLost::NotHeld`]), or no renewal was
    /// confirmed before the local deadline ([`LeaseLost::Unconfirmed`]: the
    /// application, e.g. cut off from Redis, learns it before the server can
    /// grant the lock to anyone else), or the watchdog is off and the ttl ran
    /// out ([`LeaseLost::Expired`]). It owns what it needs (no borrow of the
    /// guard), so it fits in `tokio::select!` next to the work. It never
    /// completes if the lease is released first.
    pub fn lost(&self) -> impl Future<Output = LeaseLost> + Send + 'static {
        let mut rx = self.lost_rx.clone();
        async move {
            let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| *r);
            match reason {
                Some(reason) => reason,
                // The lease ended (released) without being lost.
                None => std::future::pending().await,
            }
        }
    }

    /// Whether the lease is known lost (the non-blocking form of
    /// [`lost`](Self::lost)).
    pub fn is_lost(&self) -> bool {
        self.lost_rx.borrow().is_some()
    }

    /// How long the lease is still known to be held, as the client counts
    /// it: the time to the local deadline (the send time of the last
    /// confirmed request + ttl − safety margin), without asking the server.
    /// Each confirmed renewal moves it forward; it is zero once the lease is
    /// lost. The server's own view (its remaining ttl) is in
    /// [`Lock::info`](crate::Lock::info).
    pub fn remaining(&self) -> Duration {
        self.lease
            .as_ref()
            .map_or(Duration::ZERO, |lease| lease.remaining(Instant::now()))
    }

    /// Releases what this guard stands for: stops the watchdog (if this was
    /// the lease's last guard), then sends `LOCK.RELEASE` (with `COUNT n`
    /// for a semaphore guard of `n` permits). Returns whether the lock was
    /// still held by this owner. A guard whose lease was lost sends nothing
    /// and returns `false`: whatever the server still counts for it expires
    /// on its own, and this way a lost guard can never release a newer grant
    /// of the same handle.
    ///
    /// The release carries a request id and is sent again when no answer
    /// comes (a dropped connection, a timeout), for at most the lease's ttl;
    /// the server answers a retry it has applied without releasing twice.
    /// The error is the last attempt's, when none was answered.
    ///
    /// A read guard released while a write guard of the same
    /// [`RwLock`](crate::RwLock) handle lives sends nothing yet and returns
    /// `true`: the server releases an owner's exclusive holds before its
    /// shared ones, so releasing now would end the write lock under the live
    /// write guard. Its hold goes with the handle's last write guard. (The
    /// other order — the write guard released first, read guards still
    /// held — is the downgrade.)
    pub async fn release(mut self) -> Result<bool, Error> {
        match self.detach() {
            Some(job) => job.run().await,
            None => Ok(false),
        }
    }

    /// The synchronous half of a release: leaves the lease (stopping the
    /// watchdog if last). Returns the network half, unless there is nothing
    /// to send.
    fn detach(&mut self) -> Option<ReleaseJob<C>> {
        let lease = self.lease.take()?;
        let detached = lease.detach(self.hold);
        if detached.lost {
            debug!(key = %show(&self.handle.key), owner = %self.handle.owner, token = self.token, "lease was lost; nothing to release");
            return None;
        }
        Some(ReleaseJob {
            handle: Arc::clone(&self.handle),
            lease,
            last: detached.last,
            count: detached.count,
        })
    }
}

impl<C: Connection> Drop for Guard<C> {
    fn drop(&mut self) {
        let Some(job) = self.detach() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let (key, owner) = (show(&job.handle.key).into_owned(), job.handle.owner.clone());
                    if let Err(e) = job.run().await {
                        warn!(%key, %owner, error = %e, "release of a dropped guard failed; the lease expires after its ttl");
                    }
                });
            }
            Err(_) => {
                warn!(key = %show(&self.handle.key), owner = %self.handle.owner, "guard dropped outside a tokio runtime; the lease expires after its ttl");
            }
        }
    }
}

/// The network half of a release.
struct ReleaseJob<C: Connection> {
    handle: Arc<Handle<C>>,
    lease: Arc<Lease>,
    last: bool,
    /// The `COUNT` to release; 0: put off (see [`Lease::detach`]).
    count: u64,
}

impl<C: Connection> ReleaseJob<C> {
    async fn run(self) -> Result<bool, Error> {
        let h = &self.handle;
        if self.count == 0 {
            debug!(key = %show(&h.key), owner = %h.owner, token = self.lease.token, "read hold released under a live write guard: it goes with the last write guard");
            return Ok(true);
        }
        let _op = h.ops.lock().await;
        if self.lease.lost().is_some() {
            // Lost while this release waited for its turn.
            return Ok(false);
        }
        let window = self.lease.params.ttl;
        match h.release(self.count, window).await {
            Err(Error::Redis(e)) if commands::is_over_count(&e) => {
                // The server counts less for the owner than the lease's
                // guards stand for (someone else used the owner string):
                // none of them can count on their holds.
                self.lease.lose(LeaseLost::NotHeld);
                warn!(key = %show(&h.key), owner = %h.owner, token = self.lease.token, error = %e, "the server counts fewer holds than this handle's guards");
                if self.last {
                    if let Some(held) = e.detail().and_then(held_in_message) {
                        h.clear_leftovers(held, window).await;
                    }
                }
                Err(Error::Redis(e))
            }
            Err(e) => Err(e),
            Ok(Released {
                remaining: None,
                retried: true,
                first_sent,
            }) if self.last && first_sent < self.lease.deadline() => {
                // The reply to an earlier attempt was lost, and that attempt
                // released the owner's last hold: the server keeps no record
                // once the owner holds nothing, so the retry is answered as
                // a release of nothing. The first attempt was sent while the
                // lease was known held, so it found the holds there.
                info!(key = %show(&h.key), owner = %h.owner, token = self.lease.token, count = self.count, "lock released (a retry found the last hold released by the first attempt)");
                Ok(true)
            }
            Ok(Released {
                remaining: None, ..
            }) => {
                self.lease.lose(LeaseLost::NotHeld);
                info!(key = %show(&h.key), owner = %h.owner, token = self.lease.token, "released: the lock was no longer held");
                Ok(false)
            }
            Ok(Released {
                remaining: Some(remaining),
                ..
            }) => {
                if self.last {
                    h.clear_leftovers(remaining, window).await;
                } else if remaining == 0 {
                    // The server counted fewer holds than this lease has
                    // guards (someone else used the owner string): the lock
                    // is free now, so the other guards have lost it.
                    self.lease.lose(LeaseLost::NotHeld);
                }
                info!(key = %show(&h.key), owner = %h.owner, token = self.lease.token, count = self.count, remaining, "lock released");
                Ok(true)
            }
        }
    }
}

/// The `<h>` of `COUNT is more than the owner holds (<h>); ...`.
fn held_in_message(detail: &str) -> Option<u64> {
    let (_, rest) = detail.split_once('(')?;
    let (held, _) = rest.split_once(')')?;
    held.parse().ok()
}

#[cfg(test)]
mod tests {
    use tokio::time::sleep;

    use crate::mock::{ms, Answer, Mock};
    use crate::{AcquireOptions, LeaseLost};

    /// The owner of the first acquire sent to `mock`.
    fn guard_owner(mock: &Mock) -> String {
        mock.args("LOCK.ACQUIRE")[0][1].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_is_the_time_to_the_local_deadline_and_zero_once_lost() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        // ttl 300 ms − margin 30 ms, from the acquire's send.
        assert_eq!(guard.remaining(), ms(270));
        sleep(ms(50)).await;
        assert_eq!(guard.remaining(), ms(220));
        // The renewal sent at 100 ms was confirmed: 100 + 270 − 150.
        sleep(ms(100)).await;
        assert_eq!(guard.remaining(), ms(220));
        mock.on("LOCK.RENEW", [Answer::Int(0)]);
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert_eq!(guard.remaining(), ms(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_guard_never_sends_release() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.RENEW", [Answer::Int(0)]);
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert!(!guard.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_guard_releases_in_the_background() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        drop(guard);
        sleep(ms(10)).await;
        assert_eq!(mock.log(), ["LOCK.ACQUIRE", "LOCK.RELEASE"]);
        sleep(ms(1000)).await;
        assert!(mock.sent("LOCK.RENEW").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reentered_guards_share_one_lease_and_one_watchdog() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let options = AcquireOptions::new().ttl(ms(300));
        let outer = lock.acquire(options).await.unwrap().unwrap();
        // The re-entry asks for 30 s, but joins the 300 ms lease.
        let inner = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        assert_eq!(outer.token(), inner.token());
        sleep(ms(350)).await;
        assert_eq!(mock.sent("LOCK.RENEW").len(), 3);
        mock.on("LOCK.RELEASE", [Answer::Int(1), Answer::Int(0)]);
        assert!(inner.release().await.unwrap());
        sleep(ms(350)).await;
        assert_eq!(
            mock.sent("LOCK.RENEW").len(),
            6,
            "outer lease still renewed"
        );
        assert!(outer.release().await.unwrap());
        sleep(ms(350)).await;
        assert_eq!(mock.sent("LOCK.RENEW").len(), 6);
        assert_eq!(mock.sent("LOCK.RELEASE").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn last_release_clears_leftover_holds_of_the_owner() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        // The server counts two more holds for this owner (e.g. a grant
        // whose reply was lost).
        mock.on("LOCK.RELEASE", [Answer::Int(2), Answer::Int(0)]);
        assert!(guard.release().await.unwrap());
        let owner = guard_owner(&mock);
        assert_eq!(
            mock.args("LOCK.RELEASE"),
            [
                vec!["k".to_string(), owner.clone()],
                vec!["k".into(), owner, "COUNT".into(), "2".into()]
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn release_of_a_lock_no_longer_held_says_false() {
        let mock = Mock::granting();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.RELEASE", [Answer::Nil]);
        assert!(!guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn reentry_that_finds_another_owner_marks_the_lease_lost() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let guard = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        mock.on("LOCK.ACQUIRE", [Answer::Nil]);
        assert!(lock.acquire(AcquireOptions::new()).await.unwrap().is_none());
        assert!(guard.is_lost());
        mock.on("LOCK.ACQUIRE", [Answer::Int(9)]);
        let fresh = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        assert_eq!(fresh.token(), 9);
        // The lost guard's release sends nothing (it would release `fresh`).
        assert!(!guard.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
        assert!(!fresh.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn reentry_with_a_new_token_means_the_old_lease_ended() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let old = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        mock.on("LOCK.ACQUIRE", [Answer::Int(8)]);
        let new = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        assert_eq!(old.lost().await, LeaseLost::NotHeld);
        assert_eq!(new.token(), 8);
        assert!(!new.is_lost());
    }
}
