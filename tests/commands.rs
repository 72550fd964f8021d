//! The command interface on a real redis-server: every reply of every
//! command, re-entry, owner checks, leases, tokens, WRONGTYPE, bad input,
//! INFO counters and keyspace notifications.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::lock::{self, acquire, force_release as force, release, renew, stat as lock_info};
use testkit::{info_int, wait_for, Server};

/// `LOCK.INFO` as (owner, holds, ttl, token, waiters).
fn info(c: &mut Connection, key: &str) -> Option<(String, i64, i64, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.ttl, i.token, i.waiters))
}

#[test]
fn acquire_grants_a_positive_token_and_reentry_keeps_it() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 10_000).expect("granted");
    assert!(t > 0);
    assert_eq!(acquire(&mut c, "k", "a", 10_000), Some(t));
    let (owner, holds, ttl, token, waiters) = info(&mut c, "k").unwrap();
    assert_eq!((owner.as_str(), holds, token, waiters), ("a", 2, t, 0));
    assert!(ttl > 0 && ttl <= 10_000);
}

#[test]
fn another_owner_gets_nil_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 10_000).unwrap();
    assert_eq!(acquire(&mut c, "k", "b", 20_000), None);
    assert_eq!(renew(&mut c, "k", "b", 20_000), 0);
    assert_eq!(release(&mut c, "k", "b"), None);
    let (owner, holds, ttl, token, _) = info(&mut c, "k").unwrap();
    assert_eq!((owner.as_str(), holds, token), ("a", 1, t));
    assert!(ttl <= 10_000);
}

#[test]
fn owner_strings_are_binary_safe() {
    let s = Server::start();
    let mut c = s.conn();
    let owner: &[u8] = b"a\x00\xffb";
    let t: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg(owner)
        .arg(5000)
        .query(&mut c)
        .unwrap();
    assert!(t.is_some());
    let other: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg(&b"a\x00\xfe"[..])
        .arg(5000)
        .query(&mut c)
        .unwrap();
    assert_eq!(other, None);
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut c).unwrap();
    let Value::Array(items) = v else { panic!() };
    assert_eq!(items[1], Value::BulkString(owner.to_vec()));
    let left: Option<i64> = redis::cmd("LOCK.RELEASE")
        .arg("k")
        .arg(owner)
        .query(&mut c)
        .unwrap();
    assert_eq!(left, Some(0));
}

#[test]
fn release_counts_down_keeps_the_lease_and_deletes_at_zero() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    assert_eq!(renew(&mut c, "k", "a", 30_000), 1);
    assert_eq!(release(&mut c, "k", "a"), Some(2));
    let (_, holds, ttl, _, _) = info(&mut c, "k").unwrap();
    assert_eq!(holds, 2);
    assert!(ttl <= 30_000, "a partial release must not extend the lease");
    assert_eq!(release(&mut c, "k", "a"), Some(1));
    assert_eq!(release(&mut c, "k", "a"), Some(0));
    assert_eq!(info(&mut c, "k"), None);
    let exists: i64 = redis::cmd("EXISTS").arg("k").query(&mut c).unwrap();
    assert_eq!(exists, 0);
    assert_eq!(release(&mut c, "k", "a"), None);
}

#[test]
fn renew_replies_one_for_the_holder_and_zero_otherwise() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(renew(&mut c, "k", "a", 1000), 0, "never held");
    acquire(&mut c, "k", "a", 1000).unwrap();
    assert_eq!(renew(&mut c, "k", "a", 50_000), 1);
    let (_, _, ttl, _, _) = info(&mut c, "k").unwrap();
    assert!(ttl > 1000, "renew sets the lease to now + ttl");
    assert_eq!(renew(&mut c, "k", "b", 50_000), 0, "someone else's");
}

#[test]
fn renewal_keeps_a_lock_alive_well_past_its_ttl() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 200).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        assert_eq!(renew(&mut c, "k", "a", 200), 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (owner, _, _, token, _) = info(&mut c, "k").unwrap();
    assert_eq!((owner.as_str(), token), ("a", t));
}

#[test]
fn unrenewed_lease_is_removed_by_the_server_promptly() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "a", 300).unwrap();
    assert!(info(&mut c, "k").is_some());
    // The key itself disappears (not only hidden from reads), without any
    // command touching it.
    let mut watcher = s.conn();
    wait_for(
        "the expired lock's key to be deleted",
        Duration::from_secs(3),
        || {
            let n: i64 = redis::cmd("DBSIZE").query(&mut watcher).unwrap();
            (n == 0).then_some(())
        },
    );
    assert_eq!(lock_info(&mut c, "expired"), 1);
    assert_eq!(lock_info(&mut c, "held"), 0);
    assert_eq!(
        renew(&mut c, "k", "a", 300),
        0,
        "an expired lease cannot be renewed"
    );
    assert!(
        acquire(&mut c, "k", "b", 300).is_some(),
        "anyone may take it now"
    );
}

#[test]
fn many_leases_expire_on_their_own() {
    // Hundreds of thousands of live leases, deadlines spread over a second:
    // every one is removed by the server's own timer, none is left behind.
    const N: u64 = 200_000;
    let s = Server::start();
    let mut c = s.conn();
    for chunk in 0..(N / 10_000) {
        let mut p = redis::pipe();
        for i in chunk * 10_000..(chunk + 1) * 10_000 {
            p.cmd("LOCK.ACQUIRE")
                .arg(format!("k{i}"))
                .arg("o")
                .arg(1500 + (i % 1000));
        }
        let _: Vec<Option<i64>> = p.query(&mut c).unwrap();
    }
    assert_eq!(lock_info(&mut c, "held"), N as i64);
    assert_eq!(lock_info(&mut c, "leases_scheduled"), N as i64);
    wait_for("200k leases to expire", Duration::from_secs(20), || {
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        (n == 0).then_some(())
    });
    assert_eq!(lock_info(&mut c, "expired"), N as i64);
    assert_eq!(lock_info(&mut c, "held"), 0);
    assert_eq!(lock_info(&mut c, "leases_scheduled"), 0);
}

#[test]
fn force_release_removes_any_holder() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(force(&mut c, "k"), 0);
    acquire(&mut c, "k", "a", 10_000).unwrap();
    acquire(&mut c, "k", "a", 10_000).unwrap();
    assert_eq!(force(&mut c, "k"), 1);
    assert_eq!(info(&mut c, "k"), None);
    assert_eq!(
        release(&mut c, "k", "a"),
        None,
        "the old holder no longer holds it"
    );
    assert_eq!(lock_info(&mut c, "forced_releases"), 1);
}

#[test]
fn info_is_a_map_under_resp3_and_nil_when_free() {
    let s = Server::start();
    let mut c = s.conn_resp3();
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut c).unwrap();
    assert_eq!(v, Value::Nil);
    let t: i64 = redis::cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg("a")
        .arg(5000)
        .query(&mut c)
        .unwrap();
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut c).unwrap();
    let Value::Map(fields) = v else {
        panic!("expected a map, got {v:?}")
    };
    let names: Vec<String> = fields
        .iter()
        .map(|(k, _)| redis::from_redis_value_ref(k).unwrap())
        .collect();
    assert_eq!(names, ["owner", "holds", "ttl", "token", "waiters"]);
    assert_eq!(fields[3].1, Value::Int(t));
    assert_eq!(fields[1].1, Value::Int(1));
}

#[test]
fn tokens_strictly_increase_across_grants_of_a_key() {
    let s = Server::start();
    let mut c = s.conn();
    let mut last = 0;
    for i in 0..200 {
        let owner = format!("o{i}");
        let t = acquire(&mut c, "k", &owner, 10_000).unwrap();
        assert!(t > last, "token {t} after {last}");
        last = t;
        if i % 2 == 0 {
            release(&mut c, "k", &owner).unwrap();
        } else {
            force(&mut c, "k");
        }
    }
}

fn token_after_restart(config: testkit::ServerConfig, durable: bool, crash: impl Fn(&mut Server)) {
    let mut s = config.start();
    let mut c = s.conn();
    let mut last = 0;
    for i in 0..50 {
        last = acquire(&mut c, "k", &format!("o{i}"), 60_000).unwrap();
        force(&mut c, "k");
    }
    let held = acquire(&mut c, "held", "h", 60_000).unwrap();
    drop(c);
    crash(&mut s);
    s.restart();
    let mut c = s.conn();
    let next = acquire(&mut c, "k", "new", 60_000).unwrap();
    assert!(
        next > last && next > held,
        "token {next} after restart must exceed {last}"
    );
    match info(&mut c, "held") {
        Some((owner, _, _, token, _)) => assert_eq!((owner.as_str(), token), ("h", held)),
        None => assert!(!durable, "a persisted lock was lost"),
    }
}

#[test]
fn tokens_keep_increasing_after_restart_from_rdb() {
    token_after_restart(Server::config(), true, |s| {
        let mut c = s.conn();
        let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
        s.kill9();
    });
}

#[test]
fn tokens_keep_increasing_after_restart_from_aof() {
    token_after_restart(
        Server::config()
            .arg("appendonly", "yes")
            .arg("appendfsync", "always"),
        true,
        |s| s.shutdown(false),
    );
}

#[test]
fn tokens_keep_increasing_after_kill9_with_everysec() {
    // The last second of writes may be lost: the clock part of the token
    // still puts every new token above the lost ones.
    token_after_restart(
        Server::config()
            .arg("appendonly", "yes")
            .arg("appendfsync", "everysec"),
        false,
        |s| s.kill9(),
    );
}

#[test]
fn locks_survive_restart_with_owner_holds_token_and_deadline() {
    for config in [
        Server::config(),
        Server::config()
            .arg("appendonly", "yes")
            .arg("aof-use-rdb-preamble", "no"),
        Server::config()
            .arg("appendonly", "yes")
            .arg("aof-use-rdb-preamble", "yes"),
    ] {
        let aof = config
            .args
            .iter()
            .any(|(k, v)| k == "appendonly" && v == "yes");
        let mut s = config.start();
        let mut c = s.conn();
        let t = acquire(&mut c, "k", "a", 60_000).unwrap();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        acquire(&mut c, "short", "b", 1_500).unwrap();
        let (_, _, ttl_before, _, _) = info(&mut c, "k").unwrap();
        if aof {
            let _: () = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
            wait_for("AOF rewrite", Duration::from_secs(10), || {
                (info_int(&mut c, "persistence", "aof_rewrite_in_progress") == 0
                    && info_int(&mut c, "persistence", "aof_rewrite_scheduled") == 0)
                    .then_some(())
            });
            // One more change after the rewrite, replayed from the AOF tail.
            renew(&mut c, "short", "b", 1_500);
            s.shutdown(false);
        } else {
            s.shutdown(true);
        }
        // Down for longer than `short`'s lease.
        std::thread::sleep(Duration::from_millis(1_700));
        s.restart();
        let mut c = s.conn();
        let (owner, holds, ttl, token, _) = info(&mut c, "k").unwrap();
        assert_eq!((owner.as_str(), holds, token), ("a", 2, t));
        assert!(
            ttl <= ttl_before - 1_500,
            "the deadline is absolute: downtime counts"
        );
        wait_for(
            "the lock that expired while down to be removed",
            Duration::from_secs(3),
            || {
                let n: i64 = redis::cmd("EXISTS").arg("short").query(&mut c).unwrap();
                (n == 0).then_some(())
            },
        );
        assert!(lock_info(&mut c, "expired") >= 1, "counted as expired");
        assert_eq!(release(&mut c, "k", "a"), Some(1));
    }
}

#[test]
fn debug_reload_keeps_every_lock() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 60_000).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    let digest = |c: &mut Connection| -> Value {
        redis::cmd("DEBUG")
            .arg("DIGEST-VALUE")
            .arg("k")
            .query(c)
            .unwrap()
    };
    let before = digest(&mut c);
    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    let (owner, holds, _, token, _) = info(&mut c, "k").unwrap();
    assert_eq!((owner.as_str(), holds, token), ("a", 2, t));
    assert_eq!(
        digest(&mut c),
        before,
        "same owner, holds, token and deadline"
    );
    renew(&mut c, "k", "a", 30_000);
    assert_ne!(digest(&mut c), before, "the digest covers the deadline");
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert!(usage > 40, "MEMORY USAGE reports a real size, got {usage}");
    // Still expires after a reload.
    acquire(&mut c, "soon", "a", 200).unwrap();
    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    wait_for("expiry after reload", Duration::from_secs(3), || {
        let n: i64 = redis::cmd("EXISTS").arg("soon").query(&mut c).unwrap();
        (n == 0).then_some(())
    });
}

#[test]
fn wrongtype_both_ways() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = redis::cmd("SET").arg("str").arg("v").query(&mut c).unwrap();
    for cmd in [
        vec!["LOCK.ACQUIRE", "str", "o", "100"],
        vec!["LOCK.RENEW", "str", "o", "100"],
        vec!["LOCK.RELEASE", "str", "o"],
        vec!["LOCK.FORCERELEASE", "str"],
        vec!["LOCK.INFO", "str"],
    ] {
        let err = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query::<Value>(&mut c)
            .unwrap_err();
        assert_eq!(err.code(), Some("WRONGTYPE"), "{cmd:?}: {err}");
    }
    let v: String = redis::cmd("GET").arg("str").query(&mut c).unwrap();
    assert_eq!(v, "v");
    acquire(&mut c, "lock", "o", 10_000).unwrap();
    for cmd in [
        vec!["GET", "lock"],
        vec!["HGET", "lock", "f"],
        vec!["LPUSH", "lock", "x"],
        vec!["INCR", "lock"],
    ] {
        let err = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query::<Value>(&mut c)
            .unwrap_err();
        assert_eq!(err.code(), Some("WRONGTYPE"), "{cmd:?}: {err}");
    }
    let ty: String = redis::cmd("TYPE").arg("lock").query(&mut c).unwrap();
    assert_eq!(ty, "fencelock");
}

#[test]
fn bad_input_gets_a_coded_error_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 60_000).unwrap();
    let long_owner = "x".repeat(1025);
    let cases: Vec<Vec<&str>> = vec![
        vec!["LOCK.ACQUIRE"],
        vec!["LOCK.ACQUIRE", "k"],
        vec!["LOCK.ACQUIRE", "k", "a"],
        vec!["LOCK.ACQUIRE", "k", "a", "0"],
        vec!["LOCK.ACQUIRE", "k", "a", "-5"],
        vec!["LOCK.ACQUIRE", "k", "a", "1.5"],
        vec!["LOCK.ACQUIRE", "k", "a", "ten"],
        vec!["LOCK.ACQUIRE", "k", "a", ""],
        vec!["LOCK.ACQUIRE", "k", "a", "2592000001"],
        vec!["LOCK.ACQUIRE", "k", "a", "18446744073709551616"],
        vec!["LOCK.ACQUIRE", "k", "a", "9223372036854775807"],
        vec!["LOCK.ACQUIRE", "k", "", "100"],
        vec!["LOCK.ACQUIRE", "k", &long_owner, "100"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "WAIT"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "WAIT", "-1"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "WAIT", "soon"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "WAIT", "2592000001"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "NOWAIT", "5"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "extra"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "WAIT", "5", "WAIT", "5"],
        vec!["LOCK.RENEW", "k", "a"],
        vec!["LOCK.RENEW", "k", "a", "0"],
        vec!["LOCK.RENEW", "k", "a", "-1"],
        vec!["LOCK.RENEW", "k", "a", "100", "extra"],
        vec!["LOCK.RENEW", "k", "", "100"],
        vec!["LOCK.RELEASE", "k"],
        vec!["LOCK.RELEASE", "k", "a", "extra"],
        vec!["LOCK.RELEASE", "k", ""],
        vec!["LOCK.FORCERELEASE"],
        vec!["LOCK.FORCERELEASE", "k", "extra"],
        vec!["LOCK.INFO"],
        vec!["LOCK.INFO", "k", "extra"],
        vec!["LOCK.APPLY", "k", "b", "1", "1", "1"],
    ];
    assert!(cases.len() >= 25);
    let before = info(&mut c, "k").unwrap();
    for args in &cases {
        let err = redis::cmd(args[0])
            .arg(&args[1..])
            .query::<Value>(&mut c)
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some("ERR"),
            "{args:?}: error must start with the ERR code: {err}"
        );
        let now = info(&mut c, "k").unwrap();
        assert_eq!(
            (&now.0, now.1, now.3),
            (&before.0, before.1, t),
            "{args:?} changed the lock"
        );
        assert!(now.2 <= before.2, "{args:?} extended the lease");
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, 1, "{args:?} created a key");
    }
}

#[test]
fn generic_commands_on_a_lock_key() {
    let s = Server::start();
    let mut c = s.conn();
    let exists = |c: &mut Connection, k: &str| -> bool {
        redis::cmd("EXISTS").arg(k).query::<i64>(c).unwrap() == 1
    };
    let gone_soon = |c: &mut Connection, k: &str, db: i64| {
        let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
        wait_for(
            &format!("{k} in db {db} to expire"),
            Duration::from_secs(3),
            || (!exists(c, k)).then_some(()),
        );
        let _: () = redis::cmd("SELECT").arg(0).query(c).unwrap();
    };

    // DEL and UNLINK remove the lock; the name is free.
    acquire(&mut c, "d", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("DEL").arg("d").query(&mut c).unwrap();
    assert!(acquire(&mut c, "d", "b", 60_000).is_some());
    let _: i64 = redis::cmd("UNLINK").arg("d").query(&mut c).unwrap();
    assert!(acquire(&mut c, "d", "c", 60_000).is_some());

    // RENAME: the lock moves with owner and token and still expires on time.
    let t = acquire(&mut c, "r1", "a", 400).unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("r1")
        .arg("r2")
        .query(&mut c)
        .unwrap();
    let (owner, _, _, token, _) = info(&mut c, "r2").unwrap();
    assert_eq!((owner.as_str(), token), ("a", t));
    assert!(
        acquire(&mut c, "r1", "b", 60_000).is_some(),
        "the old name is free"
    );
    gone_soon(&mut c, "r2", 0);
    assert!(exists(&mut c, "r1"), "only the renamed lock expired");

    // COPY is refused: a lock must not be duplicated.
    acquire(&mut c, "c1", "a", 60_000).unwrap();
    assert!(redis::cmd("COPY")
        .arg("c1")
        .arg("c2")
        .query::<Value>(&mut c)
        .is_err());
    assert!(!exists(&mut c, "c2"));

    // MOVE: the lock expires in its new database.
    acquire(&mut c, "m", "a", 400).unwrap();
    let moved: i64 = redis::cmd("MOVE").arg("m").arg(3).query(&mut c).unwrap();
    assert_eq!(moved, 1);
    gone_soon(&mut c, "m", 3);

    // EXPIRE: a native TTL removes the key when it fires; the lease still
    // applies if it is shorter. PERSIST leaves the lease in force.
    acquire(&mut c, "e", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg("e")
        .arg(200)
        .query(&mut c)
        .unwrap();
    gone_soon(&mut c, "e", 0);
    acquire(&mut c, "p", "a", 400).unwrap();
    let _: i64 = redis::cmd("PERSIST").arg("p").query(&mut c).unwrap();
    gone_soon(&mut c, "p", 0);

    // SWAPDB: the lock expires in the database it was swapped into.
    let _: () = redis::cmd("SELECT").arg(5).query(&mut c).unwrap();
    acquire(&mut c, "s", "a", 400).unwrap();
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
    let _: () = redis::cmd("SWAPDB").arg(5).arg(6).query(&mut c).unwrap();
    gone_soon(&mut c, "s", 6);

    // FLUSHDB / FLUSHALL remove locks; names are free again.
    acquire(&mut c, "f", "a", 60_000).unwrap();
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    assert!(acquire(&mut c, "f", "b", 60_000).is_some());
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert!(acquire(&mut c, "f", "c", 300).is_some());
    gone_soon(&mut c, "f", 0);
    // The server is still fine.
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn info_counters_count_every_outcome() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    assert_eq!(acquire(&mut c, "k", "b", 60_000), None);
    renew(&mut c, "k", "a", 60_000);
    renew(&mut c, "k", "b", 60_000);
    release(&mut c, "k", "b");
    release(&mut c, "k", "a");
    acquire(&mut c, "f", "a", 60_000).unwrap();
    force(&mut c, "f");
    acquire(&mut c, "x", "a", 100).unwrap();
    wait_for("expiry", Duration::from_secs(3), || {
        (lock_info(&mut c, "expired") == 1).then_some(())
    });
    let want = [
        ("held", 1),
        ("waiters", 0),
        ("grants", 3),
        ("reentries", 1),
        ("denied", 1),
        ("renewals", 1),
        ("renew_misses", 1),
        ("releases", 1),
        ("release_misses", 1),
        ("expired", 1),
        ("forced_releases", 1),
    ];
    for (field, n) in want {
        assert_eq!(lock_info(&mut c, field), n, "lock_{field}");
    }
}

#[test]
fn keyspace_notifications_announce_lock_events() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Ed")
        .query(&mut c)
        .unwrap();
    let mut sub = s.conn();
    let mut pubsub = sub.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:lock.*").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    release(&mut c, "k", "a");
    acquire(&mut c, "k", "a", 60_000).unwrap();
    force(&mut c, "k");
    acquire(&mut c, "k", "a", 100).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = pubsub.get_message().unwrap();
        let key: String = m.get_payload().unwrap();
        assert_eq!(key, "k");
        seen.push(
            m.get_channel_name()
                .trim_start_matches("__keyevent@0__:")
                .to_string(),
        );
    }
    assert_eq!(
        seen,
        [
            "lock.acquire",
            "lock.release",
            "lock.acquire",
            "lock.forcerelease",
            "lock.acquire"
        ]
    );
    let m = pubsub.get_message().unwrap();
    assert_eq!(m.get_channel_name(), "__keyevent@0__:lock.expire");
}

#[test]
fn operators_can_drive_it_with_redis_cli() {
    let s = Server::start();
    let token = s.cli_stdout(&["LOCK.ACQUIRE", "job:42", "worker-1", "30000"]);
    assert!(token.parse::<i64>().unwrap() > 0, "{token}");
    assert_eq!(
        s.cli_stdout(&["LOCK.ACQUIRE", "job:42", "worker-2", "30000"]),
        ""
    );
    let info = s.cli_stdout(&["LOCK.INFO", "job:42"]);
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines[0..2], ["owner", "worker-1"]);
    assert_eq!(lines[6..8], ["token", token.as_str()]);
    assert_eq!(
        s.cli_stdout(&["LOCK.RENEW", "job:42", "worker-1", "30000"]),
        "1"
    );
    assert_eq!(s.cli_stdout(&["LOCK.RELEASE", "job:42", "worker-2"]), "");
    assert_eq!(s.cli_stdout(&["LOCK.RELEASE", "job:42", "worker-1"]), "0");
    let err = s.cli_stdout(&["LOCK.ACQUIRE", "job:42", "w", "0"]);
    assert!(err.starts_with("ERR ttl-ms"), "{err}");
    let section = s.cli_stdout(&["INFO", "lock"]);
    assert!(
        section.contains("# lock") && section.contains("lock_grants:1"),
        "{section}"
    );
    // redis-cli's own view of the command table.
    let out = s.cli_stdin("LOCK.ACQUIRE a b 1000\nLOCK.FORCERELEASE a\nLOCK.FORCERELEASE a\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1..], ["1", "0"]);
}

#[test]
fn a_lock_is_never_shown_after_its_deadline() {
    // Freeze the expiry path by hammering reads right around the deadline:
    // whatever the timer's timing, a read after the deadline never shows it.
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "a", 150).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(400) {
        let seen = info(&mut c, "k");
        if let Some((_, _, ttl, _, _)) = seen {
            assert!(ttl > 0, "a shown lock always has time left");
        }
    }
    assert_eq!(info(&mut c, "k"), None);
}
