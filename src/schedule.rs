//! The lease schedule: every live lease ordered by deadline, so that one
//! module timer, armed for the earliest deadline, can expire leases on time
//! however many there are (an ordered map: O(log n) per change, the due
//! ones popped in order).
//!
//! An entry names the lock by `(db, key)` and is identified by
//! `(deadline_ms, token)`. Entries can go stale (the key was deleted,
//! overwritten, flushed); the expiry path re-reads the key and acts only
//! when the lock there still carries the same token and deadline, so a
//! stale entry is harmless and never acts on the wrong key.

use std::collections::BTreeMap;

use crate::lock::FencingToken;

/// Key names up to this many bytes are kept inside the schedule's entry
/// (no allocation of their own); longer ones spill to the heap.
pub const INLINE_KEY_LEN: usize = 24;

/// A key name as the schedule keeps it.
pub type KeyName = smallvec::SmallVec<[u8; INLINE_KEY_LEN]>;

/// Where a lease lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRef {
    /// The database number.
    pub db: i32,
    /// The key name.
    pub key: KeyName,
}

/// A lease due for expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueLease {
    /// Its deadline (Unix ms).
    pub deadline_ms: u64,
    /// The token of the lock that had this lease.
    pub token: FencingToken,
    /// Where it lives.
    pub at: LeaseRef,
}

/// All tracked leases, by deadline.
#[derive(Debug, Default)]
pub struct Schedule {
    by_deadline: BTreeMap<(u64, FencingToken), LeaseRef>,
}

impl Schedule {
    /// Tracks a lease (replacing an entry with the same deadline and token).
    pub fn insert(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) {
        self.by_deadline.insert(
            (deadline_ms, token),
            LeaseRef {
                db,
                key: KeyName::from_slice(key),
            },
        );
    }

    /// Stops tracking a lease; false when it was not tracked.
    pub fn remove(&mut self, deadline_ms: u64, token: FencingToken) -> bool {
        self.by_deadline.remove(&(deadline_ms, token)).is_some()
    }

    /// Moves a lease to a new deadline (a renewal or re-entry).
    pub fn reschedule(
        &mut self,
        old_deadline_ms: u64,
        new_deadline_ms: u64,
        token: FencingToken,
        db: i32,
        key: &[u8],
    ) {
        if old_deadline_ms == new_deadline_ms {
            return;
        }
        match self.by_deadline.remove(&(old_deadline_ms, token)) {
            Some(at) => {
                self.by_deadline.insert((new_deadline_ms, token), at);
            }
            None => self.insert(new_deadline_ms, token, db, key),
        }
    }

    /// The earliest tracked deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.keys().next().map(|(d, _)| *d)
    }

    /// Removes and returns up to `limit` leases whose deadline is `<= now_ms`,
    /// earliest first.
    pub fn pop_due(&mut self, now_ms: u64, limit: usize) -> Vec<DueLease> {
        let mut out = Vec::new();
        while out.len() < limit {
            let due =
                matches!(self.by_deadline.first_key_value(), Some(((d, _), _)) if *d <= now_ms);
            if !due {
                break;
            }
            if let Some(((deadline_ms, token), at)) = self.by_deadline.pop_first() {
                out.push(DueLease {
                    deadline_ms,
                    token,
                    at,
                });
            }
        }
        out
    }

    /// Points a lease at a new place (RENAME, MOVE, SWAPDB).
    pub fn relocate(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) {
        self.insert(deadline_ms, token, db, key);
    }

    /// SWAPDB: leases in `a` now live in `b` and the other way round.
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        for at in self.by_deadline.values_mut() {
            if at.db == a {
                at.db = b;
            } else if at.db == b {
                at.db = a;
            }
        }
    }

    /// FLUSHDB / FLUSHALL: forgets the leases of one database (`Some(db)`)
    /// or of all (`None`).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            None => self.by_deadline.clear(),
            Some(db) => self.by_deadline.retain(|_, at| at.db != db),
        }
    }

    /// How many leases are tracked.
    pub fn len(&self) -> usize {
        self.by_deadline.len()
    }

    /// True when no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_deadline.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    use super::*;

    #[test]
    fn due_leases_pop_in_deadline_order() {
        let mut s = Schedule::default();
        s.insert(30, 3, 0, b"c");
        s.insert(10, 1, 0, b"a");
        s.insert(20, 2, 1, b"b");
        assert_eq!(s.next_deadline(), Some(10));
        let due = s.pop_due(20, 100);
        assert_eq!(due.len(), 2);
        assert_eq!(&*due[0].at.key, b"a");
        assert_eq!(due[1].at.db, 1);
        assert_eq!(s.next_deadline(), Some(30));
    }

    #[test]
    fn nothing_is_due_before_its_deadline() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"a");
        assert!(s.pop_due(9, 100).is_empty());
        assert_eq!(s.pop_due(10, 100).len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn pop_due_respects_the_batch_limit() {
        let mut s = Schedule::default();
        for i in 0..10 {
            s.insert(i, i, 0, b"k");
        }
        assert_eq!(s.pop_due(100, 4).len(), 4);
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn reschedule_moves_the_entry() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"a");
        s.reschedule(10, 50, 1, 0, b"a");
        assert!(s.pop_due(49, 10).is_empty());
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_deadline(), Some(50));
    }

    #[test]
    fn reschedule_of_an_untracked_lease_tracks_it() {
        let mut s = Schedule::default();
        s.reschedule(10, 50, 1, 2, b"a");
        assert_eq!(
            s.pop_due(50, 10)[0].at,
            LeaseRef {
                db: 2,
                key: KeyName::from_slice(b"a")
            }
        );
    }

    #[test]
    fn same_deadline_different_tokens_are_distinct() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"a");
        s.insert(10, 2, 0, b"b");
        assert_eq!(s.len(), 2);
        assert!(s.remove(10, 1));
        assert!(!s.remove(10, 1));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn relocate_and_swap_dbs_follow_the_key() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"a");
        s.insert(11, 2, 1, b"b");
        s.relocate(10, 1, 0, b"renamed");
        s.swap_dbs(0, 1);
        let due = s.pop_due(20, 10);
        assert_eq!(
            due[0].at,
            LeaseRef {
                db: 1,
                key: KeyName::from_slice(b"renamed")
            }
        );
        assert_eq!(
            due[1].at,
            LeaseRef {
                db: 0,
                key: KeyName::from_slice(b"b")
            }
        );
    }

    #[test]
    fn forget_db_drops_only_that_db() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"a");
        s.insert(11, 2, 1, b"b");
        s.forget_db(Some(0));
        assert_eq!(s.len(), 1);
        s.forget_db(None);
        assert!(s.is_empty());
    }
}
