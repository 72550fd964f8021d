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
use testkit::lock::{
    self, acquire, exists, expect_expiry, force_release, grant_timed, release, renew, stat,
};
use testkit::timing::{before, lease_ms};
use testkit::{
    dbsize, until_conclusive, wait_aof_settled, wait_for, Server, EXPIRY_SLACK, PATIENCE,
};

#[test]
fn acquire_grants_a_positive_token_and_reentry_keeps_it() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 10_000).expect("granted");
    assert!(t > 0);
    assert_eq!(acquire(&mut c, "k", "a", 10_000), Some(t));
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!(
        (i.owner.as_str(), i.holds, i.token, i.waiters),
        ("a", 2, t, 0)
    );
    assert!(i.ttl > 0 && i.ttl <= 10_000);
}

#[test]
fn another_owner_gets_nil_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 10_000).unwrap();
    assert_eq!(acquire(&mut c, "k", "b", 20_000), None);
    assert_eq!(renew(&mut c, "k", "b", 20_000), 0);
    assert_eq!(release(&mut c, "k", "b"), None);
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 1, t));
    assert!(i.ttl <= 10_000);
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
fn key_names_with_any_byte_expire_and_hand_off() {
    // Key names are binary: a NUL or a byte that is not UTF-8 must survive
    // the lease timer and the sweep after a DEL (both rebuild the name).
    let s = Server::start();
    let mut c = s.conn();
    let key: &[u8] = b"k\x00ey\xff";
    let grant = |c: &mut Connection, owner: &str, ttl: u64| -> Option<i64> {
        redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(ttl)
            .query(c)
            .unwrap()
    };
    grant(&mut c, "a", 50).unwrap();
    wait_for("the lease to expire", PATIENCE, || {
        (dbsize(&mut c) == 0).then_some(())
    });
    assert_eq!(stat(&mut c, "expired"), 1);
    // A waiter on that name takes it when a DEL frees it.
    grant(&mut c, "holder", 600_000).unwrap();
    let mut w = s.conn();
    let waiter = std::thread::spawn(move || -> Option<i64> {
        redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg("waiter")
            .arg(600_000)
            .arg("WAIT")
            .arg(0)
            .query(&mut w)
            .unwrap()
    });
    lock::wait_waiters(&mut c, 1);
    let _: i64 = redis::cmd("DEL").arg(key).query(&mut c).unwrap();
    assert!(waiter.join().unwrap().is_some(), "the waiter got the name");
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
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
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!(i.holds, 2);
    assert!(
        i.ttl <= 30_000,
        "a partial release must not extend the lease"
    );
    assert_eq!(release(&mut c, "k", "a"), Some(1));
    assert_eq!(release(&mut c, "k", "a"), Some(0));
    assert_eq!(lock::info(&mut c, "k"), None);
    assert!(!exists(&mut c, "k"));
    assert_eq!(release(&mut c, "k", "a"), None);
}

#[test]
fn renew_replies_one_for_the_holder_and_zero_otherwise() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(renew(&mut c, "k", "a", 1000), 0, "never held");
    // Held for 10 s: the renewal surely comes within the lease.
    acquire(&mut c, "k", "a", 10_000).unwrap();
    assert_eq!(renew(&mut c, "k", "a", 50_000), 1);
    let ttl = lock::info(&mut c, "k").unwrap().ttl;
    assert!(ttl > 10_000, "renew sets the lease to now + ttl");
    assert_eq!(renew(&mut c, "k", "b", 50_000), 0, "someone else's");
}

#[test]
fn renewal_keeps_a_lock_alive_well_past_its_ttl() {
    // A lease renewed every 50 ms for 6 × its ttl keeps its owner and token.
    // A renewal answered within the ttl of the previous send reached the
    // server in time and must succeed. When the client itself stalled for a
    // whole ttl, the attempt proves nothing: again with a longer lease.
    let s = Server::start();
    let mut c = s.conn();
    until_conclusive(|attempt| {
        let ttl_ms = lease_ms(200, attempt);
        let ttl = Duration::from_millis(ttl_ms);
        let key = format!("k{attempt}");
        let mut sent = Instant::now();
        let t = acquire(&mut c, &key, "a", ttl_ms).unwrap();
        let start = Instant::now();
        while start.elapsed() < 6 * ttl {
            let previous = sent;
            sent = Instant::now();
            if renew(&mut c, &key, "a", ttl_ms) != 1 {
                before("a renewal's answer", Instant::now(), previous + ttl)?;
                panic!("{key} lost within its lease");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let i = lock::info(&mut c, &key);
        if i.is_none() {
            before("the last look", Instant::now(), sent + ttl)?;
        }
        let i = i.expect("held by its renewing owner");
        assert_eq!((i.owner.as_str(), i.token), ("a", t));
        Ok(())
    });
}

#[test]
fn unrenewed_lease_is_removed_by_the_server_promptly() {
    let s = Server::start();
    let mut c = s.conn();
    let lease = grant_timed(&mut c, "k", "a", 300);
    let shown = lock::info(&mut c, "k").is_some();
    assert!(
        shown || Instant::now() >= lease.earliest,
        "not shown within its lease"
    );
    // The key itself disappears (not only hidden from reads), without any
    // command touching it, soon after its deadline.
    let mut watcher = s.conn();
    wait_for(
        "the expired lock's key to be deleted",
        (lease.latest + EXPIRY_SLACK).saturating_duration_since(Instant::now()),
        || (dbsize(&mut watcher) == 0).then_some(()),
    );
    assert_eq!(stat(&mut c, "expired"), 1);
    assert_eq!(stat(&mut c, "held"), 0);
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
    //
    // All must still be live when they are counted, after this client has
    // sent them all — which takes what it takes on this machine (a debug
    // build on a slow one needs seconds). So the time for one chunk is
    // measured first on throwaway locks, and the leases last 3× the fill it
    // predicts (at least 1.5 s). When the fill still ran past the first
    // deadline, the attempt proves nothing: again, with leases twice as long.
    const N: u64 = 200_000;
    const CHUNK: u64 = 10_000;
    fn fill(c: &mut Connection, prefix: &str, chunk: u64, base_ms: u64) {
        let mut p = redis::pipe();
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            p.cmd("LOCK.ACQUIRE")
                .arg(format!("{prefix}{i}"))
                .arg("o")
                .arg(base_ms + (i % 1000));
        }
        let granted: Vec<Option<i64>> = p.query(c).unwrap();
        assert!(granted.iter().all(Option::is_some), "all granted");
    }
    until_conclusive(|attempt| {
        let s = Server::start();
        let mut c = s.conn();
        let calibrating = Instant::now();
        fill(&mut c, "calibration", 0, 600_000);
        let per_chunk = calibrating.elapsed();
        let mut p = redis::pipe();
        for i in 0..CHUNK {
            p.cmd("LOCK.RELEASE")
                .arg(format!("calibration{i}"))
                .arg("o");
        }
        let _: Vec<Option<i64>> = p.query(&mut c).unwrap();
        assert_eq!(stat(&mut c, "held"), 0);
        let predicted = per_chunk * (N / CHUNK) as u32;
        let base = (predicted * (3 << attempt)).max(Duration::from_millis(1_500));
        let base_ms = base.as_millis() as u64;
        eprintln!("one chunk of {CHUNK} in {per_chunk:?}: leases of {base:?} and up");

        let filling = Instant::now();
        for chunk in 0..N / CHUNK {
            fill(&mut c, "k", chunk, base_ms);
        }
        let held = stat(&mut c, "held");
        let scheduled = stat(&mut c, "leases_scheduled");
        eprintln!("{N} leases sent and counted in {:?}", filling.elapsed());
        before(
            &format!(
                "counting (fill predicted {predicted:?} from one chunk in {per_chunk:?}, \
                 took {:?})",
                filling.elapsed()
            ),
            Instant::now(),
            filling + base,
        )?;
        assert_eq!(held, N as i64);
        assert_eq!(scheduled, N as i64);
        wait_for(
            "200k leases to expire",
            base + Duration::from_secs(1) + PATIENCE,
            || (dbsize(&mut c) == 0).then_some(()),
        );
        assert_eq!(stat(&mut c, "expired"), N as i64);
        assert_eq!(stat(&mut c, "held"), 0);
        assert_eq!(stat(&mut c, "leases_scheduled"), 0);
        Ok(())
    });
}

#[test]
fn force_release_removes_any_holder() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(force_release(&mut c, "k"), 0);
    acquire(&mut c, "k", "a", 10_000).unwrap();
    acquire(&mut c, "k", "a", 10_000).unwrap();
    assert_eq!(force_release(&mut c, "k"), 1);
    assert_eq!(lock::info(&mut c, "k"), None);
    assert_eq!(
        release(&mut c, "k", "a"),
        None,
        "the old holder no longer holds it"
    );
    assert_eq!(stat(&mut c, "forced_releases"), 1);
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
    assert_eq!(names, ["owner", "holds", "ttl", "token", "waiters", "mode"]);
    assert_eq!(fields[5].1, Value::SimpleString("exclusive".into()));
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
            force_release(&mut c, "k");
        }
    }
}

fn token_after_restart(config: testkit::ServerConfig, durable: bool, crash: impl Fn(&mut Server)) {
    let mut s = config.start();
    let mut c = s.conn();
    let mut last = 0;
    for i in 0..50 {
        last = acquire(&mut c, "k", &format!("o{i}"), 60_000).unwrap();
        force_release(&mut c, "k");
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
    match lock::info(&mut c, "held") {
        Some(i) => assert_eq!((i.owner.as_str(), i.token), ("h", held)),
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
        // `short` must end while the server is down: its lease is set just
        // before the shutdown, and an attempt whose shutdown took longer
        // than the lease proves nothing (again, with a longer lease).
        until_conclusive(|attempt| {
            let short_ms = lease_ms(1_500, attempt);
            let short = Duration::from_millis(short_ms);
            let mut s = config.clone().start();
            let mut c = s.conn();
            let t = acquire(&mut c, "k", "a", 60_000).unwrap();
            acquire(&mut c, "k", "a", 60_000).unwrap();
            // Long for now: surely in the snapshot or the rewrite.
            acquire(&mut c, "short", "b", 60_000).unwrap();
            let ttl_before = lock::info(&mut c, "k").unwrap().ttl;
            if aof {
                let _: () = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
                wait_aof_settled(&mut c);
            }
            // One more change (with the AOF: after the rewrite, replayed
            // from the AOF tail): `short` now ends soon.
            let sent = Instant::now();
            assert_eq!(renew(&mut c, "short", "b", short_ms), 1);
            s.shutdown(!aof);
            before("the end of the shutdown", Instant::now(), sent + short)?;
            // Down for longer than `short`'s lease.
            std::thread::sleep(
                (sent + short + Duration::from_millis(200))
                    .saturating_duration_since(Instant::now()),
            );
            s.restart();
            let mut c = s.conn();
            let i = lock::info(&mut c, "k").unwrap();
            assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, t));
            assert!(
                i.ttl <= ttl_before - short_ms as i64,
                "the deadline is absolute: downtime counts"
            );
            wait_for(
                "the lock that expired while down to be removed",
                PATIENCE,
                || (!exists(&mut c, "short")).then_some(()),
            );
            assert!(stat(&mut c, "expired") >= 1, "counted as expired");
            assert_eq!(release(&mut c, "k", "a"), Some(1));
            Ok(())
        });
    }
}

#[test]
fn debug_reload_keeps_every_lock() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "a", 60_000).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    let before_reload = lock::digest(&mut c, "k");
    let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("a", 2, t));
    assert_eq!(
        lock::digest(&mut c, "k"),
        before_reload,
        "same owner, holds, token and deadline"
    );
    renew(&mut c, "k", "a", 30_000);
    assert_ne!(
        lock::digest(&mut c, "k"),
        before_reload,
        "the digest covers the deadline"
    );
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert!(usage > 40, "MEMORY USAGE reports a real size, got {usage}");
    // Still expires after a reload: the reload must come within the lease
    // (else, again with a longer one).
    until_conclusive(|attempt| {
        let key = format!("soon{attempt}");
        let lease = grant_timed(&mut c, &key, "a", lease_ms(200, attempt));
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        if !exists(&mut c, &key) {
            before("the reload", Instant::now(), lease.earliest)?;
            panic!("{key} lost by the reload");
        }
        expect_expiry(&mut c, &[lease]);
        Ok(())
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
        vec!["LOCK.FORCERELEASE", "k", "a", "extra"],
        vec!["LOCK.FORCERELEASE", "k", ""],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "0"],
        vec!["LOCK.RELEASE", "k", "a", "COUNT", "2"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "SHARED", "SHARED"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "LIMIT", "0"],
        vec!["LOCK.ACQUIRE", "k", "a", "100", "COUNT", "1"],
        vec!["LOCK.INFO"],
        vec!["LOCK.INFO", "k", "extra"],
        vec!["LOCK.APPLY", "k", "b", "1", "1", "1"],
    ];
    assert!(cases.len() >= 25);
    let before = lock::info(&mut c, "k").unwrap();
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
        let now = lock::info(&mut c, "k").unwrap();
        assert_eq!(
            (&now.owner, now.holds, now.token),
            (&before.owner, before.holds, t),
            "{args:?} changed the lock"
        );
        assert!(now.ttl <= before.ttl, "{args:?} extended the lease");
        let n = dbsize(&mut c);
        assert_eq!(n, 1, "{args:?} created a key");
    }
}

#[test]
fn generic_commands_on_a_lock_key() {
    let s = Server::start();
    let mut c = s.conn();
    let gone_soon = |c: &mut Connection, k: &str, db: i64| {
        let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
        wait_for(&format!("{k} in db {db} to expire"), PATIENCE, || {
            (!exists(c, k)).then_some(())
        });
        let _: () = redis::cmd("SELECT").arg(0).query(c).unwrap();
    };

    // DEL and UNLINK remove the lock; the name is free.
    acquire(&mut c, "d", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("DEL").arg("d").query(&mut c).unwrap();
    assert!(acquire(&mut c, "d", "b", 60_000).is_some());
    let _: i64 = redis::cmd("UNLINK").arg("d").query(&mut c).unwrap();
    assert!(acquire(&mut c, "d", "c", 60_000).is_some());

    // COPY is refused: a lock must not be duplicated.
    acquire(&mut c, "c1", "a", 60_000).unwrap();
    assert!(redis::cmd("COPY")
        .arg("c1")
        .arg("c2")
        .query::<Value>(&mut c)
        .is_err());
    assert!(!exists(&mut c, "c2"));

    // Short leases moved by RENAME, MOVE, PERSIST and SWAPDB: each expires
    // on time in its new place. The commands must all run before the
    // leases can end (else, again with longer ones).
    until_conclusive(|attempt| {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let ttl = lease_ms(400, attempt);
        let first = grant_timed(&mut c, "r1", "a", ttl);
        acquire(&mut c, "m", "a", ttl).unwrap();
        acquire(&mut c, "p", "a", ttl).unwrap();
        let _: () = redis::cmd("SELECT").arg(5).query(&mut c).unwrap();
        acquire(&mut c, "s", "a", ttl).unwrap();
        let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();

        // RENAME: the lock moves with owner and token.
        let renamed: redis::RedisResult<()> =
            redis::cmd("RENAME").arg("r1").arg("r2").query(&mut c);
        let shown = lock::held(&mut c, "r2");
        let old_name_free = acquire(&mut c, "r1", "b", 60_000).is_some();
        // MOVE: to database 3.
        let moved: i64 = redis::cmd("MOVE").arg("m").arg(3).query(&mut c).unwrap();
        // PERSIST leaves the lease in force.
        let _: i64 = redis::cmd("PERSIST").arg("p").query(&mut c).unwrap();
        // SWAPDB: the lock ends up in database 6.
        let _: () = redis::cmd("SWAPDB").arg(5).arg(6).query(&mut c).unwrap();
        before(
            "the commands on the short leases",
            Instant::now(),
            first.earliest,
        )?;

        renamed.unwrap();
        assert_eq!(shown, Some(("a".into(), 1, first.token)));
        assert!(old_name_free, "the old name is free");
        assert_eq!(moved, 1);
        gone_soon(&mut c, "r2", 0);
        assert!(exists(&mut c, "r1"), "only the renamed lock expired");
        gone_soon(&mut c, "m", 3);
        gone_soon(&mut c, "p", 0);
        gone_soon(&mut c, "s", 6);
        Ok(())
    });

    // EXPIRE: a native TTL removes the key when it fires; the lease still
    // applies if it is shorter (above: PERSIST leaves it in force).
    acquire(&mut c, "e", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg("e")
        .arg(200)
        .query(&mut c)
        .unwrap();
    gone_soon(&mut c, "e", 0);

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
    force_release(&mut c, "f");
    acquire(&mut c, "x", "a", 100).unwrap();
    wait_for("expiry", PATIENCE, || {
        (stat(&mut c, "expired") == 1).then_some(())
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
        assert_eq!(stat(&mut c, field), n, "lock_{field}");
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
    pubsub.set_read_timeout(Some(PATIENCE)).unwrap();
    acquire(&mut c, "k", "a", 60_000).unwrap();
    release(&mut c, "k", "a");
    acquire(&mut c, "k", "a", 60_000).unwrap();
    force_release(&mut c, "k");
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
    let out = s.cli_stdin("LOCK.ACQUIRE a b 30000\nLOCK.FORCERELEASE a\nLOCK.FORCERELEASE a\n");
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
        if let Some(i) = lock::info(&mut c, "k") {
            assert!(i.ttl > 0, "a shown lock always has time left");
        }
    }
    assert_eq!(lock::info(&mut c, "k"), None);
}
