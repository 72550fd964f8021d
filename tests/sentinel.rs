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

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};
use testkit::lock::{self, acquire, digest, exists, force_release, release, renew, stat};
use testkit::sentinel::Sentinel;
use testkit::{info_field, wait_for, Server};

/// (owner, holds, token) of a key, None when free.
fn held(c: &mut Connection, key: &str) -> Option<(String, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.token))
}

fn synced(m: &mut Connection) {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(m).unwrap();
    assert_eq!(acked, 1, "the replica acknowledged");
}

/// A master and a replica in sync, and a sentinel watching them.
fn watched_pair() -> (Server, Server, Sentinel) {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    synced(&mut master.conn());
    let sentinel = Sentinel::start(&master, 1);
    assert_eq!(sentinel.master_port(), Some(master.port));
    (master, replica, sentinel)
}

fn spawn_waiter(
    server: &Server,
    key: &str,
    owner: &str,
    wait_ms: u64,
) -> JoinHandle<RedisResult<Option<i64>>> {
    let mut c = server.conn();
    let (key, owner) = (key.to_string(), owner.to_string());
    std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(60_000)
            .arg("WAIT")
            .arg(wait_ms)
            .query(&mut c)
    })
}

fn wait_waiters(c: &mut Connection, n: i64) {
    wait_for(&format!("{n} waiter(s)"), Duration::from_secs(5), || {
        (stat(c, "waiters") == n).then_some(())
    });
}

/// Grants `key` for `ttl_ms`: (token, earliest, latest deadline).
fn grant_timed(c: &mut Connection, key: &str, owner: &str, ttl_ms: u64) -> (i64, Instant, Instant) {
    let ttl = Duration::from_millis(ttl_ms);
    let before = Instant::now();
    let t = acquire(c, key, owner, ttl_ms).expect("granted");
    (t, before + ttl, Instant::now() + ttl)
}

/// The key disappears from the server behind `c` not before `earliest`
/// and by `latest` + 2 s.
fn expect_expiry(c: &mut Connection, key: &str, earliest: Instant, latest: Instant) {
    let until = latest + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if !exists(c, key) {
            assert!(
                now + Duration::from_millis(50) >= earliest,
                "{key} expired {:?} early",
                earliest - now
            );
            return;
        }
        assert!(now < until, "{key} outlived its lease");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sentinel_failover_after_kill9_keeps_locks_leases_and_token_order() {
    let (mut master, replica, sentinel) = watched_pair();
    let mut m = master.conn();
    let long = acquire(&mut m, "long", "app-1", 60_000).unwrap();
    acquire(&mut m, "long", "app-1", 60_000).unwrap();
    let seen = acquire(&mut m, "seen", "app-1", 60_000).unwrap();
    let mut highest = seen;
    for i in 0..20 {
        highest = highest.max(acquire(&mut m, &format!("k{i}"), "app-2", 60_000).unwrap());
    }
    let (_, earliest, latest) = grant_timed(&mut m, "short", "app-3", 6_000);
    // Overdue by the time Sentinel has failed over (that takes over 1 s).
    for i in 0..10 {
        acquire(&mut m, &format!("overdue{i}"), "app-3", 300).unwrap();
    }
    synced(&mut m);
    let long_digest = digest(&mut m, "long");

    // The replica stops and loses its link: the next grants never reach it.
    replica.pause();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut m)
        .unwrap();
    assert_eq!(killed, 1);
    let lost = acquire(&mut m, "lost", "x", 60_000).unwrap();
    assert_eq!(force_release(&mut m, "seen"), 1);
    let lost_seen = acquire(&mut m, "seen", "y", 60_000).unwrap();
    drop(m);
    master.kill9();
    replica.resume();

    sentinel.wait_master(&replica, Duration::from_secs(40));
    let promoted = Instant::now();
    let mut r = replica.conn();
    // Overdue leases go at once.
    wait_for(
        "the overdue leases to be expired",
        Duration::from_millis(1_500),
        || (!(0..10).any(|i| exists(&mut r, &format!("overdue{i}")))).then_some(()),
    );
    assert!(promoted.elapsed() < Duration::from_millis(1_500));
    // The locks: holder, holds, token, absolute deadline.
    assert_eq!(held(&mut r, "long"), Some(("app-1".into(), 2, long)));
    assert_eq!(digest(&mut r, "long"), long_digest);
    assert_eq!(held(&mut r, "seen"), Some(("app-1".into(), 1, seen)));
    assert!(!exists(&mut r, "lost"), "the lost grant never arrived");
    // The lease expires on the new master, on time.
    expect_expiry(&mut r, "short", earliest, latest);
    // Holders go on renewing there.
    assert_eq!(renew(&mut r, "long", "app-1", 60_000), 1);
    // Tokens exceed every token the old master granted.
    let t = acquire(&mut r, "lost", "z", 60_000).unwrap();
    assert!(t > lost && t > highest, "{t} after failover, lost {lost}");
    assert_eq!(force_release(&mut r, "seen"), 1);
    let t = acquire(&mut r, "seen", "z", 60_000).unwrap();
    assert!(t > lost_seen, "{t} after failover, lost {lost_seen}");
    // WAIT is served there.
    let waiter = spawn_waiter(&replica, "long", "app-4", 20_000);
    wait_waiters(&mut r, 1);
    assert_eq!(release(&mut r, "long", "app-1"), Some(1));
    assert_eq!(release(&mut r, "long", "app-1"), Some(0));
    let handed = waiter.join().unwrap().unwrap().unwrap();
    assert!(handed > t);
}

#[test]
fn sentinel_failover_command_demotes_the_old_master_and_keeps_the_guarantees() {
    let (old, new, sentinel) = watched_pair();
    let mut m = old.conn();
    let long = acquire(&mut m, "long", "app-1", 60_000).unwrap();
    let (_, earliest, latest) = grant_timed(&mut m, "short", "app-2", 5_000);
    let waiter = spawn_waiter(&old, "long", "w", 0);
    wait_waiters(&mut m, 1);
    synced(&mut m);
    let long_digest = digest(&mut m, "long");

    sentinel.failover();
    sentinel.wait_master(&new, Duration::from_secs(30));
    // Until Sentinel turns it into a replica, the old master still takes
    // writes: a grant there never reaches the new master.
    let split: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("split")
        .arg("x")
        .arg(60_000)
        .query(&mut m)
        .ok()
        .flatten();

    let mut n = new.conn();
    assert_eq!(held(&mut n, "long"), Some(("app-1".into(), 1, long)));
    assert_eq!(digest(&mut n, "long"), long_digest);
    expect_expiry(&mut n, "short", earliest, latest);

    // Sentinel demotes the old master: its waiter is answered. Sentinel
    // sends SLAVEOF and CLIENT KILL TYPE normal in one MULTI, so the
    // connection may close before Redis's -UNBLOCKED reaches the client;
    // either way the wait ends without a grant.
    let err = waiter.join().unwrap().unwrap_err();
    assert!(
        err.code() == Some("UNBLOCKED") || err.is_connection_dropped() || err.is_io_error(),
        "{err}"
    );
    wait_for(
        "the old master to replicate from the new one",
        Duration::from_secs(30),
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
    synced(&mut n);
    let mut m = old.conn();
    assert_eq!(held(&mut m, "long"), Some(("app-1".into(), 1, long)));
    assert_eq!(digest(&mut m, "long"), long_digest);
    assert!(!exists(&mut m, "short") && !exists(&mut m, "split"));
    assert_eq!(stat(&mut m, "waiters"), 0);

    // Tokens on the new master exceed everything the old one granted.
    let t = acquire(&mut n, "split", "z", 60_000).unwrap();
    if let Some(lost) = split {
        assert!(t > lost, "{t} after failover, split-brain grant {lost}");
    }
    assert!(t > long);
}
