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

use std::time::{Duration, Instant};

use testkit::lock::{
    self, acquire, exists, expect_expiry, force_release, grant_timed, release, spawn_waiter, stat,
    wait_waiters,
};
use testkit::replication::{cut_replica_link, pair, replica_with_aof, synced};
use testkit::timing::{before, lease_ms};
use testkit::{dbsize, info_field, until_conclusive, wait_for, Server, EXPIRY_SLACK, PATIENCE};

/// `REPLICAOF NO ONE`, and waits until the server says it is a master.
fn promote(server: &Server) {
    let mut c = server.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut c)
        .unwrap();
    wait_for("the promotion", PATIENCE, || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        (info_field(&info, "role").as_deref() == Some("master")).then_some(())
    });
}

#[test]
fn a_promoted_replica_expires_every_lease_it_holds_on_time() {
    // The master must die before any lease ends (else its own expiries reach
    // the replica): an attempt too slow for that proves nothing, and the
    // next one uses longer leases.
    until_conclusive(|attempt| {
        let (mut master, replica) = pair();
        let mut m = master.conn();
        // Leases ending 1.5 s to 3.4 s from now (on the first attempt).
        let base = lease_ms(1_500, attempt);
        let leases: Vec<_> = (0..20u64)
            .map(|i| grant_timed(&mut m, &format!("lease{i}"), "a", base + 100 * i))
            .collect();
        let long = acquire(&mut m, "long", "a", 600_000).unwrap();
        acquire(&mut m, "long", "a", 600_000).unwrap();
        synced(&mut m, 1);
        drop(m);
        master.kill9();
        before("the master's death", Instant::now(), leases[0].earliest)?;
        promote(&replica);

        // Each lease disappears from the new master by its own deadline
        // (with a generous allowance; from the promotion on, for a deadline
        // that passed before it), never before it.
        let mut r = replica.conn();
        expect_expiry(&mut r, &leases);
        assert_eq!(stat(&mut r, "expired"), 20);
        let i = lock::info(&mut r, "long").unwrap();
        assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, long));
        Ok(())
    });
}

#[test]
fn a_promoted_replica_expires_overdue_leases_at_once() {
    // The master must die before the leases end (else its own expiries
    // reach the replica): again with longer leases when it did not.
    until_conclusive(|attempt| {
        let (mut master, replica) = pair();
        let mut m = master.conn();
        let ttl = lease_ms(1_500, attempt);
        let first = grant_timed(&mut m, "overdue0", "a", ttl);
        for i in 1..20 {
            acquire(&mut m, &format!("overdue{i}"), "a", ttl).unwrap();
        }
        let deadline = Instant::now() + Duration::from_millis(ttl);
        acquire(&mut m, "long", "a", 600_000).unwrap();
        synced(&mut m, 1);
        drop(m);
        // The master dies before its timers expire anything.
        master.kill9();
        before("the master's death", Instant::now(), first.earliest)?;
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        std::thread::sleep(Duration::from_millis(300));

        let mut r = replica.conn();
        assert_eq!(dbsize(&mut r), 21, "a replica never expires by itself");
        assert_eq!(lock::info(&mut r, "overdue0"), None);
        promote(&replica);
        let promoted = Instant::now();
        wait_for("the overdue leases to be expired", EXPIRY_SLACK, || {
            (dbsize(&mut r) == 1).then_some(())
        });
        assert!(promoted.elapsed() < EXPIRY_SLACK);
        assert_eq!(stat(&mut r, "expired"), 20);
        assert!(exists(&mut r, "long"));
        Ok(())
    });
}

#[test]
fn a_promoted_replica_serves_wait() {
    // Both waiters must be queued on the new master before the old lease
    // ends there (else the first one finds it free): again with a longer
    // lease when they were not.
    until_conclusive(|attempt| {
        let (mut master, replica) = pair();
        let mut m = master.conn();
        let expiring = grant_timed(&mut m, "expiring", "a", lease_ms(2_500, attempt));
        let t_held = acquire(&mut m, "held", "a", 600_000).unwrap();
        synced(&mut m, 1);
        drop(m);
        master.kill9();
        promote(&replica);

        let mut r = replica.conn();
        // Handed off when the new master's timer expires the old lease...
        let on_expiry = spawn_waiter(&replica, "expiring", "b", 600_000, 120_000);
        // ... and when the holder releases on the new master.
        let on_release = spawn_waiter(&replica, "held", "c", 600_000, 120_000);
        wait_waiters(&mut r, 2);
        before("the waiters' arrival", Instant::now(), expiring.earliest)?;
        // Behind "c", whatever comes first: times out.
        let late = spawn_waiter(&replica, "held", "d", 600_000, 300);
        assert_eq!(release(&mut r, "held", "a"), Some(0));

        let got = on_expiry.join().unwrap().expect("granted on expiry");
        assert!(got > expiring.token);
        assert!(
            Instant::now() < expiring.latest + EXPIRY_SLACK,
            "handed off on time"
        );
        let got_held = on_release.join().unwrap().expect("granted on release");
        assert!(got_held > t_held);
        assert_eq!(late.join().unwrap(), None, "a wait times out");
        let i = lock::info(&mut r, "expiring").unwrap();
        assert_eq!((i.owner.as_str(), i.token), ("b", got));
        assert_eq!(stat(&mut r, "handoffs"), 2);
        Ok(())
    });
}

#[test]
fn tokens_after_promotion_exceed_grants_made_while_the_replica_was_stopped() {
    // The sequence: stop the replica, grant on the master, kill -9
    // the master, resume and promote the replica, grant the same keys.
    let (mut master, replica) = pair();
    let mut m = master.conn();
    acquire(&mut m, "seen", "a", 60_000).unwrap();
    synced(&mut m, 1);

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
    synced(&mut m, 1);

    // Stop the replica and cut its link: nothing more reaches it.
    replica.pause();
    cut_replica_link(&mut m);
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
    acquire(&mut m, "k1", "holder", 600_000).unwrap();
    acquire(&mut m, "k2", "holder", 600_000).unwrap();
    let waiters = [
        spawn_waiter(&old, "k1", "w1", 10_000, 0),
        spawn_waiter(&old, "k1", "w2", 10_000, 300_000),
        spawn_waiter(&old, "k2", "w3", 10_000, 300_000),
    ];
    wait_waiters(&mut m, 3);

    let started = Instant::now();
    old.replicate_from(&other);
    for w in waiters {
        let err = w.join().unwrap_err();
        assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    }
    // Answered by the demotion, not by a wait running out.
    assert!(started.elapsed() < PATIENCE);
    let mut m = old.conn();
    assert_eq!(stat(&mut m, "waiters"), 0);
    assert_eq!(stat(&mut m, "handoffs"), 0);
}

#[test]
fn a_demoted_master_stops_expiring_leases() {
    // Fail over and back: the old master becomes a replica of its former
    // replica, keeping (by partial resync) the leases its timers were armed
    // for. The new master must be frozen before the lease ends (else its
    // deletion arrives): again with a longer lease when it was not.
    until_conclusive(|attempt| {
        let (old, new) = pair();
        let mut m = old.conn();
        let short = grant_timed(&mut m, "short", "a", lease_ms(3_000, attempt));
        acquire(&mut m, "long", "a", 600_000).unwrap();
        synced(&mut m, 1);
        promote(&new);
        old.replicate_from(&new);
        let mut m = old.conn();
        let kept = exists(&mut m, "short");

        // The new master freezes: nothing deletes the lease but the old
        // master's timers, which must no longer act.
        new.pause();
        before("the new master's freeze", Instant::now(), short.earliest)?;
        assert!(kept, "the old master keeps the lease after the switch");
        std::thread::sleep(short.latest.saturating_duration_since(Instant::now()));
        std::thread::sleep(Duration::from_millis(1_000));
        assert!(
            exists(&mut m, "short"),
            "the demoted master expired a lease"
        );
        assert_eq!(lock::info(&mut m, "short"), None, "nor is it shown");
        assert_eq!(stat(&mut m, "expired"), 0);

        new.resume();
        wait_for("the new master's deletion", PATIENCE, || {
            (!exists(&mut m, "short")).then_some(())
        });
        let mut n = new.conn();
        assert_eq!(stat(&mut n, "expired"), 1);
        assert!(exists(&mut m, "long"));
        Ok(())
    });
}

#[test]
fn a_replica_restarted_from_its_aof_then_promoted_keeps_the_locks() {
    // The master dies; the replica restarts from its own AOF (as a replica,
    // from its config) before anyone promotes it.
    let mut master = Server::start();
    let mut replica = replica_with_aof(&master);
    let mut m = master.conn();
    synced(&mut m, 1);
    let long = acquire(&mut m, "long", "a", 600_000).unwrap();
    acquire(&mut m, "long", "a", 600_000).unwrap();
    let short = grant_timed(&mut m, "short", "a", 3_000);
    synced(&mut m, 1);
    drop(m);
    master.kill9();
    replica.kill9();
    replica.restart();
    promote(&replica);

    let mut r = replica.conn();
    let i = lock::info(&mut r, "long").expect("the lock survived the replica's restart");
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, long));
    // Its lease runs out on the new master, on time (from the promotion on,
    // when that came after the deadline), never early.
    expect_expiry(&mut r, &[short]);
    let t = acquire(&mut r, "fresh", "b", 60_000).unwrap();
    assert!(t > long);
}
