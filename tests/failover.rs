//! Promotion and demotion with `REPLICAOF` on real redis-server processes.
//! A promoted replica arms timers for every lease it holds, expires the
//! overdue ones at once, serves WAIT, and issues tokens greater than any the
//! old master granted — also grants that never reached it. A demoted master
//! answers its blocked waiters and its timers stop acting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};
use testkit::lock::{self, acquire, exists, force_release, release, stat};
use testkit::{info_field, wait_for, Server};

/// A master and one replica in sync.
fn pair() -> (Server, Server) {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    // The master counts the replica as online from its first ACK (up to a
    // second after the sync); from then on WAIT answers at once.
    synced(&mut master.conn());
    (master, replica)
}

/// Waits until the replica has processed everything the master sent.
fn synced(m: &mut Connection) {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(m).unwrap();
    assert_eq!(acked, 1, "the replica acknowledged");
}

/// `REPLICAOF NO ONE`, and waits until the server says it is a master.
fn promote(server: &Server) {
    let mut c = server.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c)
        .unwrap();
    wait_for("the promotion", Duration::from_secs(5), || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        (info_field(&info, "role").as_deref() == Some("master")).then_some(())
    });
}

fn spawn_waiter(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: u64,
    wait_ms: u64,
) -> JoinHandle<RedisResult<Option<i64>>> {
    let mut c = server.conn();
    let (key, owner) = (key.to_string(), owner.to_string());
    std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(ttl)
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

fn dbsize(c: &mut Connection) -> i64 {
    redis::cmd("DBSIZE").query(c).unwrap()
}

#[test]
fn a_promoted_replica_expires_every_lease_it_holds_on_time() {
    let (mut master, replica) = pair();
    let mut m = master.conn();
    // Leases ending 1.5 s to 3.4 s from now, each with the window its
    // deadline lies in.
    let mut leases = Vec::new();
    for i in 0..20u64 {
        let key = format!("lease{i}");
        let ttl = Duration::from_millis(1_500 + 100 * i);
        let before = Instant::now();
        acquire(&mut m, &key, "a", ttl.as_millis() as u64).unwrap();
        leases.push((key, before + ttl, Instant::now() + ttl));
    }
    let long = acquire(&mut m, "long", "a", 60_000).unwrap();
    acquire(&mut m, "long", "a", 60_000).unwrap();
    synced(&mut m);
    drop(m);
    master.kill9();
    promote(&replica);

    // Each lease disappears from the new master by its own deadline (with
    // a generous allowance), never before it.
    let mut r = replica.conn();
    let mut pending = leases;
    let until = Instant::now() + Duration::from_secs(3 + 4);
    while !pending.is_empty() && Instant::now() < until {
        let now = Instant::now();
        pending.retain(|(key, earliest, latest)| {
            if exists(&mut r, key) {
                assert!(
                    now < *latest + Duration::from_secs(2),
                    "{key} outlived its lease"
                );
                return true;
            }
            assert!(
                now + Duration::from_millis(50) >= *earliest,
                "{key} expired {:?} early",
                *earliest - now
            );
            false
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<&String> = pending.iter().map(|(k, ..)| k).collect();
    assert!(left.is_empty(), "never expired: {left:?}");
    assert_eq!(stat(&mut r, "expired"), 20);
    let i = lock::info(&mut r, "long").unwrap();
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, long));
}

#[test]
fn a_promoted_replica_expires_overdue_leases_at_once() {
    let (mut master, replica) = pair();
    let mut m = master.conn();
    for i in 0..20 {
        acquire(&mut m, &format!("overdue{i}"), "a", 1_500).unwrap();
    }
    let deadline = Instant::now() + Duration::from_millis(1_500);
    acquire(&mut m, "long", "a", 60_000).unwrap();
    synced(&mut m);
    drop(m);
    // The master dies before its timers expire anything.
    master.kill9();
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    std::thread::sleep(Duration::from_millis(300));

    let mut r = replica.conn();
    assert_eq!(dbsize(&mut r), 21, "a replica never expires by itself");
    assert_eq!(lock::info(&mut r, "overdue0"), None);
    promote(&replica);
    let promoted = Instant::now();
    wait_for(
        "the overdue leases to be expired",
        Duration::from_millis(1_500),
        || (dbsize(&mut r) == 1).then_some(()),
    );
    assert!(promoted.elapsed() < Duration::from_millis(1_500));
    assert_eq!(stat(&mut r, "expired"), 20);
    assert!(exists(&mut r, "long"));
}

#[test]
fn a_promoted_replica_serves_wait() {
    let (mut master, replica) = pair();
    let mut m = master.conn();
    let t_expiring = acquire(&mut m, "expiring", "a", 2_500).unwrap();
    let t_held = acquire(&mut m, "held", "a", 60_000).unwrap();
    synced(&mut m);
    drop(m);
    master.kill9();
    promote(&replica);

    let mut r = replica.conn();
    let started = Instant::now();
    // Handed off when the new master's timer expires the old lease...
    let on_expiry = spawn_waiter(&replica, "expiring", "b", 60_000, 20_000);
    // ... and when the holder releases on the new master.
    let on_release = spawn_waiter(&replica, "held", "c", 60_000, 20_000);
    wait_waiters(&mut r, 2);
    let late = spawn_waiter(&replica, "held", "d", 60_000, 300);
    wait_waiters(&mut r, 3);
    assert_eq!(release(&mut r, "held", "a"), Some(0));

    let got = on_expiry
        .join()
        .unwrap()
        .unwrap()
        .expect("granted on expiry");
    assert!(got > t_expiring);
    assert!(
        started.elapsed() < Duration::from_millis(2_500 + 2_000),
        "handed off on time"
    );
    let got_held = on_release
        .join()
        .unwrap()
        .unwrap()
        .expect("granted on release");
    assert!(got_held > t_held);
    assert_eq!(late.join().unwrap().unwrap(), None, "a wait times out");
    let i = lock::info(&mut r, "expiring").unwrap();
    assert_eq!((i.owner.as_str(), i.token), ("b", got));
    assert_eq!(stat(&mut r, "handoffs"), 2);
}

#[test]
fn tokens_after_promotion_exceed_grants_made_while_the_replica_was_stopped() {
    // The sequence: stop the replica, grant on the master, kill -9
    // the master, resume and promote the replica, grant the same keys.
    let (mut master, replica) = pair();
    let mut m = master.conn();
    acquire(&mut m, "seen", "a", 60_000).unwrap();
    synced(&mut m);

    replica.pause();
    let lost_fresh = acquire(&mut m, "fresh", "x", 60_000).unwrap();
    assert_eq!(force_release(&mut m, "seen"), 1);
    let lost_seen = acquire(&mut m, "seen", "y", 60_000).unwrap();
    drop(m);
    master.kill9();
    replica.resume();
    promote(&replica);

    // Whatever of those reached the replica, its next grants are larger.
    let mut r = replica.conn();
    for (key, lost) in [("fresh", lost_fresh), ("seen", lost_seen)] {
        force_release(&mut r, key);
        let t = acquire(&mut r, key, "z", 60_000).unwrap();
        assert!(t > lost, "{key}: token {t} after failover, lost {lost}");
    }
}

#[test]
fn tokens_after_promotion_exceed_grants_that_never_reached_the_replica() {
    let (mut master, replica) = pair();
    let mut m = master.conn();
    let seen = acquire(&mut m, "seen", "a", 60_000).unwrap();
    synced(&mut m);

    // Stop the replica and cut its link: nothing more reaches it.
    replica.pause();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut m)
        .unwrap();
    assert_eq!(killed, 1);
    let lost_fresh = acquire(&mut m, "fresh", "x", 60_000).unwrap();
    assert_eq!(force_release(&mut m, "seen"), 1);
    let lost_seen = acquire(&mut m, "seen", "y", 60_000).unwrap();
    // Many grants, so the counter part of the tokens runs ahead.
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        pipe.cmd("LOCK.ACQUIRE")
            .arg(format!("burst{i}"))
            .arg("x")
            .arg(60_000);
    }
    let burst: Vec<i64> = pipe.query(&mut m).unwrap();
    let lost_max = *burst.iter().max().unwrap();
    drop(m);
    master.kill9();
    replica.resume();
    promote(&replica);

    let mut r = replica.conn();
    assert!(!exists(&mut r, "fresh"), "the lost grant never arrived");
    assert!(!exists(&mut r, "burst0"));
    let i = lock::info(&mut r, "seen").unwrap();
    assert_eq!((i.owner.as_str(), i.token), ("a", seen), "the old holder");
    let t = acquire(&mut r, "fresh", "z", 60_000).unwrap();
    assert!(
        t > lost_fresh,
        "fresh: {t} after failover, lost {lost_fresh}"
    );
    assert!(t > lost_max, "{t} after failover, lost up to {lost_max}");
    assert_eq!(force_release(&mut r, "seen"), 1);
    let t = acquire(&mut r, "seen", "z", 60_000).unwrap();
    assert!(t > lost_seen, "seen: {t} after failover, lost {lost_seen}");
    let t = acquire(&mut r, "burst1999", "z", 60_000).unwrap();
    assert!(t > lost_max);
}

#[test]
fn a_demoted_master_answers_its_waiters_with_unblocked() {
    let old = Server::start();
    let other = Server::start();
    let mut m = old.conn();
    acquire(&mut m, "k1", "holder", 60_000).unwrap();
    acquire(&mut m, "k2", "holder", 60_000).unwrap();
    let waiters = [
        spawn_waiter(&old, "k1", "w1", 10_000, 0),
        spawn_waiter(&old, "k1", "w2", 10_000, 30_000),
        spawn_waiter(&old, "k2", "w3", 10_000, 30_000),
    ];
    wait_waiters(&mut m, 3);

    let started = Instant::now();
    old.replicate_from(&other);
    for w in waiters {
        let err = w.join().unwrap().unwrap_err();
        assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut m = old.conn();
    assert_eq!(stat(&mut m, "waiters"), 0);
    assert_eq!(stat(&mut m, "handoffs"), 0);
}

#[test]
fn a_demoted_master_stops_expiring_leases() {
    // Fail over and back: the old master becomes a replica of its former
    // replica, keeping (by partial resync) the leases its timers were armed
    // for.
    let (old, new) = pair();
    let mut m = old.conn();
    acquire(&mut m, "short", "a", 3_000).unwrap();
    let deadline = Instant::now() + Duration::from_millis(3_000);
    acquire(&mut m, "long", "a", 60_000).unwrap();
    synced(&mut m);
    promote(&new);
    old.replicate_from(&new);
    let mut m = old.conn();
    assert!(exists(&mut m, "short"));

    // The new master freezes: nothing deletes the lease but the old
    // master's timers, which must no longer act.
    new.pause();
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        exists(&mut m, "short"),
        "the demoted master expired a lease"
    );
    assert_eq!(lock::info(&mut m, "short"), None, "nor is it shown");
    assert_eq!(stat(&mut m, "expired"), 0);

    new.resume();
    wait_for("the new master's deletion", Duration::from_secs(5), || {
        (!exists(&mut m, "short")).then_some(())
    });
    let mut n = new.conn();
    assert_eq!(stat(&mut n, "expired"), 1);
    assert!(exists(&mut m, "long"));
}

#[test]
fn a_replica_restarted_from_its_aof_then_promoted_keeps_the_locks() {
    // The master dies; the replica restarts from its own AOF (as a replica,
    // from its config) before anyone promotes it.
    let mut master = Server::start();
    let mut replica = Server::config()
        .arg("appendonly", "yes")
        .arg("replicaof", &format!("127.0.0.1 {}", master.port))
        .start();
    replica.wait_replication_link();
    let mut r = replica.conn();
    // After the initial sync the replica rewrites its AOF; until that is
    // done a crash would lose what it received (Redis's rule).
    wait_for("the AOF rewrite to finish", Duration::from_secs(20), || {
        let busy = testkit::info_int(&mut r, "persistence", "aof_rewrite_in_progress")
            + testkit::info_int(&mut r, "persistence", "aof_rewrite_scheduled");
        (busy == 0).then_some(())
    });
    let mut m = master.conn();
    synced(&mut m);
    let long = acquire(&mut m, "long", "a", 60_000).unwrap();
    acquire(&mut m, "long", "a", 60_000).unwrap();
    let before = Instant::now();
    acquire(&mut m, "short", "a", 3_000).unwrap();
    let (earliest, latest) = (
        before + Duration::from_millis(3_000),
        Instant::now() + Duration::from_millis(3_000),
    );
    synced(&mut m);
    drop((m, r));
    master.kill9();
    replica.kill9();
    replica.restart();
    promote(&replica);

    let mut r = replica.conn();
    let i = lock::info(&mut r, "long").expect("the lock survived the replica's restart");
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, long));
    // Its lease runs out on the new master, on time.
    wait_for("the short lease to expire", Duration::from_secs(8), || {
        (!exists(&mut r, "short")).then_some(())
    });
    let now = Instant::now();
    assert!(now + Duration::from_millis(50) >= earliest, "expired early");
    assert!(now < latest + Duration::from_secs(2), "expired late");
    let t = acquire(&mut r, "fresh", "b", 60_000).unwrap();
    assert!(t > long);
}
