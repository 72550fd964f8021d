//! One lease as the client knows it: the server-side hold of one handle,
//! shared by all the guards that re-entered it, with its local deadline and
//! the "lost" signal; and what each guard stands for on the server (a
//! [`Hold`]), so that a guard's release gives back exactly its own holds.
//! Pure bookkeeping: no I/O here.
//!
//! The server keeps one lease per key and owner, whatever the owner holds
//! there: every guard of one handle (exclusive, shared, or some permits)
//! joins the handle's one lease, and one renewal renews them all.
//!
//! Why the deadline is safe: every request that refreshes a lease (acquire,
//! re-entry, renewal) carries the lease's one fixed ttl, and the server starts
//! the new lease when it processes the request, which is after the client
//! sent it. So after a confirmed request sent at `s`, the server holds the
//! lease at least until `s + ttl` on its clock, and the local deadline
//! `s + ttl − margin` comes before that.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::LeaseLost;
use crate::options::LeaseParams;

/// What one guard stands for on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// One exclusive (write) hold.
    Exclusive,
    /// One shared (read) hold.
    Shared,
    /// This many permits of a semaphore.
    Permits(u64),
}

/// A lease shared by the guards of one handle.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The fencing token of the grant.
    pub token: u64,
    /// Fixed for the lease's life (see the module comment).
    pub params: LeaseParams,
    state: Mutex<State>,
    lost_tx: watch::Sender<Option<LeaseLost>>,
}

#[derive(Debug)]
struct State {
    /// Guards alive on this lease (each stands for its [`Hold`]).
    guards: usize,
    /// Of those, the exclusive ones.
    exclusive: usize,
    /// Shared holds whose guards are gone but which are still held on the
    /// server: released together with the last exclusive hold (see
    /// [`Lease::detach`]).
    owed: u64,
    /// The local deadline: until then the lease is known to be held.
    deadline: Instant,
    /// The send time of the request that set `deadline`.
    confirmed_at: Instant,
    /// All guards are gone (released or dropped).
    ended: bool,
    lost: Option<LeaseLost>,
    watchdog: Option<AbortHandle>,
}

impl State {
    /// Neither ended nor lost.
    fn live(&self) -> bool {
        !self.ended && self.lost.is_none()
    }
}

/// What [`Lease::detach`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Detached {
    /// This was the last guard: the lease has ended.
    pub last: bool,
    /// The lease had been lost: nothing must be sent for it.
    pub lost: bool,
    /// The `COUNT` to release now: the guard's own holds or permits, plus
    /// the shared holds owed when this was the last exclusive guard; 0 when
    /// its release is put off (a shared hold under a live exclusive one).
    pub count: u64,
}

impl Lease {
    /// A new lease with one guard standing for `hold`, confirmed by a
    /// request sent at `sent`.
    pub fn new(token: u64, params: LeaseParams, hold: Hold, sent: Instant) -> Arc<Self> {
        let (lost_tx, _) = watch::channel(None);
        Arc::new(Self {
            token,
            params,
            state: Mutex::new(State {
                guards: 1,
                exclusive: usize::from(hold == Hold::Exclusive),
                owed: 0,
                deadline: sent + params.confirmed_for(),
                confirmed_at: sent,
                ended: false,
                lost: None,
                watchdog: None,
            }),
            lost_tx,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; a poisoned one is still
        // consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of the "lost" signal (`Some(reason)` once lost).
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaseLost>> {
        self.lost_tx.subscribe()
    }

    /// Held as far as the client knows: not lost, not ended.
    pub fn is_live(&self) -> bool {
        self.state().live()
    }

    /// Why it was lost, if it was.
    pub fn lost(&self) -> Option<LeaseLost> {
        self.state().lost
    }

    /// The local deadline.
    pub fn deadline(&self) -> Instant {
        self.state().deadline
    }

    /// How long from `now` the lease is still known to be held: until the
    /// local deadline; zero once lost or ended.
    pub fn remaining(&self, now: Instant) -> Duration {
        let s = self.state();
        if s.live() {
            s.deadline.saturating_duration_since(now)
        } else {
            Duration::ZERO
        }
    }

    /// The send time of the request that last confirmed the lease.
    pub fn confirmed_at(&self) -> Instant {
        self.state().confirmed_at
    }

    /// A request sent at `sent` was confirmed by the server: moves the
    /// deadline forward (never back: an older reply that arrives late must
    /// not shorten it, and a later one cannot be shorter with a fixed ttl).
    pub fn confirm(&self, sent: Instant) {
        let mut s = self.state();
        if !s.live() {
            return;
        }
        let deadline = sent + self.params.confirmed_for();
        if deadline > s.deadline {
            s.deadline = deadline;
            s.confirmed_at = sent;
        }
    }

    /// A re-entry through the same handle: one more guard standing for
    /// `hold`, and the re-entry request (sent at `sent`) confirmed the lease.
    /// `false` when the lease is no longer live (then the caller starts a
    /// new one).
    pub fn attach(&self, hold: Hold, sent: Instant) -> bool {
        {
            let mut s = self.state();
            if !s.live() {
                return false;
            }
            s.guards += 1;
            if hold == Hold::Exclusive {
                s.exclusive += 1;
            }
        }
        self.confirm(sent);
        true
    }

    /// Marks the lease lost and tells every guard. The first reason wins;
    /// a lease whose guards are all gone is not lost, it ended. Returns
    /// whether this call marked it.
    pub fn lose(&self, reason: LeaseLost) -> bool {
        let mut s = self.state();
        if !s.live() {
            return false;
        }
        s.lost = Some(reason);
        if let Some(w) = s.watchdog.take() {
            w.abort();
        }
        drop(s);
        self.lost_tx.send_replace(Some(reason));
        true
    }

    /// Records the watchdog task so that the end of the lease stops it.
    pub fn set_watchdog(&self, task: AbortHandle) {
        let mut s = self.state();
        if !s.live() {
            task.abort();
        } else {
            s.watchdog = Some(task);
        }
    }

    /// A shared hold the server counts for this lease, to be released with
    /// the last exclusive guard (a shared grant that failed its durability
    /// check while an exclusive guard lives). `false` when no exclusive
    /// guard is live (then the caller releases it at once).
    pub fn owe_shared(&self) -> bool {
        let mut s = self.state();
        if !s.live() || s.exclusive == 0 {
            return false;
        }
        s.owed += 1;
        true
    }

    /// The guard standing for `hold` goes away; the last one ends the lease
    /// and stops the watchdog at once (before any release is sent, so that
    /// no renewal follows it). Says what to release.
    ///
    /// The server releases an owner's exclusive holds before its shared
    /// ones. So a shared guard that goes while an exclusive guard of the
    /// lease lives must not release anything yet — that would end the write
    /// lock under the live exclusive guard; its hold is owed, and the last
    /// exclusive guard releases it together with its own. (The exclusive
    /// guard going first is the downgrade: the shared holds stay.)
    pub fn detach(&self, hold: Hold) -> Detached {
        let mut s = self.state();
        s.guards = s.guards.saturating_sub(1);
        let count = match hold {
            Hold::Exclusive => {
                s.exclusive = s.exclusive.saturating_sub(1);
                if s.exclusive == 0 {
                    1 + std::mem::take(&mut s.owed)
                } else {
                    1
                }
            }
            Hold::Shared if s.exclusive > 0 => {
                s.owed += 1;
                0
            }
            Hold::Shared => 1,
            Hold::Permits(n) => n,
        };
        let last = s.guards == 0;
        if last {
            s.ended = true;
            if let Some(w) = s.watchdog.take() {
                w.abort();
            }
        }
        Detached {
            last,
            lost: s.lost.is_some(),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::options::AcquireOptions;

    fn params() -> LeaseParams {
        AcquireOptions::new()
            .ttl(Duration::from_millis(300))
            .params()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_is_send_time_plus_ttl_minus_margin() {
        let t0 = Instant::now();
        let lease = Lease::new(1, params(), Hold::Exclusive, t0);
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(270));
        lease.confirm(t0 + Duration::from_millis(100));
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(370));
        // A late reply to an older request never moves it back.
        lease.confirm(t0 + Duration::from_millis(50));
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(370));
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_counts_down_to_the_deadline_and_is_zero_once_lost_or_ended() {
        let t0 = Instant::now();
        let lease = Lease::new(1, params(), Hold::Exclusive, t0);
        assert_eq!(lease.remaining(t0), Duration::from_millis(270));
        assert_eq!(
            lease.remaining(t0 + Duration::from_millis(200)),
            Duration::from_millis(70)
        );
        assert_eq!(
            lease.remaining(t0 + Duration::from_millis(300)),
            Duration::ZERO
        );
        lease.confirm(t0 + Duration::from_millis(100));
        assert_eq!(
            lease.remaining(t0 + Duration::from_millis(300)),
            Duration::from_millis(70)
        );
        lease.lose(LeaseLost::Unconfirmed);
        assert_eq!(lease.remaining(t0), Duration::ZERO);

        let ended = Lease::new(2, params(), Hold::Exclusive, t0);
        ended.detach(Hold::Exclusive);
        assert_eq!(ended.remaining(t0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn first_loss_wins_and_is_broadcast() {
        let lease = Lease::new(1, params(), Hold::Exclusive, Instant::now());
        let rx = lease.subscribe();
        assert!(lease.lose(LeaseLost::NotHeld));
        assert!(!lease.lose(LeaseLost::Unconfirmed));
        assert_eq!(*rx.borrow(), Some(LeaseLost::NotHeld));
        assert!(!lease.is_live());
        assert!(!lease.attach(Hold::Exclusive, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_lease_is_never_lost() {
        let lease = Lease::new(1, params(), Hold::Exclusive, Instant::now());
        assert!(lease.attach(Hold::Exclusive, Instant::now()));
        assert_eq!(
            lease.detach(Hold::Exclusive),
            Detached {
                last: false,
                lost: false,
                count: 1
            }
        );
        assert_eq!(
            lease.detach(Hold::Exclusive),
            Detached {
                last: true,
                lost: false,
                count: 1
            }
        );
        assert!(!lease.lose(LeaseLost::NotHeld));
        assert_eq!(lease.lost(), None);
    }

    fn detached(last: bool, count: u64) -> Detached {
        Detached {
            last,
            lost: false,
            count,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_guard_under_a_live_exclusive_one_is_released_with_the_last_exclusive() {
        let t0 = Instant::now();
        let lease = Lease::new(1, params(), Hold::Exclusive, t0);
        assert!(lease.attach(Hold::Exclusive, t0));
        assert!(lease.attach(Hold::Shared, t0));
        assert!(lease.attach(Hold::Shared, t0));
        // Releasing a shared hold now would take an exclusive one.
        assert_eq!(lease.detach(Hold::Shared), detached(false, 0));
        assert_eq!(lease.detach(Hold::Exclusive), detached(false, 1));
        // The last exclusive guard takes the owed shared hold along.
        assert_eq!(lease.detach(Hold::Exclusive), detached(false, 2));
        assert_eq!(lease.detach(Hold::Shared), detached(true, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_exclusive_guard_going_first_leaves_the_shared_holds_downgrade() {
        let t0 = Instant::now();
        let lease = Lease::new(1, params(), Hold::Exclusive, t0);
        assert!(lease.attach(Hold::Shared, t0));
        assert_eq!(lease.detach(Hold::Exclusive), detached(false, 1));
        assert_eq!(lease.detach(Hold::Shared), detached(true, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn permit_guards_release_their_own_permits() {
        let t0 = Instant::now();
        let lease = Lease::new(1, params(), Hold::Permits(3), t0);
        assert!(lease.attach(Hold::Permits(2), t0));
        assert_eq!(lease.detach(Hold::Permits(3)), detached(false, 3));
        assert_eq!(lease.detach(Hold::Permits(2)), detached(true, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_owed_shared_hold_needs_a_live_exclusive_guard() {
        let t0 = Instant::now();
        let shared = Lease::new(1, params(), Hold::Shared, t0);
        assert!(!shared.owe_shared());
        let lease = Lease::new(2, params(), Hold::Exclusive, t0);
        assert!(lease.owe_shared());
        assert_eq!(lease.detach(Hold::Exclusive), detached(true, 2));
    }
}
