//! One lease as the client knows it: the server-side hold of one handle,
//! shared by all the guards that re-entered it, with its local deadline and
//! the "lost" signal. Pure bookkeeping: no I/O here.
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
    /// Guards alive on this lease (each holds one server-side hold).
    guards: usize,
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
}

impl Lease {
    /// A new lease with one guard, confirmed by a request sent at `sent`.
    pub fn new(token: u64, params: LeaseParams, sent: Instant) -> Arc<Self> {
        let (lost_tx, _) = watch::channel(None);
        Arc::new(Self {
            token,
            params,
            state: Mutex::new(State {
                guards: 1,
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

    /// A re-entry through the same handle: one more guard, and the re-entry
    /// request (sent at `sent`) confirmed the lease. `false` when the lease
    /// is no longer live (then the caller starts a new one).
    pub fn attach(&self, sent: Instant) -> bool {
        {
            let mut s = self.state();
            if !s.live() {
                return false;
            }
            s.guards += 1;
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

    /// One guard goes away; the last one ends the lease and stops the
    /// watchdog at once (before any release is sent, so that no renewal
    /// follows it).
    pub fn detach(&self) -> Detached {
        let mut s = self.state();
        s.guards = s.guards.saturating_sub(1);
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
        let lease = Lease::new(1, params(), t0);
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
        let lease = Lease::new(1, params(), t0);
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

        let ended = Lease::new(2, params(), t0);
        ended.detach();
        assert_eq!(ended.remaining(t0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn first_loss_wins_and_is_broadcast() {
        let lease = Lease::new(1, params(), Instant::now());
        let rx = lease.subscribe();
        assert!(lease.lose(LeaseLost::NotHeld));
        assert!(!lease.lose(LeaseLost::Unconfirmed));
        assert_eq!(*rx.borrow(), Some(LeaseLost::NotHeld));
        assert!(!lease.is_live());
        assert!(!lease.attach(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_lease_is_never_lost() {
        let lease = Lease::new(1, params(), Instant::now());
        assert!(lease.attach(Instant::now()));
        assert_eq!(
            lease.detach(),
            Detached {
                last: false,
                lost: false
            }
        );
        assert_eq!(
            lease.detach(),
            Detached {
                last: true,
                lost: false
            }
        );
        assert!(!lease.lose(LeaseLost::NotHeld));
        assert_eq!(lease.lost(), None);
    }
}
