//! While Redis pauses writes (`CLIENT PAUSE ... WRITE | ALL`, `FAILOVER`,
//! `SHUTDOWN` waiting for a lagging replica, a manual `CLUSTER FAILOVER`),
//! the module writes nothing: expiries and hand-offs wait for the end of the
//! pause, then happen at once. Redis 7.0 aborts a server that propagates
//! anything during a pause when AOF is on or a replica is attached, so every
//! test here has both.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use redis::Connection;
use testkit::cluster::Cluster;
use testkit::lock::{self, acquire, spawn_waiter, stat};
use testkit::replication::synced;
use testkit::{dbsize, info_int, wait_for, Server, PATIENCE};

/// A master with AOF on (fsync always) and a replica attached. The master
/// sends its periodic replication PING rarely, so that its replication
/// offset moves only when something is propagated.
fn master_with_replica() -> (Server, Server) {
    let master = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("repl-ping-replica-period", "30")
        .start();
    let replica = Server::start();
    replica.replicate_from(&master);
    synced(&mut master.conn(), 1);
    (master, replica)
}

fn role(c: &mut Connection) -> String {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(c).unwrap();
    redis::from_redis_value_ref(&role[0]).unwrap()
}

/// A lease length that surely outlives filling `n` locks on this machine:
/// the time one round of `n` acquires and releases takes here, times ten,
/// and at least a second.
fn lease_for(c: &mut Connection, prefix: &str, n: usize) -> u64 {
    let started = Instant::now();
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("LOCK.ACQUIRE")
            .arg(format!("{prefix}probe{i}"))
            .arg("p")
            .arg(600_000);
    }
    for i in 0..n {
        p.cmd("LOCK.RELEASE")
            .arg(format!("{prefix}probe{i}"))
            .arg("p");
    }
    let _: Vec<Option<i64>> = p.query(c).unwrap();
    let measured = u64::try_from(started.elapsed().as_millis()).unwrap();
    (measured * 10).max(1_000)
}

/// Grants `n` locks `<prefix><i>` with a `ttl_ms` lease; returns when the
/// last one's deadline has surely passed on the server's clock.
fn fill(c: &mut Connection, prefix: &str, n: usize, ttl_ms: u64) -> Instant {
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("LOCK.ACQUIRE")
            .arg(format!("{prefix}{i}"))
            .arg("o")
            .arg(ttl_ms);
    }
    let tokens: Vec<Option<i64>> = p.query(c).unwrap();
    assert!(tokens.iter().all(Option::is_some), "every lock granted");
    // Deadlines are `grant time + ttl`, and every grant happened before now.
    Instant::now() + Duration::from_millis(ttl_ms + 200)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The server's log shows no abort of any kind.
fn assert_no_abort(s: &Server) {
    let log = s.log();
    for bad in ["ASSERTION", "crashed by signal", "panic", "Guru Meditation"] {
        assert!(!log.contains(bad), "{bad} in the log of {}:\n{log}", s.port);
    }
}

/// Bytes of the server's AOF (every file under `appendonlydir`).
fn aof_bytes(s: &Server) -> u64 {
    std::fs::read_dir(s.dir().join("appendonlydir"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn repl_offset(c: &mut Connection) -> i64 {
    info_int(c, "replication", "master_repl_offset")
}

#[test]
fn a_write_pause_across_lease_deadlines_holds_every_expiry_until_it_ends() {
    const N: usize = 500;
    let (master, replica) = master_with_replica();
    let mut m = master.conn();
    let ttl = lease_for(&mut m, "", N);
    acquire(&mut m, "handoff", "holder", ttl).unwrap();
    let handed = spawn_waiter(&master, "handoff", "waiter", 600_000, 0);
    wait_for("the waiter to queue", PATIENCE, || {
        (lock::info(&mut m, "handoff").map(|i| i.waiters) == Some(1)).then_some(())
    });
    let all_due = fill(&mut m, "k", N, ttl);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_600_000)
        .arg("WRITE")
        .query(&mut m)
        .unwrap();
    // The pause began before any deadline (the lease outlives the fill).
    assert_eq!(stat(&mut m, "expired"), 0);
    let offset = repl_offset(&mut m);
    let aof = aof_bytes(&master);

    sleep_until(all_due);
    // Every deadline has passed: the server lives, shows no passed lease,
    // and has written and propagated nothing.
    let pong: String = redis::cmd("PING").query(&mut m).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(
        dbsize(&mut m),
        N as i64 + 1,
        "nothing deleted during the pause"
    );
    for key in ["k0", "k250", "handoff"] {
        assert_eq!(
            lock::info(&mut m, key),
            None,
            "{key}: a passed lease is never shown"
        );
    }
    assert_eq!(stat(&mut m, "expired"), 0);
    assert_eq!(repl_offset(&mut m), offset, "nothing propagated");
    assert_eq!(aof_bytes(&master), aof, "nothing written to the AOF");
    assert!(!handed.is_finished(), "no hand-off during the pause");

    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut m).unwrap();
    // Right after the pause: every lease expires, the waiter gets its lock.
    let token = handed.join().unwrap().expect("granted");
    wait_for("every lease to expire after the pause", PATIENCE, || {
        (dbsize(&mut m) == 1).then_some(())
    });
    assert_eq!(stat(&mut m, "expired"), N as i64 + 1);
    assert_eq!(stat(&mut m, "handoffs"), 1);
    assert_eq!(lock::info(&mut m, "handoff").map(|i| i.token), Some(token));
    synced(&mut m, 1);
    let mut r = replica.conn();
    assert_eq!(dbsize(&mut r), 1, "the replica got every deletion");
    assert_eq!(
        lock::digest(&mut r, "handoff"),
        lock::digest(&mut m, "handoff")
    );
    assert!(aof_bytes(&master) > aof, "the expiries reached the AOF");
    assert_no_abort(&master);
    assert_no_abort(&replica);
}

#[test]
fn a_pause_of_all_commands_across_lease_deadlines_is_survived() {
    const N: usize = 300;
    let (master, replica) = master_with_replica();
    let mut m = master.conn();
    let ttl = lease_for(&mut m, "", N);
    let all_due = fill(&mut m, "k", N, ttl);
    assert_eq!(stat(&mut m, "expired"), 0);
    // The pause lasts past every deadline, then ends by itself.
    let pause_ms = ttl + 1_500;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause_ms)
        .arg("ALL")
        .query(&mut m)
        .unwrap();
    sleep_until(all_due);
    // This PING waits for the end of the pause.
    let pong: String = redis::cmd("PING").query(&mut m).unwrap();
    assert_eq!(pong, "PONG");
    wait_for("every lease to expire after the pause", PATIENCE, || {
        (dbsize(&mut m) == 0).then_some(())
    });
    assert_eq!(stat(&mut m, "expired"), N as i64);
    synced(&mut m, 1);
    assert_eq!(dbsize(&mut replica.conn()), 0);
    assert_no_abort(&master);
}

#[test]
fn a_coordinated_failover_with_leases_expiring_during_it_completes() {
    const N: usize = 300;
    let (master, replica) = master_with_replica();
    let mut m = master.conn();
    let keep = acquire(&mut m, "keep", "a", 600_000).unwrap();
    let ttl = lease_for(&mut m, "", N);
    let all_due = fill(&mut m, "k", N, ttl);
    synced(&mut m, 1);
    assert_eq!(stat(&mut m, "expired"), 0);

    // The replica stops: the master pauses writes and waits for it to
    // catch up, while every deadline passes.
    replica.pause();
    let _: () = redis::cmd("FAILOVER")
        .arg("TO")
        .arg("127.0.0.1")
        .arg(replica.port)
        .arg("TIMEOUT")
        .arg(600_000)
        .query(&mut m)
        .unwrap();
    sleep_until(all_due);
    let pong: String = redis::cmd("PING").query(&mut m).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(
        stat(&mut m, "expired"),
        0,
        "nothing written during the pause"
    );
    replica.resume();

    let mut r = replica.conn();
    wait_for("the replica to take over", PATIENCE, || {
        (role(&mut r) == "master" && role(&mut m) == "slave").then_some(())
    });
    // The new master expires what is overdue; the old one agrees.
    wait_for(
        "the new master to expire the short leases",
        PATIENCE,
        || (dbsize(&mut r) == 1).then_some(()),
    );
    assert_eq!(lock::info(&mut r, "keep").map(|i| i.token), Some(keep));
    let fresh = acquire(&mut r, "fresh", "b", 600_000).unwrap();
    assert!(fresh > keep);
    synced(&mut r, 1);
    assert_eq!(dbsize(&mut m), 2);
    assert_eq!(lock::digest(&mut m, "keep"), lock::digest(&mut r, "keep"));
    assert_eq!(lock::info(&mut m, "fresh").map(|i| i.token), Some(fresh));
    assert_no_abort(&master);
    assert_no_abort(&replica);
}

#[test]
fn shutdown_waiting_for_a_lagging_replica_while_leases_expire_exits_cleanly_and_saves() {
    const N: usize = 300;
    let (mut master, replica) = master_with_replica();
    let mut m = master.conn();
    let ttl = lease_for(&mut m, "", N);
    // Redis waits this long for the replica, with writes paused; every
    // deadline falls inside that wait.
    let wait_s = ttl.div_ceil(1_000) + 3;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("shutdown-timeout")
        .arg(wait_s)
        .query(&mut m)
        .unwrap();
    replica.pause();
    let all_due = fill(&mut m, "k", N, ttl);
    let _: () = redis::cmd("SET")
        .arg("last")
        .arg("write")
        .query(&mut m)
        .unwrap();
    assert_eq!(stat(&mut m, "expired"), 0);

    master.cli(&["SHUTDOWN", "SAVE"]);
    assert!(
        Instant::now() > all_due,
        "the shutdown outlasted every deadline"
    );
    wait_for("the master to exit", PATIENCE, || {
        master
            .log()
            .contains("Redis is now ready to exit, bye bye")
            .then_some(())
    });
    let log = master.log();
    assert!(
        log.contains("Waiting for replicas before shutting down"),
        "{log}"
    );
    assert!(
        log.contains("DB saved on disk"),
        "the final save happened:\n{log}"
    );
    assert_no_abort(&master);
    replica.resume();

    // Everything written before the shutdown is in the saved file.
    master.set_arg("appendonly", "no");
    master.restart();
    let mut m = master.conn();
    let v: String = redis::cmd("GET").arg("last").query(&mut m).unwrap();
    assert_eq!(v, "write");
    wait_for("the overdue leases to expire at load", PATIENCE, || {
        (dbsize(&mut m) == 1).then_some(())
    });
}

#[test]
fn a_manual_cluster_failover_while_leases_expire() {
    // Deadlines fall densely over two seconds; the failover starts once the
    // first have expired, so its write pause (the old master waits for its
    // replica to catch up) falls among the rest.
    const N: usize = 4_000;
    const SPREAD_MS: usize = 2_000;
    let cluster = Cluster::start();
    let (old, replicas) = cluster.shard_of("{p}");
    let new = replicas[0];
    let mut m = cluster.node(old).conn();
    let keep = acquire(&mut m, "{p}keep", "a", 600_000).unwrap();
    let base = lease_for(&mut m, "{p}", N);
    let keys: Vec<String> = (0..N).map(|i| format!("{{p}}k{i}")).collect();
    let mut p = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        let ttl = base + (i * SPREAD_MS / N) as u64;
        p.cmd("LOCK.ACQUIRE").arg(k).arg("o").arg(ttl);
    }
    let _: Vec<Option<i64>> = p.query(&mut m).unwrap();
    synced(&mut m, 1);
    wait_for("the first leases to expire", PATIENCE, || {
        (stat(&mut m, "expired") > 0).then_some(())
    });

    cluster.failover(new, None);
    cluster.wait_healthy();
    let mut n = cluster.node(new).conn();
    let mut o = cluster.node(old).conn();
    let by_old = stat(&mut o, "expired");
    eprintln!("the old master expired {by_old} of {N} leases before it handed over");
    wait_for("every short lease to expire", PATIENCE, || {
        keys.iter().all(|k| !lock::exists(&mut n, k)).then_some(())
    });
    assert_eq!(lock::info(&mut n, "{p}keep").map(|i| i.token), Some(keep));
    let fresh = acquire(&mut n, "{p}fresh", "b", 600_000).unwrap();
    assert!(fresh > keep);
    synced(&mut n, 1);
    let _: () = redis::cmd("READONLY").query(&mut o).unwrap();
    assert_eq!(dbsize(&mut o), dbsize(&mut n), "both sides agree");
    assert_eq!(
        lock::digest(&mut o, "{p}keep"),
        lock::digest(&mut n, "{p}keep")
    );
    for node in &cluster.nodes {
        assert_no_abort(node);
    }
}
