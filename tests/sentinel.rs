//! Sentinel: redis-sentinel watches a master and its replica (both with the
//! module). After Sentinel fails over — from a `kill -9`ed master, and on
//! `SENTINEL FAILOVER` with the old master alive — the locks keep their
//! holder, holds, token and deadline, the leases still expire on the new
//! master, and its tokens exceed every token the old master granted, even
//! grants that never reached the new master.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use testkit::lock::{
    acquire, digest, exists, expect_expiry, force_release, grant_timed, held, release, renew,
    spawn_waiter, stat, wait_waiters,
};
use testkit::replication::{cut_replica_link, pair, synced};
use testkit::sentinel::Sentinel;
use testkit::{info_field, wait_for, Server, EXPIRY_SLACK, PATIENCE};

/// Long enough for anything a test does around a failover.
const LONG: u64 = 600_000;

/// A master and a replica in sync, and a sentinel watching them.
fn watched_pair() -> (Server, Server, Sentinel) {
    let (master, replica) = pair();
    let sentinel = Sentinel::start(&master, 1);
    assert_eq!(sentinel.master_port(), Some(master.port));
    (master, replica, sentinel)
}

#[test]
fn sentinel_failover_after_kill9_keeps_locks_leases_and_token_order() {
    let (mut master, replica, sentinel) = watched_pair();
    let mut m = master.conn();
    let long = acquire(&mut m, "long", "app-1", LONG).unwrap();
    acquire(&mut m, "long", "app-1", LONG).unwrap();
    let seen = acquire(&mut m, "seen", "app-1", LONG).unwrap();
    let mut highest = seen;
    for i in 0..20 {
        highest = highest.max(acquire(&mut m, &format!("k{i}"), "app-2", LONG).unwrap());
    }
    let short = grant_timed(&mut m, "short", "app-3", 6_000);
    // Overdue by the time Sentinel has failed over (that takes over 1 s).
    for i in 0..10 {
        acquire(&mut m, &format!("overdue{i}"), "app-3", 300).unwrap();
    }
    synced(&mut m, 1);
    let long_digest = digest(&mut m, "long");

    // The replica stops and loses its link: the next grants never reach it.
    replica.pause();
    cut_replica_link(&mut m);
    let lost = acquire(&mut m, "lost", "x", LONG).unwrap();
    assert_eq!(force_release(&mut m, "seen"), 1);
    let lost_seen = acquire(&mut m, "seen", "y", LONG).unwrap();
    drop(m);
    master.kill9();
    replica.resume();

    sentinel.wait_master(&replica, 2 * PATIENCE);
    let promoted = Instant::now();
    let mut r = replica.conn();
    // Overdue leases go at once.
    wait_for("the overdue leases to be expired", EXPIRY_SLACK, || {
        (!(0..10).any(|i| exists(&mut r, &format!("overdue{i}")))).then_some(())
    });
    assert!(promoted.elapsed() < EXPIRY_SLACK);
    // The locks: holder, holds, token, absolute deadline.
    assert_eq!(held(&mut r, "long"), Some(("app-1".into(), 2, long)));
    assert_eq!(digest(&mut r, "long"), long_digest);
    assert_eq!(held(&mut r, "seen"), Some(("app-1".into(), 1, seen)));
    assert!(!exists(&mut r, "lost"), "the lost grant never arrived");
    // The lease expires on the new master, on time (from the promotion on,
    // when that came after the deadline).
    expect_expiry(&mut r, &[short]);
    // Holders go on renewing there.
    assert_eq!(renew(&mut r, "long", "app-1", LONG), 1);
    // Tokens exceed every token the old master granted.
    let t = acquire(&mut r, "lost", "z", LONG).unwrap();
    assert!(t > lost && t > highest, "{t} after failover, lost {lost}");
    assert_eq!(force_release(&mut r, "seen"), 1);
    let t = acquire(&mut r, "seen", "z", LONG).unwrap();
    assert!(t > lost_seen, "{t} after failover, lost {lost_seen}");
    // WAIT is served there.
    let waiter = spawn_waiter(&replica, "long", "app-4", LONG, 120_000);
    wait_waiters(&mut r, 1);
    assert_eq!(release(&mut r, "long", "app-1"), Some(1));
    assert_eq!(release(&mut r, "long", "app-1"), Some(0));
    let handed = waiter.join().unwrap().unwrap();
    assert!(handed > t);
}

#[test]
fn sentinel_failover_command_demotes_the_old_master_and_keeps_the_guarantees() {
    let (old, new, sentinel) = watched_pair();
    let mut m = old.conn();
    let long = acquire(&mut m, "long", "app-1", LONG).unwrap();
    let short = grant_timed(&mut m, "short", "app-2", 5_000);
    let waiter = spawn_waiter(&old, "long", "w", LONG, 0);
    wait_waiters(&mut m, 1);
    synced(&mut m, 1);
    let long_digest = digest(&mut m, "long");

    sentinel.failover();
    sentinel.wait_master(&new, 2 * PATIENCE);
    // Until Sentinel turns it into a replica, the old master still takes
    // writes: a grant there never reaches the new master.
    let split: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("split")
        .arg("x")
        .arg(LONG)
        .query(&mut m)
        .ok()
        .flatten();

    let mut n = new.conn();
    assert_eq!(held(&mut n, "long"), Some(("app-1".into(), 1, long)));
    assert_eq!(digest(&mut n, "long"), long_digest);
    expect_expiry(&mut n, &[short]);

    // Sentinel demotes the old master: its waiter is answered. Sentinel
    // sends SLAVEOF and CLIENT KILL TYPE normal in one MULTI, so the
    // connection may close before Redis's -UNBLOCKED reaches the client;
    // either way the wait ends without a grant.
    let err = waiter.join().unwrap_err();
    assert!(
        err.code() == Some("UNBLOCKED") || err.is_connection_dropped() || err.is_io_error(),
        "{err}"
    );
    wait_for(
        "the old master to replicate from the new one",
        2 * PATIENCE,
        || {
            let mut c = old.conn();
            let info: String = redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
            (info_field(&info, "role").as_deref() == Some("slave")
                && info_field(&info, "master_port") == Some(new.port.to_string())
                && info_field(&info, "master_link_status").as_deref() == Some("up")
                && info_field(&info, "master_sync_in_progress").as_deref() == Some("0"))
            .then_some(())
        },
    );
    synced(&mut n, 1);
    let mut m = old.conn();
    assert_eq!(held(&mut m, "long"), Some(("app-1".into(), 1, long)));
    assert_eq!(digest(&mut m, "long"), long_digest);
    assert!(!exists(&mut m, "short") && !exists(&mut m, "split"));
    assert_eq!(stat(&mut m, "waiters"), 0);

    // Tokens on the new master exceed everything the old one granted.
    let t = acquire(&mut n, "split", "z", LONG).unwrap();
    if let Some(lost) = split {
        assert!(t > lost, "{t} after failover, split-brain grant {lost}");
    }
    assert!(t > long);
}
