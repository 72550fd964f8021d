//! Upgrade: the files the previous release wrote (lock encoding version 1,
//! `tests/fixtures/v1/`, made by `scripts/make-v1-fixtures.sh`) load in this
//! build with every lock as that release reported it (`expected.tsv`), and
//! what this build writes back holds them in its own encoding.
//!
//! The fixture leases are 30 days from when the files were made; each test
//! copies the files with every deadline moved by the same shift (same
//! width, the RDB checksum recomputed): into its present for the loading
//! checks, or into the past for the expiry check. No lease is shortened.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use redis::Connection;
use testkit::fixtures::{
    aof_base_file, copy_aof_dir, copy_rdb, expected, generated_at_ms, loaded_lock,
    parse_resp_commands, v1_dir, ExpectedLock, MovedDeadline,
};
use testkit::hostile::{find, module_type_id, rdb_len, DAY_MS};
use testkit::{dbsize, info_int, now_ms, wait_aof_settled, wait_for, Server, EXPIRY_SLACK};

/// The key the fixture script acquired, then released after the AOF
/// rewrite: in the AOF's base file, deleted by its increment, not in the RDB.
const GONE: &[u8] = b"fixture:gone";
/// The encoding version this build writes.
const NEW_ENCODING: u64 = 2;
/// How far a loaded lock's ttl may be from `deadline - now` (the server's
/// clock and ours are the same; this covers millisecond rounding with room).
const TTL_MARGIN_MS: i64 = 1_000;

/// The fixture locks, checked to cover what the upgrade must carry over: a
/// key in another database, a key with a NUL byte, a 1024-byte owner,
/// re-entered holds.
fn fixture_locks() -> Vec<ExpectedLock> {
    let exp = expected(&v1_dir());
    assert!(exp.iter().any(|e| e.db != 0), "a lock in another database");
    assert!(
        exp.iter().any(|e| e.key.contains(&0)),
        "a key with a NUL byte"
    );
    assert!(
        exp.iter().any(|e| e.owner.len() == 1024),
        "a 1024-byte owner"
    );
    assert!(exp.iter().any(|e| e.holds > 1), "a re-entered lock");
    assert!(exp.iter().all(|e| e.key != GONE));
    exp
}

/// The shift that moves the fixtures' present (when they were made) to
/// `at_ms`.
fn shift_to(exp: &[ExpectedLock], at_ms: u64) -> i64 {
    at_ms as i64 - generated_at_ms(exp) as i64
}

fn max_token(exp: &[ExpectedLock]) -> i64 {
    exp.iter().map(|e| e.token).max().unwrap()
}

/// Each owner's deadline as the files hold it after the shift (the last
/// one in file order: an AOF sets a lock again on each change).
fn deadlines(moved: &[MovedDeadline]) -> HashMap<Vec<u8>, u64> {
    moved.iter().map(|m| (m.owner.clone(), m.now_ms)).collect()
}

fn v1_rdb() -> PathBuf {
    v1_dir().join("locks.rdb")
}

fn v1_aof() -> PathBuf {
    v1_dir().join("aof")
}

/// A server started on a copy of the fixture RDB file with its deadlines
/// moved by `shift_ms`, and the deadlines the copy holds.
fn start_on_rdb(shift_ms: i64) -> (Server, Vec<MovedDeadline>) {
    let mut s = Server::start();
    s.kill9();
    let moved = copy_rdb(&v1_rdb(), &s.dir().join("dump.rdb"), shift_ms);
    s.restart();
    (s, moved)
}

/// A server started (`appendonly yes`) on a copy of the fixture AOF
/// directory with its deadlines moved by `shift_ms`, and the deadlines the
/// copy holds. `preamble` is its `aof-use-rdb-preamble` for later rewrites.
fn start_on_aof(shift_ms: i64, preamble: &str) -> (Server, Vec<MovedDeadline>) {
    let mut s = Server::config()
        .arg("aof-use-rdb-preamble", preamble)
        .start();
    s.kill9();
    let moved = copy_aof_dir(&v1_aof(), &s.dir().join("appendonlydir"), shift_ms);
    s.set_arg("appendonly", "yes");
    s.restart();
    (s, moved)
}

fn select(c: &mut Connection, db: u32) {
    let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
}

fn exists(c: &mut Connection, key: &[u8]) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(c).unwrap() == 1
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if b.len() > 40 {
        let head: String = s.chars().take(40).collect();
        format!("{head:?}...({} bytes)", b.len())
    } else {
        format!("{s:?}")
    }
}

/// Checks that the server behind `c` holds exactly the fixture locks: each
/// with its owner, holds and token, its ttl `deadline - now` for the
/// deadline the loaded file holds; nothing else in their databases (the
/// released `fixture:gone` absent; the db-3 lock only in db 3).
fn expect_fixture_locks(
    c: &mut Connection,
    exp: &[ExpectedLock],
    deadlines: &HashMap<Vec<u8>, u64>,
    shift_ms: i64,
) {
    for e in exp {
        select(c, e.db);
        let deadline = deadlines[&e.owner];
        // The files hold the exact deadline, expected.tsv one read a moment
        // later: the two agree to within the script's latency.
        let approx = e.deadline_approx_ms.checked_add_signed(shift_ms).unwrap();
        assert!(
            deadline.abs_diff(approx) < 60_000,
            "{}: deadline {deadline} in the file, about {approx} in expected.tsv",
            show(&e.key)
        );
        let before = now_ms() as i64;
        let got = loaded_lock(c, &e.key)
            .unwrap_or_else(|| panic!("{} (db {}) not loaded", show(&e.key), e.db));
        let after = now_ms() as i64;
        assert_eq!(
            (got.owner.as_slice(), got.holds, got.token, got.waiters),
            (e.owner.as_slice(), e.holds, e.token, 0),
            "{} (db {}): owner, holds, token, waiters",
            show(&e.key),
            e.db
        );
        let (lo, hi) = (deadline as i64 - after, deadline as i64 - before);
        assert!(
            got.ttl >= lo - TTL_MARGIN_MS && got.ttl <= hi + TTL_MARGIN_MS,
            "{}: ttl {} not in [{lo}, {hi}] (deadline {deadline})",
            show(&e.key),
            got.ttl
        );
    }
    let dbs: BTreeSet<u32> = exp.iter().map(|e| e.db).collect();
    for &db in &dbs {
        select(c, db);
        let here = exp.iter().filter(|e| e.db == db).count() as i64;
        assert_eq!(dbsize(c), here, "keys in db {db}");
        for other in exp.iter().filter(|e| e.db != db) {
            assert!(!exists(c, &other.key), "{} in db {db}", show(&other.key));
        }
    }
    select(c, 0);
    assert!(!exists(c, GONE), "the released fixture:gone was loaded");
}

/// A fresh grant on the loaded server: its token is above every token the
/// old release issued.
fn expect_fresh_token_above(c: &mut Connection, exp: &[ExpectedLock]) {
    select(c, 0);
    let token: i64 = redis::cmd("LOCK.ACQUIRE")
        .arg("after-upgrade")
        .arg("newcomer")
        .arg(60_000)
        .query(c)
        .unwrap();
    assert!(
        token > max_token(exp),
        "fresh token {token} not above the fixtures' {}",
        max_token(exp)
    );
    let left: Option<i64> = redis::cmd("LOCK.RELEASE")
        .arg("after-upgrade")
        .arg("newcomer")
        .query(c)
        .unwrap();
    assert_eq!(left, Some(0));
}

/// Whether `data` holds a module value or aux field of the `fencelock`
/// type with encoding version `v` (its module id).
fn holds_encoding(data: &[u8], v: u64) -> bool {
    find(data, &rdb_len(module_type_id("fencelock", v))).is_some()
}

/// `BGREWRITEAOF` (turning the AOF on first when it is off) and waits until
/// it is done.
fn rewrite_aof(s: &Server, c: &mut Connection) {
    if info_int(c, "persistence", "aof_enabled") == 0 {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("yes")
            .query(c)
            .unwrap();
        wait_aof_settled(c);
    }
    let _: String = redis::cmd("BGREWRITEAOF").query(c).unwrap();
    wait_aof_settled(c);
    assert!(aof_base_file(s.dir()).exists());
}

#[test]
fn v1_rdb_file_loads_every_lock_and_round_trips_in_the_new_encoding() {
    let exp = fixture_locks();
    let shift = shift_to(&exp, now_ms());
    let (mut s, moved) = start_on_rdb(shift);
    let owners: BTreeSet<&[u8]> = moved.iter().map(|m| m.owner.as_slice()).collect();
    let want: BTreeSet<&[u8]> = exp.iter().map(|e| e.owner.as_slice()).collect();
    assert_eq!(owners, want, "lock values found in the RDB file");
    let deadlines = deadlines(&moved);
    let mut c = s.conn();
    expect_fixture_locks(&mut c, &exp, &deadlines, shift);
    assert_eq!(info_int(&mut c, "lock", "lock_expired"), 0);

    // DEBUG RELOAD: saved by this build, in its encoding, and read back.
    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    let rdb = std::fs::read(s.dir().join("dump.rdb")).unwrap();
    assert!(
        holds_encoding(&rdb, NEW_ENCODING) && !holds_encoding(&rdb, 1),
        "the saved RDB holds encoding {NEW_ENCODING} only"
    );
    expect_fixture_locks(&mut c, &exp, &deadlines, shift);

    // An AOF rewrite (RDB preamble) and a restart from it alone.
    rewrite_aof(&s, &mut c);
    let base = std::fs::read(aof_base_file(s.dir())).unwrap();
    assert!(
        holds_encoding(&base, NEW_ENCODING) && !holds_encoding(&base, 1),
        "the rewritten AOF base holds encoding {NEW_ENCODING} only"
    );
    std::fs::remove_file(s.dir().join("dump.rdb")).unwrap();
    s.set_arg("appendonly", "yes");
    s.restart();
    let mut c = s.conn();
    expect_fixture_locks(&mut c, &exp, &deadlines, shift);
    expect_fresh_token_above(&mut c, &exp);
}

#[test]
fn v1_aof_loads_every_lock_round_trips_and_obeys_its_owners() {
    let exp = fixture_locks();
    let shift = shift_to(&exp, now_ms());
    let (mut s, moved) = start_on_aof(shift, "no");
    let deadlines = deadlines(&moved);
    let mut c = s.conn();
    expect_fixture_locks(&mut c, &exp, &deadlines, shift);
    assert_eq!(info_int(&mut c, "lock", "lock_expired"), 0);

    // A rewrite without RDB preamble: this build's LOCK.APPLY effects, one
    // or more per lock, replayed after a restart.
    rewrite_aof(&s, &mut c);
    let base = std::fs::read(aof_base_file(s.dir())).unwrap();
    let applied: BTreeSet<Vec<u8>> = parse_resp_commands(&base)
        .into_iter()
        .filter(|a| a[0].eq_ignore_ascii_case(b"LOCK.APPLY"))
        .map(|a| a[1].clone())
        .collect();
    let keys: BTreeSet<Vec<u8>> = exp.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        applied, keys,
        "keys set by LOCK.APPLY in the rewritten base"
    );
    s.restart();
    let mut c = s.conn();
    expect_fixture_locks(&mut c, &exp, &deadlines, shift);
    expect_fresh_token_above(&mut c, &exp);

    // The owners keep their locks: strangers can neither renew nor release
    // them; the owner re-enters (same token), renews, releases every hold.
    for e in &exp {
        select(&mut c, e.db);
        let renewed: i64 = redis::cmd("LOCK.RENEW")
            .arg(&e.key)
            .arg("stranger")
            .arg(600_000)
            .query(&mut c)
            .unwrap();
        assert_eq!(renewed, 0, "{}: renewed by a stranger", show(&e.key));
        let released: Option<i64> = redis::cmd("LOCK.RELEASE")
            .arg(&e.key)
            .arg("stranger")
            .query(&mut c)
            .unwrap();
        assert_eq!(released, None, "{}: released by a stranger", show(&e.key));
        let again: Option<i64> = redis::cmd("LOCK.ACQUIRE")
            .arg(&e.key)
            .arg(&e.owner)
            .arg(600_000)
            .query(&mut c)
            .unwrap();
        assert_eq!(again, Some(e.token), "{}: re-entry", show(&e.key));
        let renewed: i64 = redis::cmd("LOCK.RENEW")
            .arg(&e.key)
            .arg(&e.owner)
            .arg(300_000)
            .query(&mut c)
            .unwrap();
        assert_eq!(renewed, 1, "{}: renewed by its owner", show(&e.key));
        let got = loaded_lock(&mut c, &e.key).unwrap();
        assert_eq!((got.holds, got.token), (e.holds + 1, e.token));
        assert!(
            got.ttl > 0 && got.ttl <= 300_000,
            "ttl after renew {}",
            got.ttl
        );
        for left in (0..=e.holds).rev() {
            let r: Option<i64> = redis::cmd("LOCK.RELEASE")
                .arg(&e.key)
                .arg(&e.owner)
                .query(&mut c)
                .unwrap();
            assert_eq!(r, Some(left), "{}: release", show(&e.key));
        }
        assert!(
            !exists(&mut c, &e.key),
            "{} left after release",
            show(&e.key)
        );
    }
}

#[test]
fn v1_leases_already_past_are_expired_at_load_and_counted() {
    let exp = fixture_locks();
    // Every deadline a day or more in the past (what the files hold once
    // their 30 days are over).
    let latest = exp.iter().map(|e| e.deadline_approx_ms).max().unwrap();
    let shift = now_ms() as i64 - latest as i64 - DAY_MS as i64;
    let (rdb_server, _) = start_on_rdb(shift);
    let (aof_server, _) = start_on_aof(shift, "yes");
    for (what, s) in [("RDB", &rdb_server), ("AOF", &aof_server)] {
        let mut c = s.conn();
        for e in &exp {
            select(&mut c, e.db);
            assert_eq!(
                loaded_lock(&mut c, &e.key),
                None,
                "{what}: {} shown",
                show(&e.key)
            );
        }
        let dbs: BTreeSet<u32> = exp.iter().map(|e| e.db).collect();
        wait_for(
            &format!("{what}: the past leases to be deleted"),
            EXPIRY_SLACK,
            || {
                dbs.iter()
                    .all(|&db| {
                        select(&mut c, db);
                        dbsize(&mut c) == 0
                    })
                    .then_some(())
            },
        );
        assert_eq!(
            info_int(&mut c, "lock", "lock_expired"),
            exp.len() as i64,
            "{what}: expiries counted"
        );
        expect_fresh_token_above(&mut c, &exp);
    }
}
