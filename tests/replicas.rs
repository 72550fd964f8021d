//! Replication, promotion and demotion on real redis-server processes: a
//! master and a replica on loopback, both with the module.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::lock::{self, acquire, digest};
use testkit::{info_int, wait_for, Server};

/// (owner, holds, ttl, token) or None.
fn info(c: &mut Connection, key: &str) -> Option<(String, i64, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.ttl, i.token))
}

/// Waits until the replica has processed everything the master sent.
fn sync(master: &mut Connection, replica: &Server) {
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(master).unwrap();
    assert_eq!(n, 1, "replica acknowledged");
    let _ = replica;
}

fn pair() -> (Server, Server) {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    (master, replica)
}

/// The replica shows exactly what the master shows (same owner, holds,
/// token; same digest, which covers the absolute deadline).
fn same_on_both(m: &mut Connection, r: &mut Connection, key: &str) {
    let on_master = info(m, key);
    let on_replica = info(r, key);
    assert_eq!(
        on_master.as_ref().map(|(o, h, _, t)| (o.clone(), *h, *t)),
        on_replica.as_ref().map(|(o, h, _, t)| (o.clone(), *h, *t)),
        "{key}"
    );
    assert_eq!(
        digest(m, key),
        digest(r, key),
        "{key}: digest (owner, holds, token, deadline)"
    );
}

#[test]
fn every_effect_reaches_the_replica() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();

    // Grant, re-entry, renewal, partial release.
    acquire(&mut m, "k", "a", 60_000).unwrap();
    sync(&mut m, &replica);
    same_on_both(&mut m, &mut r, "k");
    acquire(&mut m, "k", "a", 50_000).unwrap();
    let _: i64 = redis::cmd("LOCK.RENEW")
        .arg("k")
        .arg("a")
        .arg(40_000)
        .query(&mut m)
        .unwrap();
    sync(&mut m, &replica);
    same_on_both(&mut m, &mut r, "k");
    let _: i64 = redis::cmd("LOCK.RELEASE")
        .arg("k")
        .arg("a")
        .query(&mut m)
        .unwrap();
    sync(&mut m, &replica);
    same_on_both(&mut m, &mut r, "k");
    assert_eq!(info(&mut r, "k").unwrap().1, 1);

    // Hand-off to a waiter.
    let mut w = master.conn();
    let waiter = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("b")
            .arg(30_000)
            .arg("WAIT")
            .arg(10_000)
            .query::<Option<i64>>(&mut w)
            .unwrap()
    });
    wait_for("the waiter to queue", Duration::from_secs(5), || {
        (info_int(&mut m, "lock", "lock_waiters") == 1).then_some(())
    });
    let _: i64 = redis::cmd("LOCK.RELEASE")
        .arg("k")
        .arg("a")
        .query(&mut m)
        .unwrap();
    let token = waiter.join().unwrap().unwrap();
    sync(&mut m, &replica);
    same_on_both(&mut m, &mut r, "k");
    assert_eq!(info(&mut r, "k").unwrap().3, token);

    // Force-release.
    let _: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("k")
        .query(&mut m)
        .unwrap();
    sync(&mut m, &replica);
    assert_eq!(info(&mut r, "k"), None);
    let n: i64 = redis::cmd("EXISTS").arg("k").query(&mut r).unwrap();
    assert_eq!(n, 0);

    // Expiry by the master's timer reaches the replica as a deletion.
    acquire(&mut m, "short", "a", 300).unwrap();
    sync(&mut m, &replica);
    assert!(info(&mut r, "short").is_some());
    wait_for(
        "the master's expiry to reach the replica",
        Duration::from_secs(5),
        || {
            let n: i64 = redis::cmd("EXISTS").arg("short").query(&mut r).unwrap();
            (n == 0).then_some(())
        },
    );
}

#[test]
fn writes_on_a_replica_are_refused_readonly() {
    let (_master, replica) = pair();
    let mut r = replica.conn();
    for cmd in [
        vec!["LOCK.ACQUIRE", "k", "o", "1000"],
        vec!["LOCK.RENEW", "k", "o", "1000"],
        vec!["LOCK.RELEASE", "k", "o"],
        vec!["LOCK.FORCERELEASE", "k"],
        vec!["LOCK.APPLY", "k", "o", "1", "1", "1"],
    ] {
        let err = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query::<Value>(&mut r)
            .unwrap_err();
        assert_eq!(err.code(), Some("READONLY"), "{cmd:?}: {err}");
    }
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut r).unwrap();
    assert_eq!(v, Value::Nil, "reads work");
}

#[test]
fn a_replica_never_expires_but_never_shows_a_passed_lease() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();
    acquire(&mut m, "k", "a", 1_500).unwrap();
    sync(&mut m, &replica);
    // Freeze the master: no DEL can reach the replica.
    master.pause();
    let n: i64 = redis::cmd("EXISTS").arg("k").query(&mut r).unwrap();
    assert_eq!(n, 1, "paused before the deadline");
    std::thread::sleep(Duration::from_millis(1_800));
    assert_eq!(info(&mut r, "k"), None, "a passed lease is never shown");
    let n: i64 = redis::cmd("EXISTS").arg("k").query(&mut r).unwrap();
    assert_eq!(n, 1, "but the replica did not delete it on its own");
    master.resume();
    wait_for("the master's deletion", Duration::from_secs(5), || {
        let n: i64 = redis::cmd("EXISTS").arg("k").query(&mut r).unwrap();
        (n == 0).then_some(())
    });
}

#[test]
fn full_resync_and_replica_restart_keep_locks() {
    let master = Server::start();
    let mut m = master.conn();
    for i in 0..50 {
        acquire(&mut m, &format!("k{i}"), &format!("o{i}"), 60_000).unwrap();
    }
    acquire(&mut m, "k0", "o0", 60_000).unwrap();
    // A replica that joins later gets everything by RDB transfer.
    let mut replica = Server::config().arg("appendonly", "yes").start();
    replica.replicate_from(&master);
    let mut r = replica.conn();
    sync(&mut m, &replica);
    for i in 0..50 {
        same_on_both(&mut m, &mut r, &format!("k{i}"));
    }
    // Partial resync after a short disconnect.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("master")
        .query(&mut r)
        .unwrap();
    acquire(&mut m, "later", "x", 60_000).unwrap();
    replica.wait_replication_link();
    sync(&mut m, &replica);
    same_on_both(&mut m, &mut r, "later");
    let partial = info_int(&mut m, "stats", "sync_partial_ok");
    assert!(partial >= 1, "the reconnect was a partial resync");
    // Restart the replica: it loads its AOF, then resyncs.
    drop(r);
    replica.restart();
    replica.replicate_from(&master);
    acquire(&mut m, "after", "y", 60_000).unwrap();
    sync(&mut m, &replica);
    let mut r = replica.conn();
    for key in ["k0", "k49", "later", "after"] {
        same_on_both(&mut m, &mut r, key);
    }
    assert_eq!(info(&mut r, "k0").unwrap().1, 2);
}

#[test]
fn promotion_expires_overdue_leases_serves_wait_and_issues_larger_tokens() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();
    let kept = acquire(&mut m, "kept", "a", 60_000).unwrap();
    acquire(&mut m, "overdue", "a", 400).unwrap();
    acquire(&mut m, "soon", "a", 1_500).unwrap();
    sync(&mut m, &replica);
    // The replica misses the last grant: freeze it, grant, kill the master.
    replica.pause();
    let lost = acquire(&mut m, "k", "lost-holder", 60_000).unwrap();
    let mut master = master;
    master.pause();
    std::thread::sleep(Duration::from_millis(600));
    replica.resume();
    master.kill9();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .unwrap();

    // Overdue lease: removed at once by the new master.
    wait_for(
        "the overdue lease to be expired",
        Duration::from_secs(3),
        || {
            let n: i64 = redis::cmd("EXISTS").arg("overdue").query(&mut r).unwrap();
            (n == 0).then_some(())
        },
    );
    // A live lease keeps holder and token, and still expires on time.
    assert_eq!(
        info(&mut r, "kept").map(|i| (i.0, i.3)),
        Some(("a".to_string(), kept))
    );
    wait_for(
        "the new master to expire a lease on time",
        Duration::from_secs(4),
        || {
            let n: i64 = redis::cmd("EXISTS").arg("soon").query(&mut r).unwrap();
            (n == 0).then_some(())
        },
    );
    // The grant that may never have reached it (the kernel may still have
    // buffered it for the stopped replica): whatever the new master holds
    // for the key, its next grant has a larger token.
    let _: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("k")
        .query(&mut r)
        .unwrap();
    let new = acquire(&mut r, "k", "new-holder", 60_000).unwrap();
    assert!(
        new > lost,
        "token {new} after failover must exceed the lost {lost}"
    );
    // WAIT is served by the new master.
    let mut w = replica.conn();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("kept")
            .arg("b")
            .arg(10_000)
            .arg("WAIT")
            .arg(10_000)
            .query::<Option<i64>>(&mut w)
            .unwrap()
    });
    wait_for("a waiter on the new master", Duration::from_secs(5), || {
        (info_int(&mut r, "lock", "lock_waiters") == 1).then_some(())
    });
    let _: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("kept")
        .query(&mut r)
        .unwrap();
    let t = waiter.join().unwrap().unwrap();
    assert!(t > kept);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn demotion_answers_waiters_and_stops_the_timers() {
    let old_master = Server::start();
    let other = Server::start();
    let mut m = old_master.conn();
    acquire(&mut m, "k", "holder", 60_000).unwrap();
    acquire(&mut m, "short", "holder", 800).unwrap();
    let mut w = old_master.conn();
    let waiter = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("w")
            .arg(10_000)
            .arg("WAIT")
            .arg(0)
            .query::<Option<i64>>(&mut w)
    });
    wait_for("the waiter to queue", Duration::from_secs(5), || {
        (info_int(&mut m, "lock", "lock_waiters") == 1).then_some(())
    });
    // `other` becomes the master of the old one.
    let mut o = other.conn();
    acquire(&mut o, "short", "new-world", 2_500).unwrap();
    old_master.replicate_from(&other);
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    let mut m = old_master.conn();
    assert_eq!(info_int(&mut m, "lock", "lock_waiters"), 0);
    assert!(
        info(&mut m, "short").is_some(),
        "the new master's lock arrived"
    );
    // Freeze the new master: the demoted node must not expire anything by
    // itself, even past the deadline.
    other.pause();
    std::thread::sleep(Duration::from_millis(2_700));
    let n: i64 = redis::cmd("EXISTS").arg("short").query(&mut m).unwrap();
    assert_eq!(n, 1, "the demoted node's timers stopped acting");
    assert_eq!(
        info(&mut m, "short"),
        None,
        "yet the passed lease is not shown"
    );
    assert_eq!(info_int(&mut m, "lock", "lock_expired"), 0);
    other.resume();
    wait_for("the master's deletion", Duration::from_secs(5), || {
        let n: i64 = redis::cmd("EXISTS").arg("short").query(&mut m).unwrap();
        (n == 0).then_some(())
    });
}

#[test]
fn the_aof_replays_effects_not_requests() {
    let mut s = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", "no")
        .start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("LOCK.RENEW")
        .arg("k")
        .arg("a")
        .arg(45_000)
        .query(&mut c)
        .unwrap();
    let before = digest(&mut c, "k");
    drop(c);
    s.kill9();
    // Replay well after: the deadline is absolute, not `now + ttl` again.
    std::thread::sleep(Duration::from_millis(1_200));
    s.restart();
    let mut c = s.conn();
    assert_eq!(
        digest(&mut c, "k"),
        before,
        "same owner, holds, token and absolute deadline"
    );
    let (_, _, ttl, token) = info(&mut c, "k").unwrap();
    assert_eq!(token, t);
    assert!(ttl < 45_000 - 1_000, "ttl {ttl} shows the downtime");
    let text: String = std::fs::read_dir(s.dir().join("appendonlydir"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .collect();
    assert!(
        text.contains("LOCK.APPLY"),
        "effects are written as LOCK.APPLY"
    );
    assert!(
        !text.contains("LOCK.ACQUIRE") && !text.contains("LOCK.RENEW"),
        "requests are not"
    );
}
