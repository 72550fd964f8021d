//! Replication on real redis-server processes (a master and replicas on
//! loopback, all with the module): every effect reaches the replicas and
//! the AOF as its effect (`LOCK.APPLY key owner "x holds 0 token deadline"`
//! or `DEL key`), through the live stream, a partial resync, a full resync and
//! a replica restart; replicas never expire leases themselves yet never show
//! a passed one; writes on a replica are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::lock::{
    self, acquire, digest, exists, force_release, release, renew, spawn_waiter, stat, wait_gone,
    wait_waiters,
};
use testkit::replication::{cut_replica_link, pair, replica_with_aof, synced};
use testkit::timing::{before, lease_ms};
use testkit::{info_int, now_ms, until_conclusive, wait_aof_settled, wait_for, Server, PATIENCE};

/// The replica shows what the master shows: owner, holds and token through
/// `LOCK.INFO` (the same remaining ttl, give or take the time between the
/// two looks), and the same digest, which covers the absolute deadline.
fn assert_mirrored(m: &mut Connection, r: &mut Connection, key: &str) {
    let looking = Instant::now();
    let on_master = lock::info(m, key);
    let on_replica = lock::info(r, key);
    let between = looking.elapsed().as_millis() as i64;
    assert_eq!(
        on_master.as_ref().map(|i| (&i.owner, i.holds, i.token)),
        on_replica.as_ref().map(|i| (&i.owner, i.holds, i.token)),
        "{key}: owner, holds, token"
    );
    if let (Some(a), Some(b)) = (&on_master, &on_replica) {
        assert!(
            (a.ttl - b.ttl).abs() <= between + 2,
            "{key}: ttl {a:?} vs {b:?}, looked {between} ms apart"
        );
    }
    assert_eq!(digest(m, key), digest(r, key), "{key}: digest");
}

#[test]
fn grant_reentry_renewal_release_and_force_release_reach_the_replica() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();

    let t = acquire(&mut m, "k", "a", 60_000).unwrap();
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "k");
    assert_eq!(lock::info(&mut r, "k").unwrap().token, t);

    // Re-entry with a shorter ttl: holds 2, same token, lease now + 30 s.
    assert_eq!(acquire(&mut m, "k", "a", 30_000), Some(t));
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "k");
    let i = lock::info(&mut r, "k").unwrap();
    assert_eq!((i.holds, i.token), (2, t));
    assert!(i.ttl <= 30_000, "the replica has the new deadline: {i:?}");

    // Renewal to 90 s.
    assert_eq!(renew(&mut m, "k", "a", 90_000), 1);
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "k");
    assert!(lock::info(&mut r, "k").unwrap().ttl > 60_000);

    // Partial release keeps the lease; the last release removes the key.
    assert_eq!(release(&mut m, "k", "a"), Some(1));
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "k");
    assert_eq!(lock::info(&mut r, "k").unwrap().holds, 1);
    assert_eq!(release(&mut m, "k", "a"), Some(0));
    synced(&mut m, 1);
    assert_eq!(lock::info(&mut r, "k"), None);
    assert!(!exists(&mut r, "k"), "the release deleted the key");

    // A new grant, then force-release.
    let t2 = acquire(&mut m, "k", "b", 60_000).unwrap();
    assert!(t2 > t);
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "k");
    assert_eq!(force_release(&mut m, "k"), 1);
    synced(&mut m, 1);
    assert_eq!(lock::info(&mut r, "k"), None);
    assert!(!exists(&mut r, "k"), "force-release deleted the key");
}

#[test]
fn handoff_to_a_waiter_reaches_the_replica() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();

    // Three ways a lock is handed off: release, force-release, expiry by
    // the master's timer.
    let t_release = acquire(&mut m, "by-release", "a", 60_000).unwrap();
    let t_force = acquire(&mut m, "by-force", "a", 60_000).unwrap();
    let t_expiry = acquire(&mut m, "by-expiry", "a", 60_000).unwrap();
    let w_release = spawn_waiter(&master, "by-release", "w1", 60_000, 120_000);
    let w_force = spawn_waiter(&master, "by-force", "w2", 60_000, 120_000);
    let w_expiry = spawn_waiter(&master, "by-expiry", "w3", 60_000, 120_000);
    wait_waiters(&mut m, 3);
    // Every waiter is queued: now the expiring lease gets its short end.
    let shortened = Instant::now();
    assert_eq!(renew(&mut m, "by-expiry", "a", 1_500), 1);

    assert_eq!(release(&mut m, "by-release", "a"), Some(0));
    assert_eq!(force_release(&mut m, "by-force"), 1);
    let got_release = w_release.join().unwrap().unwrap();
    let got_force = w_force.join().unwrap().unwrap();
    let got_expiry = w_expiry.join().unwrap().unwrap();
    assert!(
        shortened.elapsed() < Duration::from_millis(1_500) + testkit::EXPIRY_SLACK,
        "the expiry hand-off came on time"
    );
    assert!(got_release > t_release && got_force > t_force && got_expiry > t_expiry);

    synced(&mut m, 1);
    for (key, owner, token) in [
        ("by-release", "w1", got_release),
        ("by-force", "w2", got_force),
        ("by-expiry", "w3", got_expiry),
    ] {
        assert_mirrored(&mut m, &mut r, key);
        let i = lock::info(&mut r, key).unwrap();
        assert_eq!((i.owner.as_str(), i.holds, i.token), (owner, 1, token));
    }
    assert_eq!(stat(&mut m, "handoffs"), 3);
}

#[test]
fn lease_expiry_by_the_master_reaches_the_replica_as_a_deletion() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();
    for i in 0..10 {
        acquire(&mut m, &format!("short{i}"), "a", 300 + 50 * i).unwrap();
    }
    acquire(&mut m, "long", "a", 60_000).unwrap();
    synced(&mut m, 1);
    for i in 0..10 {
        wait_gone(&mut r, &format!("short{i}"));
    }
    assert_eq!(stat(&mut m, "expired"), 10);
    assert_eq!(stat(&mut r, "expired"), 0, "the replica expired nothing");
    synced(&mut m, 1);
    assert_mirrored(&mut m, &mut r, "long");
    let n: i64 = redis::cmd("DBSIZE").query(&mut r).unwrap();
    assert_eq!(n, 1);
}

/// One command of an AOF, as its arguments.
type AofCommand = Vec<String>;

/// The span of Unix milliseconds an absolute deadline must lie in.
type DeadlineWindow = Option<(u64, u64)>;

/// The commands of an AOF (its manifest's files in order; an RDB preamble
/// is skipped), each as its arguments.
fn aof_commands(dir: &Path) -> Vec<AofCommand> {
    let aof_dir = dir.join("appendonlydir");
    let manifest = std::fs::read_to_string(aof_dir.join("appendonly.aof.manifest")).unwrap();
    let mut files: Vec<(char, u64, String)> = manifest
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(f.iter().position(|w| *w == "file")? + 1)?.to_string();
            let seq = f
                .get(f.iter().position(|w| *w == "seq")? + 1)?
                .parse()
                .ok()?;
            let kind = f
                .get(f.iter().position(|w| *w == "type")? + 1)?
                .chars()
                .next()?;
            Some((kind, seq, name))
        })
        .collect();
    // Base first, then the increments in order.
    files.sort_by_key(|(kind, seq, _)| (*kind != 'b', *seq));
    let mut out = Vec::new();
    for (_, _, name) in files {
        let bytes = std::fs::read(aof_dir.join(&name)).unwrap();
        if bytes.starts_with(b"REDIS") {
            continue;
        }
        out.extend(parse_resp_commands(&bytes));
    }
    out
}

fn parse_resp_commands(bytes: &[u8]) -> Vec<AofCommand> {
    let mut pos = 0;
    let line = |pos: &mut usize| -> String {
        let start = *pos;
        while &bytes[*pos..*pos + 2] != b"\r\n" {
            *pos += 1;
        }
        let s = String::from_utf8_lossy(&bytes[start..*pos]).to_string();
        *pos += 2;
        s
    };
    let mut cmds = Vec::new();
    while pos < bytes.len() {
        let head = line(&mut pos);
        let n: usize = head.strip_prefix('*').expect("RESP array").parse().unwrap();
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            let len: usize = line(&mut pos)
                .strip_prefix('$')
                .expect("bulk")
                .parse()
                .unwrap();
            args.push(String::from_utf8_lossy(&bytes[pos..pos + len]).to_string());
            pos += len + 2;
        }
        cmds.push(args);
    }
    cmds
}

/// The lock effects (`LOCK.APPLY`, `DEL`) of an AOF, after checking that it
/// holds nothing else but `SELECT`, `MULTI` and `EXEC`. The effect of a lone
/// exclusive holder, `LOCK.APPLY key owner "x holds 0 token deadline"`, is
/// shown as `LOCK.APPLY key owner holds token deadline`.
fn aof_effects(dir: &Path) -> Vec<AofCommand> {
    let cmds = aof_commands(dir);
    for c in &cmds {
        let name = c[0].to_ascii_uppercase();
        assert!(
            ["LOCK.APPLY", "DEL", "SELECT", "MULTI", "EXEC"].contains(&name.as_str()),
            "the AOF holds effects only, not {c:?}"
        );
    }
    cmds.into_iter()
        .filter(|c| ["LOCK.APPLY", "DEL"].contains(&c[0].to_ascii_uppercase().as_str()))
        .map(|c| {
            if c[0].eq_ignore_ascii_case("LOCK.APPLY") && c.len() == 4 {
                let state: Vec<&str> = c[3].split(' ').collect();
                assert!(
                    state.len() == 5 && state[0] == "x" && state[2] == "0",
                    "a lone exclusive holder's effect: {c:?}"
                );
                let mut flat = c[..3].to_vec();
                flat.extend([state[1], state[3], state[4]].map(String::from));
                flat
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn the_aof_and_the_replication_stream_carry_effects_with_absolute_deadlines_and_tokens() {
    let mut master = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", "no")
        .start();
    // `always`: an applied effect is in the file before the replica
    // acknowledges it (with `everysec`, Redis may hold the write back while
    // a background fsync runs).
    let mut replica = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", "no")
        .start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let mut r = replica.conn();
    // The replica rewrites its AOF after the initial sync; let it finish.
    wait_aof_settled(&mut r);

    // Each request with the window of wall-clock time it ran in.
    let timed = |f: &mut dyn FnMut() -> Option<i64>| {
        let before = now_ms();
        let v = f();
        (v, before, now_ms())
    };
    let (kept, ..) = timed(&mut || acquire(&mut m, "kept", "a", 600_000));
    let kept = kept.unwrap();
    let (t1, b1, a1) = timed(&mut || acquire(&mut m, "k", "a", 60_000));
    let t1 = t1.unwrap();
    let (_, b2, a2) = timed(&mut || acquire(&mut m, "k", "a", 50_000));
    let (_, b3, a3) = timed(&mut || Some(renew(&mut m, "k", "a", 40_000)));
    release(&mut m, "k", "a").unwrap();
    let waiter = spawn_waiter(&master, "k", "w", 30_000, 120_000);
    wait_waiters(&mut m, 1);
    let (_, b5, a5) = timed(&mut || release(&mut m, "k", "a"));
    let t2 = waiter.join().unwrap().unwrap();
    let (t3, b6, a6) = timed(&mut || acquire(&mut m, "e", "a", 300));
    let t3 = t3.unwrap();
    wait_gone(&mut m, "e");
    assert_eq!(force_release(&mut m, "k"), 1);
    synced(&mut m, 1);

    let effects = aof_effects(master.dir());
    let apply = |key: &str, owner: &str, holds: i64, token: i64| -> AofCommand {
        vec![
            "LOCK.APPLY".into(),
            key.into(),
            owner.into(),
            holds.to_string(),
            token.to_string(),
        ]
    };
    let del = |key: &str| vec!["DEL".to_string(), key.to_string()];
    // (effect without its deadline, deadline window) — DEL has none.
    let expected: Vec<(AofCommand, DeadlineWindow)> = vec![
        (apply("kept", "a", 1, kept), None),
        (apply("k", "a", 1, t1), Some((b1 + 60_000, a1 + 60_000))),
        (apply("k", "a", 2, t1), Some((b2 + 50_000, a2 + 50_000))),
        (apply("k", "a", 2, t1), Some((b3 + 40_000, a3 + 40_000))),
        (apply("k", "a", 1, t1), Some((b3 + 40_000, a3 + 40_000))),
        (del("k"), None),
        (apply("k", "w", 1, t2), Some((b5 + 30_000, a5 + 30_000))),
        (apply("e", "a", 1, t3), Some((b6 + 300, a6 + 300))),
        (del("e"), None),
        (del("k"), None),
    ];
    let shown: Vec<String> = effects.iter().map(|e| e.join(" ")).collect();
    assert_eq!(effects.len(), expected.len(), "AOF effects:\n{shown:#?}");
    for (got, (want, window)) in effects.iter().zip(&expected) {
        if want[0] == "DEL" {
            assert_eq!(got, want, "AOF effects:\n{shown:#?}");
            continue;
        }
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(&got[..5], &want[..], "AOF effects:\n{shown:#?}");
        let deadline: u64 = got[5].parse().unwrap();
        if let Some((lo, hi)) = window {
            assert!(
                (*lo..=*hi).contains(&deadline),
                "{got:?}: deadline {deadline} is not absolute (expected {lo}..={hi})"
            );
        }
    }

    // The replica received the very same effects (its AOF records the
    // stream as it applied it).
    wait_aof_settled(&mut r);
    assert_eq!(
        aof_effects(replica.dir()),
        effects,
        "the replica's AOF must record every effect it applied, LOCK.APPLY included \
         (else a replica restarted from its AOF loses its locks)"
    );

    // Both reload the same lock from their AOF after a crash.
    let before = digest(&mut m, "kept");
    drop((m, r));
    master.kill9();
    replica.kill9();
    master.restart();
    replica.restart();
    for s in [&master, &replica] {
        let mut c = s.conn();
        assert_eq!(digest(&mut c, "kept"), before, "port {}", s.port);
        let i = lock::info(&mut c, "kept").unwrap();
        assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 1, kept));
        assert!(!exists(&mut c, "k") && !exists(&mut c, "e"));
    }
}

#[test]
fn a_partial_resync_brings_the_effects_the_replica_missed() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let mut r = replica.conn();
    for key in ["reenter", "renew", "release", "force", "handoff"] {
        acquire(&mut m, key, "a", 60_000).unwrap();
    }
    acquire(&mut m, "expire", "a", 500).unwrap();
    synced(&mut m, 1);

    // Cut the replica off: frozen, and its link closed by the master, so
    // the next effects reach it only through the backlog.
    replica.pause();
    let partial_before = info_int(&mut m, "stats", "sync_partial_ok");
    let full_before = info_int(&mut m, "stats", "sync_full");
    cut_replica_link(&mut m);

    acquire(&mut m, "reenter", "a", 60_000).unwrap();
    assert_eq!(renew(&mut m, "renew", "a", 120_000), 1);
    assert_eq!(release(&mut m, "release", "a"), Some(0));
    assert_eq!(force_release(&mut m, "force"), 1);
    let waiter = spawn_waiter(&master, "handoff", "w", 60_000, 120_000);
    wait_waiters(&mut m, 1);
    assert_eq!(release(&mut m, "handoff", "a"), Some(0));
    let handed = waiter.join().unwrap().unwrap();
    let fresh = acquire(&mut m, "fresh", "c", 60_000).unwrap();
    wait_gone(&mut m, "expire");

    replica.resume();
    wait_for("a partial resync", PATIENCE, || {
        (info_int(&mut m, "stats", "sync_partial_ok") > partial_before).then_some(())
    });
    synced(&mut m, 1);
    assert_eq!(
        info_int(&mut m, "stats", "sync_full"),
        full_before,
        "no full resync"
    );
    for key in [
        "reenter", "renew", "release", "force", "handoff", "fresh", "expire",
    ] {
        assert_mirrored(&mut m, &mut r, key);
    }
    assert_eq!(lock::info(&mut r, "reenter").unwrap().holds, 2);
    assert!(lock::info(&mut r, "renew").unwrap().ttl > 60_000);
    assert!(!exists(&mut r, "release") && !exists(&mut r, "force"));
    assert!(!exists(&mut r, "expire"));
    assert_eq!(lock::info(&mut r, "handoff").unwrap().token, handed);
    assert_eq!(lock::info(&mut r, "fresh").unwrap().token, fresh);
}

#[test]
fn a_full_resync_transfers_the_locks_by_rdb() {
    let master = Server::config().arg("repl-diskless-sync", "no").start();
    let mut m = master.conn();
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = format!("k{i}");
        acquire(&mut m, &key, &format!("owner-{i}"), 60_000 + i * 1_000).unwrap();
        if i % 3 == 0 {
            acquire(&mut m, &key, &format!("owner-{i}"), 60_000).unwrap();
            acquire(&mut m, &key, &format!("owner-{i}"), 60_000).unwrap();
        }
        keys.push(key);
    }
    // Long for now (the syncs take what they take); it is made short once
    // the replicas have it.
    acquire(&mut m, "short", "s", 600_000).unwrap();
    keys.push("short".into());
    // A client waits on the master while the replicas sync.
    let waiter = spawn_waiter(&master, "k1", "w", 60_000, 300_000);
    wait_waiters(&mut m, 1);

    // One replica by an RDB file on disk, one by a diskless transfer loaded
    // into a temporary database.
    let by_disk = Server::start();
    by_disk.replicate_from(&master);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync")
        .arg("yes")
        .query(&mut m)
        .unwrap();
    let diskless = Server::config().arg("repl-diskless-load", "swapdb").start();
    diskless.replicate_from(&master);
    assert_eq!(info_int(&mut m, "stats", "sync_full"), 2);
    synced(&mut m, 2);
    let mut replicas = [by_disk.conn(), diskless.conn()];
    for r in &mut replicas {
        for key in &keys {
            assert_mirrored(&mut m, r, key);
        }
        assert_eq!(lock::info(r, "k0").unwrap().holds, 3);
    }

    // Later effects reach them as well: a hand-off and an expiry.
    assert_eq!(release(&mut m, "k1", "owner-1"), Some(0));
    let handed = waiter.join().unwrap().unwrap();
    assert_eq!(renew(&mut m, "short", "s", 300), 1);
    wait_gone(&mut m, "short");
    synced(&mut m, 2);
    for r in &mut replicas {
        assert_mirrored(&mut m, r, "k1");
        assert_eq!(lock::info(r, "k1").unwrap().token, handed);
        assert!(!exists(r, "short"));
    }
}

#[test]
fn a_restarted_replica_reloads_its_copy_and_catches_up() {
    // `short` must still be live when the replica is killed (it reloads it
    // from its AOF) and over when it restarts: an attempt that was too slow
    // for its lease proves nothing, and the next one uses a longer lease.
    until_conclusive(|attempt| {
        let short_ms = lease_ms(2_000, attempt);
        let master = Server::start();
        let mut replica = replica_with_aof(&master);
        let mut m = master.conn();
        let t = acquire(&mut m, "long", "a", 600_000).unwrap();
        acquire(&mut m, "long", "a", 600_000).unwrap();
        acquire(&mut m, "released", "a", 600_000).unwrap();
        let short = lock::grant_timed(&mut m, "short", "a", short_ms);
        synced(&mut m, 1);
        let long_digest = digest(&mut m, "long");

        // The replica crashes; the master goes on without it.
        replica.kill9();
        before("the replica's crash", Instant::now(), short.earliest)?;
        assert_eq!(release(&mut m, "released", "a"), Some(0));
        let during = acquire(&mut m, "during", "b", 600_000).unwrap();

        // The master freezes; the replica restarts (as a replica, from its
        // config) and loads its AOF but cannot sync yet.
        master.pause();
        std::thread::sleep(short.latest.saturating_duration_since(Instant::now()));
        std::thread::sleep(Duration::from_millis(300));
        replica.restart();
        let mut r = replica.conn();
        let i = lock::info(&mut r, "long").unwrap();
        assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, t));
        assert_eq!(
            digest(&mut r, "long"),
            long_digest,
            "same absolute deadline"
        );
        assert!(
            exists(&mut r, "short"),
            "a restarted replica does not expire leases itself"
        );
        assert_eq!(lock::info(&mut r, "short"), None, "nor shows a passed one");
        assert!(exists(&mut r, "released"), "the release is still to come");

        // The master is back: the replica catches up.
        master.resume();
        replica.wait_replication_link();
        wait_gone(&mut m, "short");
        synced(&mut m, 1);
        for key in ["long", "released", "short", "during"] {
            assert_mirrored(&mut m, &mut r, key);
        }
        assert_eq!(lock::info(&mut r, "during").unwrap().token, during);
        assert!(!exists(&mut r, "released") && !exists(&mut r, "short"));
        assert_eq!(stat(&mut r, "expired"), 0);
        Ok(())
    });
}

#[test]
fn writes_on_a_read_only_replica_are_refused_with_readonly() {
    let (master, replica) = pair();
    let mut m = master.conn();
    let t = acquire(&mut m, "held", "a", 60_000).unwrap();
    synced(&mut m, 1);
    let mut r = replica.conn();
    let before = digest(&mut r, "held");
    for args in [
        vec!["LOCK.ACQUIRE", "free", "o", "1000"],
        vec!["LOCK.ACQUIRE", "held", "o", "1000", "WAIT", "1000"],
        vec!["LOCK.ACQUIRE", "held", "a", "1000"],
        vec!["LOCK.RENEW", "held", "a", "1000"],
        vec!["LOCK.RELEASE", "held", "a"],
        vec!["LOCK.FORCERELEASE", "held"],
        vec!["LOCK.APPLY", "held", "o", "1", "1", "1"],
    ] {
        let err = redis::cmd(args[0])
            .arg(&args[1..])
            .query::<Value>(&mut r)
            .unwrap_err();
        assert_eq!(err.code(), Some("READONLY"), "{args:?}: {err}");
    }
    // Nothing changed; reads work.
    assert_eq!(digest(&mut r, "held"), before);
    assert_eq!(lock::info(&mut r, "held").unwrap().token, t);
    assert!(!exists(&mut r, "free"));
}

#[test]
fn a_replica_never_expires_leases_itself_but_never_shows_a_passed_one() {
    // The master must be frozen before the lease ends (else its deletion
    // reaches the replica): an attempt too slow for that proves nothing, and
    // the next one uses a longer lease.
    until_conclusive(|attempt| {
        let (master, replica) = pair();
        let mut m = master.conn();
        let mut r = replica.conn();
        let lease = lock::grant_timed(&mut m, "k", "a", lease_ms(2_000, attempt));
        synced(&mut m, 1);
        let before_pause = digest(&mut r, "k");
        let shown = lock::info(&mut r, "k").is_some();

        // The master freezes: no deletion can reach the replica.
        master.pause();
        before("the master's freeze", Instant::now(), lease.earliest)?;
        assert!(shown, "the replica shows the live lease");
        std::thread::sleep(lease.latest.saturating_duration_since(Instant::now()));
        // Well past the deadline, so any timer of the replica had its chance.
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(lock::info(&mut r, "k"), None, "a passed lease is not shown");
        assert!(exists(&mut r, "k"), "the key is still there");
        let kind: String = redis::cmd("TYPE").arg("k").query(&mut r).unwrap();
        assert_eq!(kind, "fencelock");
        assert_eq!(digest(&mut r, "k"), before_pause, "untouched");
        assert_eq!(stat(&mut r, "expired"), 0);

        // The master's deletion arrives once it runs again.
        master.resume();
        wait_gone(&mut r, "k");
        assert_eq!(stat(&mut m, "expired"), 1);
        Ok(())
    });
}

#[test]
fn a_replica_of_a_replica_gets_the_effects_too() {
    let (master, replica) = pair();
    let sub = Server::start();
    sub.replicate_from(&replica);
    let mut m = master.conn();
    let mut s = sub.conn();
    let t = acquire(&mut m, "k", "a", 60_000).unwrap();
    acquire(&mut m, "k", "a", 60_000).unwrap();
    acquire(&mut m, "gone", "a", 60_000).unwrap();
    assert_eq!(release(&mut m, "gone", "a"), Some(0));
    // WAIT counts direct replicas only: poll the sub-replica.
    wait_for("the chain to deliver", PATIENCE, || {
        (lock::info(&mut s, "k").map(|i| i.holds) == Some(2)).then_some(())
    });
    assert_mirrored(&mut m, &mut s, "k");
    assert_eq!(lock::info(&mut s, "k").unwrap().token, t);
    assert!(!exists(&mut s, "gone"));
}
