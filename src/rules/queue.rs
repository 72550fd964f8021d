//! Wait queues: clients blocked in `LOCK.ACQUIRE ... WAIT`, one strict FIFO
//! queue per `(db, key)` for every kind, and the hand-off rule that picks
//! who is served the moment capacity is freed.
//!
//! Plain Rust: a waiter is identified by an opaque `WaiterId` (the command
//! layer uses the blocked-client handle's address). Waiters are never
//! persisted; they live only as long as their clients stay blocked.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::clock::Now;
use super::lock::{Admit, FencingToken, Lock, Refusal, TokenGenerator, Want};

/// Opaque identity of a blocked client.
pub type WaiterId = usize;

/// A database number and key name.
pub type QueueKey = (i32, Box<[u8]>);

/// One blocked `LOCK.ACQUIRE ... WAIT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// Identity of the blocked client.
    pub id: WaiterId,
    /// The owner it acquires for.
    pub owner: Vec<u8>,
    /// What it asks for.
    pub want: Want,
    /// Its request id (`ID`), remembered with the token when granted.
    pub request_id: Option<Vec<u8>>,
    /// The lease it asked for, applied from the moment of the hand-off.
    pub ttl_ms: u64,
    /// When its wait ends (lease clock, ms), or `None` for `WAIT 0`.
    pub wait_deadline_ms: Option<u64>,
}

impl Waiter {
    /// True when its wait deadline has passed: it must be answered nil,
    /// never granted.
    pub fn gave_up(&self, now_ms: u64) -> bool {
        matches!(self.wait_deadline_ms, Some(d) if now_ms >= d)
    }
}

/// What serving a key's queue did: who was answered, and which holders of
/// the lock changed (to store, schedule and replicate).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Waiters found past their wait deadline: answer nil.
    pub timed_out: Vec<Waiter>,
    /// Waiters answered with an error (wrong kind, upgrade, no token left).
    pub refused: Vec<(Waiter, Refusal)>,
    /// Waiters granted, with their token, and whether the grant was fresh
    /// (a new holder) rather than a re-entry.
    pub granted: Vec<(Waiter, FencingToken, bool)>,
    /// Waiters whose request id the owner had already applied (a retry
    /// queued beside its first attempt): answered with that reply, nothing
    /// applied.
    pub answered: Vec<(Waiter, u64)>,
    /// Holders (by index) that changed, each with its deadline before the
    /// service (`None`: a new holder).
    pub touched: Vec<(usize, Option<u64>)>,
}

/// All wait queues.
#[derive(Debug, Default)]
pub struct WaitQueues {
    queues: HashMap<QueueKey, VecDeque<Waiter>>,
    location: HashMap<WaiterId, QueueKey>,
    /// The waits that end, by when: the module times waits out itself
    /// (see `waiting`), never Redis.
    deadlines: BTreeSet<(u64, WaiterId)>,
}

impl WaitQueues {
    /// Queues a waiter behind the earlier ones for the key.
    pub fn push(&mut self, db: i32, key: &[u8], waiter: Waiter) {
        let k: QueueKey = (db, key.into());
        self.location.insert(waiter.id, k.clone());
        if let Some(d) = waiter.wait_deadline_ms {
            self.deadlines.insert((d, waiter.id));
        }
        self.queues.entry(k).or_default().push_back(waiter);
    }

    /// Forgets where a waiter that left its queue was, and when its wait
    /// would have ended.
    fn forget(&mut self, w: &Waiter) {
        forget(&mut self.location, &mut self.deadlines, w);
    }

    /// The earliest end of a wait, if any wait has one.
    pub fn next_wait_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// The waiters whose wait has ended at `now_ms` (still queued: take each
    /// out with [`WaitQueues::remove`]).
    pub fn timed_out(&self, now_ms: u64) -> Vec<WaiterId> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Takes a waiter out of its queue (timeout, disconnect, unblock).
    /// `None` when it is not queued (already served or removed). With the
    /// waiter comes its key when it was the head of a queue that others
    /// still wait in: they may fit now (a semaphore waiter needing fewer
    /// permits, readers behind a writer), so the queue must be served.
    pub fn remove(&mut self, id: WaiterId) -> Option<(Waiter, Option<QueueKey>)> {
        let k = self.location.get(&id)?.clone();
        let q = self.queues.get_mut(&k)?;
        let pos = q.iter().position(|w| w.id == id)?;
        let w = q.remove(pos)?;
        let emptied = q.is_empty();
        self.forget(&w);
        if emptied {
            self.queues.remove(&k);
            return Some((w, None));
        }
        Some((w, (pos == 0).then_some(k)))
    }

    /// Number of waiters for a key.
    pub fn len(&self, db: i32, key: &[u8]) -> usize {
        self.queues
            .get(&(db, Box::<[u8]>::from(key)))
            .map_or(0, VecDeque::len)
    }

    /// Number of waiters for a key, without allocating when none wait at all.
    pub fn waiting(&self, db: i32, key: &[u8]) -> usize {
        if self.location.is_empty() {
            0
        } else {
            self.len(db, key)
        }
    }

    /// Total number of waiters.
    pub fn total(&self) -> usize {
        self.location.len()
    }

    /// True when nobody waits anywhere.
    pub fn is_empty(&self) -> bool {
        self.location.is_empty()
    }

    /// Serves the queue of `key` against its `lock` (empty when the key is
    /// free) at `now_ms`, in the same event that freed capacity or granted
    /// a share:
    /// - from the head, in strict FIFO order, every waiter that can be
    ///   granted is (consecutive readers together; semaphore waiters while
    ///   permits suffice); a waiter whose request is of the wrong kind, or
    ///   an upgrade, is refused; the first that must go on waiting stops it;
    /// - then, further back, waiters of an owner that already holds the lock
    ///   and ask for a re-entry (`SHARED`, or exclusive when it holds it
    ///   exclusively) are granted at once;
    /// - waiters found past their wait deadline on the way are answered nil.
    ///
    /// A fresh grant takes a new token from `tokens`. Holders are only added
    /// or changed, never removed, so the indices in `touched` stay valid.
    pub fn serve(
        &mut self,
        db: i32,
        key: &[u8],
        lock: &mut Lock,
        tokens: &mut TokenGenerator,
        now: Now,
    ) -> Service {
        let now_ms = now.lease_ms;
        let mut out = Service::default();
        if self.location.is_empty() {
            return out;
        }
        let k: QueueKey = (db, key.into());
        let Self {
            queues,
            location,
            deadlines,
        } = self;
        let Some(q) = queues.get_mut(&k) else {
            return out;
        };
        while let Some(head) = q.front() {
            let verdict = if head.gave_up(now_ms) {
                None
            } else {
                match lock.admit(&head.owner, head.want, true) {
                    Admit::Busy => break,
                    verdict => Some(verdict),
                }
            };
            let Some(w) = q.pop_front() else { break };
            forget(location, deadlines, &w);
            match verdict {
                None => out.timed_out.push(w),
                Some(verdict) => grant(lock, tokens, now, w, verdict, &mut out),
            }
        }
        if lock.limit == 0 && !lock.is_empty() && !q.is_empty() {
            let mut rest = VecDeque::with_capacity(q.len());
            for w in q.drain(..) {
                let reentry = lock.find(&w.owner).filter(|&i| match w.want {
                    Want::Shared => true,
                    Want::Exclusive => lock.holders.get(i).is_some_and(|h| h.exclusive > 0),
                    Want::Permits { .. } => false,
                });
                match reentry {
                    Some(i) if !w.gave_up(now_ms) => {
                        forget(location, deadlines, &w);
                        grant(lock, tokens, now, w, Admit::Reenter(i), &mut out);
                    }
                    _ => rest.push_back(w),
                }
            }
            *q = rest;
        }
        if q.is_empty() {
            queues.remove(&k);
        }
        out
    }

    /// Removes and returns every waiter of a key.
    pub fn take_all(&mut self, db: i32, key: &[u8]) -> Vec<Waiter> {
        let Some(q) = self.queues.remove(&(db, Box::<[u8]>::from(key))) else {
            return Vec::new();
        };
        for w in &q {
            self.forget(w);
        }
        q.into()
    }

    /// The keys with waiters in one database (`Some(db)`) or in all.
    pub fn keys(&self, db: Option<i32>) -> Vec<QueueKey> {
        self.queues
            .keys()
            .filter(|(d, _)| db.is_none_or(|want| *d == want))
            .cloned()
            .collect()
    }
}

/// [`WaitQueues::forget`] on the two indexes (for borrows that hold a queue).
fn forget(
    location: &mut HashMap<WaiterId, QueueKey>,
    deadlines: &mut BTreeSet<(u64, WaiterId)>,
    w: &Waiter,
) {
    location.remove(&w.id);
    if let Some(d) = w.wait_deadline_ms {
        deadlines.remove(&(d, w.id));
    }
}

/// Applies one waiter's verdict to the lock and records it.
fn grant(
    lock: &mut Lock,
    tokens: &mut TokenGenerator,
    now: Now,
    w: Waiter,
    verdict: Admit,
    out: &mut Service,
) {
    let now_ms = now.lease_ms;
    match verdict {
        Admit::Fresh => match tokens.next(now.wall_ms) {
            Ok(token) => {
                let i = lock.add(&w.owner, w.want, token, now_ms, w.ttl_ms);
                if let Some(h) = lock.holders.get_mut(i) {
                    h.remember(w.request_id.as_deref(), token);
                }
                out.touched.push((i, None));
                out.granted.push((w, token, true));
            }
            Err(_) => out.refused.push((w, Refusal::TokensExhausted)),
        },
        Admit::Reenter(i) => {
            let done = w
                .request_id
                .as_deref()
                .and_then(|id| lock.holders.get(i).and_then(|h| h.answered(id)));
            if let Some(reply) = done {
                out.answered.push((w, reply));
                return;
            }
            let before = lock.holders.get(i).map(|h| h.deadline_ms);
            if !out.touched.iter().any(|(j, _)| *j == i) {
                out.touched.push((i, before));
            }
            if let Some(token) = lock.reenter(i, w.want, now_ms, w.ttl_ms) {
                if let Some(h) = lock.holders.get_mut(i) {
                    h.remember(w.request_id.as_deref(), token);
                }
                out.granted.push((w, token, false));
            }
        }
        Admit::Refused(why) => out.refused.push((w, why)),
        Admit::Busy => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::lock::Mode;

    const X: Want = Want::Exclusive;
    const S: Want = Want::Shared;

    fn w(id: usize, owner: &str, want: Want, deadline: Option<u64>) -> Waiter {
        Waiter {
            id,
            owner: owner.as_bytes().to_vec(),
            want,
            request_id: None,
            ttl_ms: 1000,
            wait_deadline_ms: deadline,
        }
    }

    fn ids(ws: &[(Waiter, FencingToken, bool)]) -> Vec<usize> {
        ws.iter().map(|(w, _, _)| w.id).collect()
    }

    fn serve(q: &mut WaitQueues, lock: &mut Lock, now: u64) -> Service {
        let mut tokens = TokenGenerator::default();
        tokens.observe(100);
        q.serve(0, b"k", lock, &mut tokens, Now::at(now))
    }

    #[test]
    fn waits_end_in_deadline_order_and_a_waiter_that_left_is_forgotten() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, Some(300)));
        q.push(0, b"k", w(2, "b", X, None));
        q.push(0, b"j", w(3, "c", X, Some(100)));
        q.push(0, b"k", w(4, "d", X, Some(200)));
        assert_eq!(q.next_wait_deadline(), Some(100));
        assert_eq!(q.timed_out(99), Vec::<usize>::new());
        assert_eq!(q.timed_out(200), vec![3, 4]);
        // Removed (the wait timer, a disconnect): its deadline goes too.
        assert!(q.remove(3).is_some());
        assert_eq!(q.next_wait_deadline(), Some(200));
        // Granted by a hand-off: forgotten as well.
        let mut lock = Lock::default();
        assert_eq!(ids(&serve(&mut q, &mut lock, 0).granted), vec![1]);
        assert_eq!(q.timed_out(1000), vec![4]);
        // All of a key's waiters taken at once (the key was deleted).
        assert_eq!(q.take_all(0, b"k").len(), 2);
        assert_eq!(q.next_wait_deadline(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_waiter_past_its_deadline_is_answered_nil_and_forgotten() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, Some(50)));
        q.push(0, b"k", w(2, "b", X, Some(500)));
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 100);
        assert_eq!(
            s.timed_out.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(ids(&s.granted), vec![2]);
        assert_eq!(q.next_wait_deadline(), None);
    }

    #[test]
    fn exclusive_hand_off_is_first_in_first_out() {
        let mut q = WaitQueues::default();
        for (id, o) in [(1, "a"), (2, "b"), (3, "c")] {
            q.push(0, b"k", w(id, o, X, None));
        }
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1]);
        assert_eq!(s.touched, vec![(0, None)]);
        assert_eq!(lock.holders[0].owner.as_slice(), b"a");
        assert_eq!(q.len(0, b"k"), 2);
        let mut lock = Lock::default();
        assert_eq!(ids(&serve(&mut q, &mut lock, 0).granted), vec![2]);
        assert_eq!(q.total(), 1);
    }

    #[test]
    fn consecutive_readers_at_the_head_are_granted_together() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "r1", S, None));
        q.push(0, b"k", w(2, "r2", S, None));
        q.push(0, b"k", w(3, "w", X, None));
        q.push(0, b"k", w(4, "r3", S, None));
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1, 2]);
        let tokens: Vec<_> = s.granted.iter().map(|g| g.1).collect();
        assert!(tokens[0] < tokens[1], "each reader its own, newer token");
        // The writer stops the service; the reader behind it waits.
        assert_eq!(q.len(0, b"k"), 2);
        assert_eq!(lock.mode(), Mode::Shared);
    }

    #[test]
    fn a_writer_waits_for_every_reader_then_readers_wait_for_it() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "w", X, None));
        q.push(0, b"k", w(2, "r", S, None));
        let mut lock = Lock::grant(b"r0", S, 1, 0, 100);
        assert!(serve(&mut q, &mut lock, 0).granted.is_empty());
        lock.remove(0);
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1]);
        assert_eq!(q.len(0, b"k"), 1);
    }

    #[test]
    fn semaphore_waiters_are_strictly_fifo() {
        let mut q = WaitQueues::default();
        let p = |count| Want::Permits { limit: 4, count };
        q.push(0, b"k", w(1, "big", p(3), None));
        q.push(0, b"k", w(2, "small", p(1), None));
        let mut lock = Lock::grant(b"h", p(2), 1, 0, 100);
        // Two permits free: the head needs three, and the later one needing
        // one does not overtake it.
        assert!(serve(&mut q, &mut lock, 0).granted.is_empty());
        assert_eq!(lock.release(b"h", 1).map(|r| r.0), Ok(0));
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1]);
        assert_eq!(lock.available(), 0);
        assert_eq!(q.len(0, b"k"), 1);
    }

    #[test]
    fn waiter_past_its_deadline_is_never_granted() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, Some(100)));
        q.push(0, b"k", w(2, "b", X, Some(300)));
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 100);
        assert_eq!(
            s.timed_out.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(ids(&s.granted), vec![2]);
        assert!(q.is_empty());
    }

    #[test]
    fn holders_reenter_from_anywhere_in_the_queue() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, None));
        q.push(0, b"k", w(2, "b", X, None));
        q.push(0, b"k", w(3, "a", X, None));
        q.push(0, b"k", w(4, "a", S, None));
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1, 3, 4]);
        assert_eq!(
            s.granted.iter().map(|g| g.2).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        assert_eq!(s.touched, vec![(0, None)]);
        assert_eq!((lock.holders[0].exclusive, lock.holders[0].shared), (2, 1));
        assert_eq!(q.len(0, b"k"), 1);
    }

    #[test]
    fn a_retry_queued_beside_its_first_attempt_is_answered_not_applied() {
        let mut q = WaitQueues::default();
        let with_id = |id| Waiter {
            request_id: Some(b"req-1".to_vec()),
            ..w(id, "a", X, None)
        };
        q.push(0, b"k", with_id(1));
        q.push(0, b"k", w(2, "b", X, None));
        q.push(0, b"k", with_id(3));
        let mut lock = Lock::default();
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(ids(&s.granted), vec![1]);
        let token = s.granted[0].1;
        assert_eq!(
            s.answered
                .iter()
                .map(|(w, r)| (w.id, *r))
                .collect::<Vec<_>>(),
            vec![(3, token)]
        );
        assert_eq!(lock.holders[0].exclusive, 1, "the retry added no hold");
        assert_eq!(lock.answered(b"a", b"req-1"), Some(token));
    }

    #[test]
    fn wrong_kinds_and_upgrades_at_the_head_are_refused() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "r", X, None));
        q.push(
            0,
            b"k",
            w(2, "z", Want::Permits { limit: 2, count: 1 }, None),
        );
        q.push(0, b"k", w(3, "r2", S, None));
        let mut lock = Lock::grant(b"r", S, 1, 0, 100);
        let s = serve(&mut q, &mut lock, 0);
        assert_eq!(
            s.refused
                .iter()
                .map(|(w, r)| (w.id, *r))
                .collect::<Vec<_>>(),
            vec![(1, Refusal::Upgrade), (2, Refusal::NotSemaphore)]
        );
        assert_eq!(ids(&s.granted), vec![3]);
    }

    #[test]
    fn no_token_left_refuses_fresh_grants() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, None));
        let mut tokens = TokenGenerator::default();
        tokens.observe(crate::rules::lock::MAX_TOKEN);
        let mut lock = Lock::default();
        let s = q.serve(0, b"k", &mut lock, &mut tokens, Now::at(0));
        assert_eq!(s.refused.len(), 1);
        assert!(lock.is_empty());
    }

    #[test]
    fn removed_waiter_leaves_the_queue() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, None));
        q.push(0, b"k", w(2, "b", X, None));
        assert_eq!(
            q.remove(1).map(|(w, k)| (w.id, k)),
            Some((1, Some((0, b"k"[..].into()))))
        );
        assert_eq!(q.remove(1), None);
        let mut lock = Lock::default();
        assert_eq!(ids(&serve(&mut q, &mut lock, 0).granted), vec![2]);
        assert_eq!(q.remove(2), None);
    }

    #[test]
    fn only_a_head_that_leaves_others_waiting_asks_for_service() {
        let mut q = WaitQueues::default();
        for id in 1..=3 {
            q.push(0, b"k", w(id, "a", X, None));
        }
        assert_eq!(q.remove(2).map(|(_, k)| k), Some(None), "not the head");
        assert_eq!(q.remove(1).map(|(_, k)| k.is_some()), Some(true));
        assert_eq!(q.remove(3).map(|(_, k)| k), Some(None), "nobody left");
    }

    #[test]
    fn queues_are_per_db_and_key() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", X, None));
        q.push(1, b"k", w(2, "a", X, None));
        q.push(0, b"j", w(3, "a", X, None));
        assert_eq!(q.len(0, b"k"), 1);
        assert_eq!(q.waiting(1, b"k"), 1);
        assert_eq!(q.keys(Some(0)).len(), 2);
        assert_eq!(q.keys(None).len(), 3);
        assert_eq!(q.take_all(0, b"k").len(), 1);
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn serving_with_nobody_waiting_changes_nothing() {
        let mut q = WaitQueues::default();
        let mut lock = Lock::default();
        assert_eq!(serve(&mut q, &mut lock, 0), Service::default());
        assert!(lock.is_empty());
    }
}
