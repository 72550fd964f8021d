//! Wait queues: clients blocked in `LOCK.ACQUIRE ... WAIT`, one strict FIFO
//! queue per `(db, key)`, and the hand-off rule that picks who gets a lock
//! the moment it becomes free.
//!
//! Plain Rust: a waiter is identified by an opaque `WaiterId` (the command
//! layer uses the blocked-client handle's address). Waiters are never
//! persisted; they live only as long as their clients stay blocked.

use std::collections::{HashMap, VecDeque};

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
    /// The lease it asked for, applied from the moment of the hand-off.
    pub ttl_ms: u64,
    /// When its wait ends (Unix ms), or `None` for `WAIT 0`.
    pub wait_deadline_ms: Option<u64>,
}

impl Waiter {
    /// True when its wait deadline has passed: it must be answered nil,
    /// never granted.
    pub fn gave_up(&self, now_ms: u64) -> bool {
        matches!(self.wait_deadline_ms, Some(d) if now_ms >= d)
    }
}

/// Who gets a lock that just became free.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HandOff {
    /// Waiters found past their wait deadline: answer nil.
    pub timed_out: Vec<Waiter>,
    /// The new holder (fresh grant), if anyone was waiting.
    pub granted: Option<Waiter>,
    /// Further waiters for the same owner: they re-enter at once.
    pub reentrant: Vec<Waiter>,
}

/// All wait queues.
#[derive(Debug, Default)]
pub struct WaitQueues {
    queues: HashMap<QueueKey, VecDeque<Waiter>>,
    location: HashMap<WaiterId, QueueKey>,
}

impl WaitQueues {
    /// Queues a waiter behind the earlier ones for the key.
    pub fn push(&mut self, db: i32, key: &[u8], waiter: Waiter) {
        let k: QueueKey = (db, key.into());
        self.location.insert(waiter.id, k.clone());
        self.queues.entry(k).or_default().push_back(waiter);
    }

    /// Takes a waiter out of its queue (timeout, disconnect, unblock).
    /// `None` when it is not queued (already served or removed).
    pub fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let k = self.location.remove(&id)?;
        let q = self.queues.get_mut(&k)?;
        let pos = q.iter().position(|w| w.id == id)?;
        let w = q.remove(pos);
        if q.is_empty() {
            self.queues.remove(&k);
        }
        w
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

    /// Picks who gets the lock on `key`, which just became free at `now_ms`:
    /// the first waiter still within its wait (strict FIFO), plus every other
    /// queued waiter for that same owner (they re-enter). Waiters found past
    /// their deadline on the way are returned to be answered nil. All of them
    /// leave the queue.
    pub fn hand_off(&mut self, db: i32, key: &[u8], now_ms: u64) -> HandOff {
        let mut out = HandOff::default();
        if self.location.is_empty() {
            return out;
        }
        let k: QueueKey = (db, key.into());
        let Some(q) = self.queues.get_mut(&k) else {
            return out;
        };
        while let Some(w) = q.pop_front() {
            self.location.remove(&w.id);
            if w.gave_up(now_ms) {
                out.timed_out.push(w);
            } else {
                out.granted = Some(w);
                break;
            }
        }
        if let Some(holder) = &out.granted {
            let (same, rest): (VecDeque<Waiter>, VecDeque<Waiter>) =
                q.drain(..).partition(|w| w.owner == holder.owner);
            *q = rest;
            for w in same {
                self.location.remove(&w.id);
                if w.gave_up(now_ms) {
                    out.timed_out.push(w);
                } else {
                    out.reentrant.push(w);
                }
            }
        }
        if q.is_empty() {
            self.queues.remove(&k);
        }
        out
    }

    /// Takes every waiter for `owner` on `key` (they re-enter a lock that
    /// owner already holds).
    pub fn take_owner(&mut self, db: i32, key: &[u8], owner: &[u8]) -> Vec<Waiter> {
        if self.location.is_empty() {
            return Vec::new();
        }
        let k: QueueKey = (db, key.into());
        let Some(q) = self.queues.get_mut(&k) else {
            return Vec::new();
        };
        let (same, rest): (VecDeque<Waiter>, VecDeque<Waiter>) =
            q.drain(..).partition(|w| w.owner == owner);
        *q = rest;
        if q.is_empty() {
            self.queues.remove(&k);
        }
        for w in &same {
            self.location.remove(&w.id);
        }
        same.into()
    }

    /// Removes and returns every waiter of a key.
    pub fn take_all(&mut self, db: i32, key: &[u8]) -> Vec<Waiter> {
        let Some(q) = self.queues.remove(&(db, Box::<[u8]>::from(key))) else {
            return Vec::new();
        };
        for w in &q {
            self.location.remove(&w.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: usize, owner: &str, deadline: Option<u64>) -> Waiter {
        Waiter {
            id,
            owner: owner.as_bytes().to_vec(),
            ttl_ms: 1000,
            wait_deadline_ms: deadline,
        }
    }

    #[test]
    fn hand_off_is_first_in_first_out() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", None));
        q.push(0, b"k", w(2, "b", None));
        q.push(0, b"k", w(3, "c", None));
        assert_eq!(q.hand_off(0, b"k", 0).granted.map(|w| w.id), Some(1));
        assert_eq!(q.hand_off(0, b"k", 0).granted.map(|w| w.id), Some(2));
        assert_eq!(q.len(0, b"k"), 1);
        assert_eq!(q.total(), 1);
    }

    #[test]
    fn waiter_past_its_deadline_is_never_granted() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", Some(100)));
        q.push(0, b"k", w(2, "b", Some(300)));
        let h = q.hand_off(0, b"k", 100);
        assert_eq!(
            h.timed_out.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(h.granted.map(|w| w.id), Some(2));
        assert!(q.is_empty());
    }

    #[test]
    fn same_owner_waiters_reenter_with_the_new_holder() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", None));
        q.push(0, b"k", w(2, "b", None));
        q.push(0, b"k", w(3, "a", None));
        let h = q.hand_off(0, b"k", 0);
        assert_eq!(h.granted.map(|w| w.id), Some(1));
        assert_eq!(
            h.reentrant.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(q.len(0, b"k"), 1);
    }

    #[test]
    fn removed_waiter_leaves_the_queue() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", None));
        q.push(0, b"k", w(2, "b", None));
        assert_eq!(q.remove(1).map(|w| w.id), Some(1));
        assert_eq!(q.remove(1), None);
        assert_eq!(q.hand_off(0, b"k", 0).granted.map(|w| w.id), Some(2));
        assert_eq!(q.remove(2), None);
    }

    #[test]
    fn queues_are_per_db_and_key() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", None));
        q.push(1, b"k", w(2, "a", None));
        q.push(0, b"j", w(3, "a", None));
        assert_eq!(q.len(0, b"k"), 1);
        assert_eq!(q.waiting(1, b"k"), 1);
        assert_eq!(q.keys(Some(0)).len(), 2);
        assert_eq!(q.keys(None).len(), 3);
        assert_eq!(q.take_all(0, b"k").len(), 1);
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn take_owner_takes_only_that_owner() {
        let mut q = WaitQueues::default();
        q.push(0, b"k", w(1, "a", None));
        q.push(0, b"k", w(2, "b", None));
        q.push(0, b"k", w(3, "a", None));
        assert_eq!(q.take_owner(0, b"k", b"a").len(), 2);
        assert_eq!(q.total(), 1);
        assert_eq!(q.remove(3), None);
    }

    #[test]
    fn hand_off_with_nobody_waiting_grants_nobody() {
        let mut q = WaitQueues::default();
        assert_eq!(q.hand_off(0, b"k", 0), HandOff::default());
    }
}
