//! The lease schedule: every live lease ordered by deadline, so that one
//! module timer, armed for the earliest deadline, can expire leases on time
//! however many there are.
//!
//! A lease is the whole `(deadline_ms, token, db, key)`: two leases that
//! share a deadline and a token (a lock `DUMP`ed and `RESTORE`d under a
//! second name) are still two entries, so neither is lost or confused with
//! the other. Entries can go stale (the key was deleted, overwritten,
//! flushed); the expiry path re-reads the key and acts only when the lock
//! there still carries the same token and deadline, so a stale entry is
//! harmless and never acts on the wrong key.
//!
//! The layout is made for memory: the leases of one `(deadline, db)` — a
//! group — are kept as `(token, key)` records, 40 bytes each, in a vector
//! sorted by `(token, key)`, under an ordered map by `(deadline, db)`. A
//! fresh grant's token is the largest yet, so grants append to their group
//! and fill it (a lease then costs its record and a little slack), where a
//! B-tree entry per lease, half full after in-order inserts, cost ~110
//! bytes. A renewal or a release finds its record by binary search. A group
//! that grows past [`LARGE_GROUP`] leases (thousands of locks `RESTORE`d
//! with one deadline, say) becomes a B-tree of its own, so that no insert
//! or removal moves more than a small vector's worth of memory.

use std::collections::{BTreeMap, BTreeSet};

use super::lock::FencingToken;

/// Key names up to this many bytes are kept inside the schedule's record
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

/// A group of more leases than this is kept in a B-tree.
pub const LARGE_GROUP: usize = 256;

/// One lease in a group (the group gives its deadline and db).
type Record = (FencingToken, KeyName);

/// The leases of one `(deadline, db)`.
#[derive(Debug)]
enum Group {
    /// Up to [`LARGE_GROUP`] records, sorted.
    Small(Vec<Record>),
    /// More.
    Large(BTreeSet<Record>),
}

impl Default for Group {
    fn default() -> Self {
        Group::Small(Vec::new())
    }
}

fn order(r: &Record, token: FencingToken, key: &[u8]) -> std::cmp::Ordering {
    (r.0, r.1.as_slice()).cmp(&(token, key))
}

impl Group {
    /// Adds the record; false when it was there already.
    fn insert(&mut self, record: Record) -> bool {
        match self {
            Group::Small(v) => {
                let Err(at) = v.binary_search_by(|r| order(r, record.0, &record.1)) else {
                    return false;
                };
                if v.len() == LARGE_GROUP {
                    let mut set: BTreeSet<Record> = std::mem::take(v).into_iter().collect();
                    set.insert(record);
                    *self = Group::Large(set);
                    return true;
                }
                if v.len() == v.capacity() {
                    // Doubling up to 8 records, then a quarter at a time (a
                    // vector's doubling would leave a third of it unused).
                    let len = v.len();
                    v.reserve_exact((len / 4).max(len.min(4)).max(1));
                }
                v.insert(at, record);
                true
            }
            Group::Large(set) => set.insert(record),
        }
    }

    /// Takes the record of `(token, key)` out.
    fn take(&mut self, token: FencingToken, key: &[u8]) -> Option<KeyName> {
        match self {
            Group::Small(v) => {
                let i = v.binary_search_by(|r| order(r, token, key)).ok()?;
                let (_, name) = v.remove(i);
                if v.capacity() > 2 * v.len() + 4 {
                    // Most of it was released: give the memory back.
                    let keep = v.len() + v.len() / 4;
                    v.shrink_to(keep);
                }
                Some(name)
            }
            Group::Large(set) => set.take(&(token, KeyName::from_slice(key))).map(|r| r.1),
        }
    }

    /// Takes up to `n` records out (the group's order does not matter:
    /// they share a deadline).
    fn pop(&mut self, n: usize, mut out: impl FnMut(Record)) {
        match self {
            Group::Small(v) => v.drain(v.len().saturating_sub(n)..).rev().for_each(out),
            Group::Large(set) => {
                for _ in 0..n {
                    match set.pop_last() {
                        Some(r) => out(r),
                        None => break,
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Group::Small(v) => v.len(),
            Group::Large(set) => set.len(),
        }
    }
}

/// All tracked leases, by deadline.
#[derive(Debug, Default)]
pub struct Schedule {
    groups: BTreeMap<(u64, i32), Group>,
    len: usize,
}

impl Schedule {
    /// Tracks a lease (once: the same lease twice is one entry).
    pub fn insert(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) {
        self.insert_record(deadline_ms, db, (token, KeyName::from_slice(key)));
    }

    fn insert_record(&mut self, deadline_ms: u64, db: i32, record: Record) {
        if self
            .groups
            .entry((deadline_ms, db))
            .or_default()
            .insert(record)
        {
            self.len += 1;
        }
    }

    /// Takes a lease out of its group (dropping the group when empty).
    fn take(
        &mut self,
        deadline_ms: u64,
        token: FencingToken,
        db: i32,
        key: &[u8],
    ) -> Option<KeyName> {
        let group = self.groups.get_mut(&(deadline_ms, db))?;
        let name = group.take(token, key)?;
        if group.len() == 0 {
            self.groups.remove(&(deadline_ms, db));
        }
        self.len -= 1;
        Some(name)
    }

    /// Stops tracking a lease; false when it was not tracked.
    pub fn remove(&mut self, deadline_ms: u64, token: FencingToken, db: i32, key: &[u8]) -> bool {
        self.take(deadline_ms, token, db, key).is_some()
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
        let name = self
            .take(old_deadline_ms, token, db, key)
            .unwrap_or_else(|| KeyName::from_slice(key));
        self.insert_record(new_deadline_ms, db, (token, name));
    }

    /// The earliest tracked deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Removes and returns up to `limit` leases whose deadline is `<= now_ms`,
    /// earliest first (leases that share a deadline in no set order).
    pub fn pop_due(&mut self, now_ms: u64, limit: usize) -> Vec<DueLease> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(mut first) = self.groups.first_entry() else {
                break;
            };
            let (deadline_ms, db) = *first.key();
            if deadline_ms > now_ms {
                break;
            }
            let group = first.get_mut();
            let before = out.len();
            group.pop(limit - before, |(token, key)| {
                out.push(DueLease {
                    deadline_ms,
                    token,
                    at: LeaseRef { db, key },
                })
            });
            self.len -= out.len() - before;
            if group.len() == 0 {
                first.remove();
            }
        }
        out
    }

    /// SWAPDB: leases in `a` now live in `b` and the other way round.
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        self.groups = std::mem::take(&mut self.groups)
            .into_iter()
            .map(|((d, db), group)| {
                let db = match db {
                    db if db == a => b,
                    db if db == b => a,
                    db => db,
                };
                ((d, db), group)
            })
            .collect();
    }

    /// FLUSHDB / FLUSHALL: forgets the leases of one database (`Some(db)`)
    /// or of all (`None`).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            None => self.groups.clear(),
            Some(db) => self.groups.retain(|&(_, d), _| d != db),
        }
        self.len = self.groups.values().map(Group::len).sum();
    }

    /// How many leases are tracked.
    pub fn len(&self) -> usize {
        self.len
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

    /// The schedule agrees with the plain set of leases it stands for, over
    /// a seeded random run of every operation: few keys, tokens and
    /// deadlines (equal tokens, shared groups, untracked leases), then many
    /// keys on few deadlines (groups of hundreds: small ones grow large).
    #[test]
    fn agrees_with_a_set_of_leases() {
        agrees_with_a_set(0x9e37_79b9_7f4a_7c15, 4, 6, 8, 1, 20_000);
        assert!(
            agrees_with_a_set(0x2545_f491_4f6c_dd1d, 400, 40, 2, 300, 60_000),
            "no group ever grew large"
        );
    }

    fn agrees_with_a_set(
        seed: u64,
        keys: usize,
        tokens: u64,
        spread: u64,
        tick: u64,
        steps: usize,
    ) -> bool {
        use std::collections::BTreeSet;
        let mut seed = seed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut names: Vec<Vec<u8>> = vec![b"a-much-longer-key-than-24-bytes".to_vec(), Vec::new()];
        names.extend((names.len()..keys).map(|i| format!("k{i}").into_bytes()));
        let mut s = Schedule::default();
        let mut model: BTreeSet<(u64, i32, u64, Vec<u8>)> = BTreeSet::new();
        let mut now = 0;
        let mut large = false;
        for _ in 0..steps {
            let (d, t, db) = (now + next(spread), next(tokens), next(3) as i32);
            let key = names[next(keys as u64) as usize].as_slice();
            match next(10) {
                0..=3 => {
                    s.insert(d, t, db, key);
                    model.insert((d, db, t, key.to_vec()));
                }
                4 | 5 => {
                    let was = model.remove(&(d, db, t, key.to_vec()));
                    assert_eq!(s.remove(d, t, db, key), was);
                }
                6 | 7 => {
                    let to = now + next(spread);
                    s.reschedule(d, to, t, db, key);
                    if d != to {
                        model.remove(&(d, db, t, key.to_vec()));
                        model.insert((to, db, t, key.to_vec()));
                    }
                }
                8 => {
                    if next(tick) == 0 {
                        now += next(3);
                    }
                    let limit = next(5) as usize + 1;
                    let popped = s.pop_due(now, limit);
                    assert!(popped.len() <= limit);
                    for p in &popped {
                        assert!(p.deadline_ms <= now);
                        let e = (p.deadline_ms, p.at.db, p.token, p.at.key.to_vec());
                        assert!(model.remove(&e), "popped an untracked lease {e:?}");
                    }
                    if popped.len() < limit {
                        assert!(model.iter().all(|e| e.0 > now), "left a due lease");
                    }
                    if let (Some(last), Some(first_left)) = (popped.last(), model.first()) {
                        assert!(last.deadline_ms <= first_left.0, "popped out of order");
                    }
                }
                _ => match next(3) {
                    0 => {
                        let (a, b) = (next(3) as i32, next(3) as i32);
                        s.swap_dbs(a, b);
                        model = model
                            .into_iter()
                            .map(|(d, db, t, k)| {
                                let db = if db == a {
                                    b
                                } else if db == b {
                                    a
                                } else {
                                    db
                                };
                                (d, db, t, k)
                            })
                            .collect();
                    }
                    1 if next(20) == 0 => {
                        s.forget_db(None);
                        model.clear();
                    }
                    _ if next(tick) == 0 => {
                        let db = next(3) as i32;
                        s.forget_db(Some(db));
                        model.retain(|e| e.1 != db);
                    }
                    _ => {}
                },
            }
            assert_eq!(s.len(), model.len());
            assert_eq!(s.next_deadline(), model.first().map(|e| e.0));
            if next(50) == 0 {
                check_groups(&s);
                large |= s.groups.values().any(|g| matches!(g, Group::Large(_)));
            }
        }
        large
    }

    /// Each group is non-empty; a small one is sorted and within bounds.
    fn check_groups(s: &Schedule) {
        let mut n = 0;
        for g in s.groups.values() {
            assert!(g.len() > 0);
            if let Group::Small(v) = g {
                assert!(v.len() <= LARGE_GROUP);
                assert!(v.windows(2).all(|w| w[0] < w[1]), "out of order");
            }
            n += g.len();
        }
        assert_eq!(n, s.len());
    }

    fn capacity(g: &Group) -> Option<usize> {
        match g {
            Group::Small(v) => Some(v.capacity()),
            Group::Large(_) => None,
        }
    }

    #[test]
    fn in_order_grants_fill_their_groups() {
        let mut s = Schedule::default();
        for t in 0..10_000 {
            s.insert(10 + t / 100, t, 0, b"k");
        }
        check_groups(&s);
        assert_eq!(s.groups.len(), 100);
        let cap: usize = s.groups.values().filter_map(capacity).sum();
        assert!(cap <= 10_000 + 10_000 / 4, "capacity {cap}");
    }

    #[test]
    fn a_crowd_on_one_deadline_in_any_order_is_a_b_tree() {
        // 20,000 copies of one lock (equal deadline and token) RESTOREd
        // under names in scrambled and in falling order.
        let mut s = Schedule::default();
        let names: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("copy:{}", u64::from(i) * 7_919 % 20_000).into_bytes())
            .collect();
        for n in &names {
            s.insert(10, 7, 0, n);
        }
        for i in (0..5_000).rev() {
            s.insert(10, 6, 0, format!("{i:08}").as_bytes());
        }
        check_groups(&s);
        assert!(matches!(s.groups.get(&(10, 0)), Some(Group::Large(_))));
        assert_eq!(s.len(), 25_000);
        for n in names.iter().step_by(2) {
            assert!(s.remove(10, 7, 0, n));
            s.reschedule(10, 20, 6, 0, n); // untracked at 10: tracked at 20
        }
        check_groups(&s);
        assert_eq!(s.len(), 25_000);
        let mut due = 0;
        loop {
            let got = s.pop_due(15, 64).len();
            if got == 0 {
                break;
            }
            due += got;
        }
        assert_eq!(due, 15_000);
        assert_eq!(s.next_deadline(), Some(20));
        check_groups(&s);
    }

    #[test]
    fn a_released_group_gives_its_memory_back() {
        let mut s = Schedule::default();
        for t in 0..200 {
            s.insert(10, t, 0, b"k");
        }
        for t in 0..196 {
            assert!(s.remove(10, t, 0, b"k"));
        }
        let cap = s.groups.values().next().and_then(capacity);
        assert!(cap.is_some_and(|c| c <= 2 * 4 + 4), "capacity {cap:?}");
        for t in 196..200 {
            assert!(s.remove(10, t, 0, b"k"));
        }
        assert!(s.groups.is_empty(), "an empty group is dropped");
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
