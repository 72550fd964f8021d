//! The lease schedule: every live lease ordered by deadline, so that one
//! module timer, armed for the earliest deadline, can expire leases on time
//! however many there are (an ordered map: O(log n) per change, the due
//! ones popped in order).
//!
//! An entry is the whole `(deadline_ms, token, db, key)`: two leases that
//! share a deadline and a token (a lock `DUMP`ed and `RESTORE`d under a
//! second name) are still two entries, so neither is lost or confused with
//! the other. Entries can go stale (the key was deleted, overwritten,
//! flushed); the expiry path re-reads the key and acts only when the lock
//! there still carries the same token and deadline, so a stale entry is
//! harmless and never acts on the wrong key.

use std::collections::BTreeSet;

use super::lock::FencingToken;

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

/// One tracked lease; the order is the order of expiry.
type Entry = (u64, FencingToken, i32, KeyName);

/// All tracked leases, by deadline.
#[derive(Debug, Default)]
pub struct Schedule {
    by_deadline: BTreeSet<Entry>,
}

fn entry(deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) -> Entry {
    (deadline_ms, token, db, KeyName::from_slice(key))
}

impl Schedule {
    /// Tracks a lease (once: the same lease twice is one entry).
    pub fn insert(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) {
        self.by_deadline.insert(entry(deadline_ms, token, db, key));
    }

    /// Stops tracking a lease; false when it was not tracked.
    pub fn remove(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) -> bool {
        self.by_deadline.remove(&entry(deadline_ms, token, db, key))
    }

    /// Moves a lease to a new deadline (a renewal or re-entry); tracks it if
    /// it was not tracked.
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
        let mut e = entry(old_deadline_ms, token, db, key);
        self.by_deadline.remove(&e);
        e.0 = new_deadline_ms;
        self.by_deadline.insert(e);
    }

    /// The earliest tracked deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|e| e.0)
    }

    /// Removes and returns up to `limit` leases whose deadline is `<= now_ms`,
    /// earliest first.
    pub fn pop_due(&mut self, now_ms: u64, limit: usize) -> Vec<DueLease> {
        let mut out = Vec::new();
        while out.len() < limit && matches!(self.by_deadline.first(), Some(e) if e.0 <= now_ms) {
            if let Some((deadline_ms, token, db, key)) = self.by_deadline.pop_first() {
                out.push(DueLease {
                    deadline_ms,
                    token,
                    at: LeaseRef { db, key },
                });
            }
        }
        out
    }

    /// SWAPDB: leases in `a` now live in `b` and the other way round.
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        let swapped: BTreeSet<Entry> = std::mem::take(&mut self.by_deadline)
            .into_iter()
            .map(|(d, t, db, key)| {
                let db = match db {
                    db if db == a => b,
                    db if db == b => a,
                    db => db,
                };
                (d, t, db, key)
            })
            .collect();
        self.by_deadline = swapped;
    }

    /// FLUSHDB / FLUSHALL: forgets the leases of one database (`Some(db)`)
    /// or of all (`None`).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            None => self.by_deadline.clear(),
            Some(db) => self.by_deadline.retain(|e| e.2 != db),
        }
    }

    /// How many leases are tracked.
    pub fn len(&self) -> usize {
        self.by_deadline.len()
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.len(), 0);
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
        assert!(s.remove(10, 1, 0, b"a"));
        assert!(!s.remove(10, 1, 0, b"a"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn equal_deadline_and_token_on_two_keys_are_two_leases() {
        // A lock DUMPed and RESTOREd under a second name: same deadline and
        // token. Neither entry may replace, hide or remove the other.
        let mut s = Schedule::default();
        s.insert(10, 7, 0, b"a");
        s.insert(10, 7, 0, b"b");
        s.insert(10, 7, 1, b"a");
        assert_eq!(s.len(), 3);
        s.reschedule(10, 30, 7, 0, b"a");
        assert!(!s.remove(10, 7, 0, b"a"), "moved away already");
        assert!(s.remove(10, 7, 1, b"a"));
        let due = s.pop_due(100, 10);
        let keys: Vec<(u64, i32, &[u8])> = due
            .iter()
            .map(|d| (d.deadline_ms, d.at.db, &*d.at.key))
            .collect();
        assert_eq!(keys, vec![(10, 0, &b"b"[..]), (30, 0, &b"a"[..])]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn swap_dbs_follows_the_key() {
        let mut s = Schedule::default();
        s.insert(10, 1, 0, b"renamed");
        s.insert(11, 2, 1, b"b");
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
        assert_eq!(s.len(), 0);
    }
}
