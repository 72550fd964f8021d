//! `LOCK.ACQUIRE ... WAIT`: server-side FIFO queues with direct hand-off,
//! on a real redis-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::lock::{self, acquire, release, stat};
use testkit::{wait_for, Server};

/// (owner, holds, token, waiters) of a key, None when free.
fn info(c: &mut Connection, key: &str) -> Option<(String, i64, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.token, i.waiters))
}

fn waiters(c: &mut Connection, key: &str) -> i64 {
    info(c, key).map_or(0, |i| i.3)
}

/// Waits until `n` clients wait on `key`.
fn until_waiting(c: &mut Connection, key: &str, n: i64) {
    wait_for(
        &format!("{n} waiters on {key}"),
        Duration::from_secs(10),
        || (waiters(c, key) == n).then_some(()),
    );
}

/// A client blocked in `LOCK.ACQUIRE key owner ttl WAIT wait` on its own
/// thread; returns its reply and how long it waited.
fn spawn_waiter(
    s: &Server,
    key: &str,
    owner: &str,
    ttl: u64,
    wait: u64,
) -> JoinHandle<(redis::RedisResult<Option<i64>>, Duration)> {
    let mut c = s.conn();
    let (key, owner) = (key.to_string(), owner.to_string());
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = redis::cmd("LOCK.ACQUIRE")
            .arg(&key)
            .arg(&owner)
            .arg(ttl)
            .arg("WAIT")
            .arg(wait)
            .query(&mut c);
        (r, start.elapsed())
    })
}

/// A raw RESP connection, for tests with many blocked clients at once.
struct Raw {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Raw {
    fn new(s: &Server) -> Raw {
        let w = s.raw_stream();
        let r = BufReader::new(w.try_clone().unwrap());
        Raw { w, r }
    }
    fn send(&mut self, args: &[&str]) {
        let mut buf = format!("*{}\r\n", args.len());
        for a in args {
            buf.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.w.write_all(buf.as_bytes()).unwrap();
    }
    /// Reads one simple reply line (integer, nil, status or error).
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }
}

#[test]
fn fifty_clients_get_the_lock_in_arrival_order_with_mutual_exclusion() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "gate", 60_000).unwrap();
    let _: () = redis::cmd("SET")
        .arg("counter")
        .arg(0)
        .query(&mut c)
        .unwrap();
    let mut threads = Vec::new();
    for i in 0..50 {
        let mut conn = s.conn();
        threads.push(std::thread::spawn(move || {
            let owner = format!("client-{i}");
            let token: Option<i64> = redis::cmd("LOCK.ACQUIRE")
                .arg("k")
                .arg(&owner)
                .arg(10_000)
                .arg("WAIT")
                .arg(30_000)
                .query(&mut conn)
                .unwrap();
            let token = token.expect("no client times out");
            // The critical section: nobody else may be inside.
            let entered: bool = redis::cmd("SET")
                .arg("inside")
                .arg(&owner)
                .arg("NX")
                .query(&mut conn)
                .unwrap();
            assert!(entered, "{owner} entered while someone else was inside");
            let n: i64 = redis::cmd("GET").arg("counter").query(&mut conn).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            let _: () = redis::cmd("SET")
                .arg("counter")
                .arg(n + 1)
                .query(&mut conn)
                .unwrap();
            let _: i64 = redis::cmd("RPUSH")
                .arg("order")
                .arg(i)
                .query(&mut conn)
                .unwrap();
            let _: i64 = redis::cmd("DEL").arg("inside").query(&mut conn).unwrap();
            assert_eq!(release(&mut conn, "k", &owner), Some(0));
            token
        }));
        until_waiting(&mut c, "k", i + 1);
    }
    release(&mut c, "k", "gate");
    let tokens: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let counter: i64 = redis::cmd("GET").arg("counter").query(&mut c).unwrap();
    assert_eq!(counter, 50, "mutual exclusion: every increment counted");
    let order: Vec<i64> = redis::cmd("LRANGE")
        .arg("order")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        order,
        (0..50).collect::<Vec<_>>(),
        "grants in arrival order"
    );
    let mut sorted = tokens.clone();
    sorted.sort();
    assert_eq!(sorted, tokens, "tokens increase in grant order");
    assert_eq!(stat(&mut c, "handoffs"), 50);
    assert_eq!(stat(&mut c, "wait_timeouts"), 0);
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn a_wait_that_times_out_answers_nil() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", 60_000).unwrap();
    let (r, waited) = spawn_waiter(&s, "k", "w", 1000, 300).join().unwrap();
    assert_eq!(r.unwrap(), None);
    assert!(
        waited >= Duration::from_millis(250),
        "answered too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "answered too late: {waited:?}"
    );
    assert_eq!(waiters(&mut c, "k"), 0);
    assert_eq!(stat(&mut c, "wait_timeouts"), 1);
    assert_eq!(info(&mut c, "k").unwrap().0, "holder");
}

#[test]
fn wait_zero_waits_until_the_hand_off() {
    let s = Server::start();
    let mut c = s.conn();
    let first = acquire(&mut c, "k", "holder", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "w", 45_000, 0);
    until_waiting(&mut c, "k", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.is_finished(), "WAIT 0 does not time out");
    assert_eq!(release(&mut c, "k", "holder"), Some(0));
    let (r, _) = w.join().unwrap();
    let token = r.unwrap().expect("granted");
    assert!(token > first);
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut c).unwrap();
    let Value::Array(f) = v else { panic!() };
    let ttl: i64 = redis::from_redis_value_ref(&f[5]).unwrap();
    assert!(
        ttl > 40_000,
        "the new holder's lease is its own ttl from the hand-off, got {ttl}"
    );
    assert_eq!(info(&mut c, "k").unwrap().0, "w");
}

#[test]
fn an_expiring_holder_hands_the_lock_to_the_head_waiter_at_its_deadline() {
    let s = Server::start();
    let mut c = s.conn();
    let start = Instant::now();
    acquire(&mut c, "k", "crashed", 600).unwrap();
    let w = spawn_waiter(&s, "k", "w", 10_000, 10_000);
    let (r, _) = w.join().unwrap();
    let granted_after = start.elapsed();
    assert!(r.unwrap().is_some());
    assert!(
        granted_after >= Duration::from_millis(550),
        "granted before the deadline: {granted_after:?}"
    );
    assert!(
        granted_after < Duration::from_millis(2600),
        "granted long after the deadline: {granted_after:?}"
    );
    assert_eq!(stat(&mut c, "expired"), 1);
    assert_eq!(stat(&mut c, "handoffs"), 1);
}

#[test]
fn waiters_that_leave_are_skipped() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", 60_000).unwrap();

    // 1: closes its socket while waiting.
    let mut gone = Raw::new(&s);
    gone.send(&["LOCK.ACQUIRE", "k", "gone", "10000", "WAIT", "0"]);
    until_waiting(&mut c, "k", 1);
    drop(gone);
    until_waiting(&mut c, "k", 0);

    // 2: killed by CLIENT KILL.
    let mut killed = s.conn();
    let killed_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut killed).unwrap();
    let k = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("killed")
            .arg(10_000)
            .arg("WAIT")
            .arg(0)
            .query::<Option<i64>>(&mut killed)
    });
    until_waiting(&mut c, "k", 1);

    // 3: CLIENT UNBLOCK (answered nil), 4: CLIENT UNBLOCK ERROR.
    let mut unblocked = s.conn();
    let unblocked_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut unblocked)
        .unwrap();
    let u = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("unblocked")
            .arg(10_000)
            .arg("WAIT")
            .arg(0)
            .query::<Option<i64>>(&mut unblocked)
    });
    until_waiting(&mut c, "k", 2);
    let mut errored = s.conn();
    let errored_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut errored).unwrap();
    let e = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("errored")
            .arg(10_000)
            .arg("WAIT")
            .arg(0)
            .query::<Option<i64>>(&mut errored)
    });
    until_waiting(&mut c, "k", 3);

    // 5: the one that stays.
    let stays = spawn_waiter(&s, "k", "stays", 10_000, 0);
    until_waiting(&mut c, "k", 4);

    let n: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(killed_id)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert!(k.join().unwrap().is_err(), "a killed client gets no reply");
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(unblocked_id)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        u.join().unwrap().unwrap(),
        None,
        "CLIENT UNBLOCK answers nil"
    );
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(errored_id)
        .arg("ERROR")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let err = e.join().unwrap().unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    until_waiting(&mut c, "k", 1);

    release(&mut c, "k", "holder");
    let (r, _) = stays.join().unwrap();
    assert!(r.unwrap().is_some());
    assert_eq!(info(&mut c, "k").unwrap().0, "stays");
    assert_eq!(stat(&mut c, "handoffs"), 1, "nobody else was ever granted");
    assert!(stat(&mut c, "wait_abandoned") >= 3);
}

#[test]
fn wait_does_not_block_in_multi_or_scripts() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", 60_000).unwrap();
    let start = Instant::now();
    let r: Vec<Option<i64>> = redis::pipe()
        .atomic()
        .cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg("w")
        .arg(1000)
        .arg("WAIT")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(r, vec![None]);
    let r: Option<i64> = redis::cmd("EVAL")
        .arg("return redis.call('LOCK.ACQUIRE', KEYS[1], 'w', 1000, 'WAIT', 0)")
        .arg(1)
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, None);
    let r: Option<i64> = redis::cmd("EVAL")
        .arg("return redis.call('LOCK.ACQUIRE', KEYS[1], 'holder', 1000, 'WAIT', 0)")
        .arg(1)
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert!(r.is_some(), "re-entry inside a script works");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(waiters(&mut c, "k"), 0);
}

#[test]
fn same_owner_on_another_connection_reenters_at_once() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "me", 60_000).unwrap();
    let (r, _) = spawn_waiter(&s, "k", "me", 60_000, 0).join().unwrap();
    assert_eq!(r.unwrap(), Some(t));
    assert_eq!(info(&mut c, "k").unwrap().1, 2);

    // Queued behind another holder: both of "a"'s waiters get it together.
    acquire(&mut c, "q", "x", 60_000).unwrap();
    let a1 = spawn_waiter(&s, "q", "a", 60_000, 0);
    until_waiting(&mut c, "q", 1);
    let b = spawn_waiter(&s, "q", "b", 60_000, 0);
    until_waiting(&mut c, "q", 2);
    let a2 = spawn_waiter(&s, "q", "a", 60_000, 0);
    until_waiting(&mut c, "q", 3);
    release(&mut c, "q", "x");
    let t1 = a1.join().unwrap().0.unwrap();
    let t2 = a2.join().unwrap().0.unwrap();
    assert_eq!(t1, t2);
    let (owner, holds, _, w) = info(&mut c, "q").unwrap();
    assert_eq!((owner.as_str(), holds, w), ("a", 2, 1));
    release(&mut c, "q", "a");
    release(&mut c, "q", "a");
    assert!(b.join().unwrap().0.unwrap().is_some());
}

#[test]
fn force_release_hands_off_to_the_head_waiter() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "stuck", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "next", 10_000, 0);
    until_waiting(&mut c, "k", 1);
    let n: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert!(w.join().unwrap().0.unwrap().is_some());
    assert_eq!(info(&mut c, "k").unwrap().0, "next");
}

#[test]
fn generic_commands_with_waiters_present() {
    let s = Server::start();
    let mut c = s.conn();
    // DEL / UNLINK / RENAME-away: the head waiter takes the free name.
    for how in ["DEL", "UNLINK", "RENAME"] {
        acquire(&mut c, "k", "holder", 60_000).unwrap();
        let w = spawn_waiter(&s, "k", "w", 10_000, 0);
        until_waiting(&mut c, "k", 1);
        if how == "RENAME" {
            let _: () = redis::cmd("RENAME")
                .arg("k")
                .arg("elsewhere")
                .query(&mut c)
                .unwrap();
        } else {
            let _: i64 = redis::cmd(how).arg("k").query(&mut c).unwrap();
        }
        assert!(w.join().unwrap().0.unwrap().is_some(), "{how}");
        assert_eq!(info(&mut c, "k").unwrap().0, "w", "{how}");
        let _: i64 = redis::cmd("DEL").arg("k").query(&mut c).unwrap();
    }
    assert_eq!(
        info(&mut c, "elsewhere").unwrap().0,
        "holder",
        "the renamed lock kept its holder"
    );

    // FLUSHALL and SWAPDB: the waiter's name is free afterwards.
    for how in ["FLUSHALL", "SWAPDB"] {
        acquire(&mut c, "k", "holder", 60_000).unwrap();
        let w = spawn_waiter(&s, "k", "w", 10_000, 0);
        until_waiting(&mut c, "k", 1);
        if how == "FLUSHALL" {
            let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        } else {
            let _: () = redis::cmd("SWAPDB").arg(0).arg(9).query(&mut c).unwrap();
        }
        assert!(w.join().unwrap().0.unwrap().is_some(), "{how}");
        assert_eq!(info(&mut c, "k").unwrap().0, "w", "{how}");
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    }

    // SET over the lock key: the name now holds a string; waiters are told.
    acquire(&mut c, "k", "holder", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "w", 10_000, 0);
    until_waiting(&mut c, "k", 1);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("text")
        .query(&mut c)
        .unwrap();
    let err = w.join().unwrap().0.unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn a_hand_off_is_replayed_from_the_aof() {
    let mut s = Server::config()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    let mut c = s.conn();
    acquire(&mut c, "k", "first", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "second", 60_000, 0);
    until_waiting(&mut c, "k", 1);
    release(&mut c, "k", "first");
    let token = w.join().unwrap().0.unwrap().unwrap();
    drop(c);
    s.kill9();
    s.restart();
    let mut c = s.conn();
    let (owner, holds, t, _) = info(&mut c, "k").unwrap();
    assert_eq!((owner.as_str(), holds, t), ("second", 1, token));
}

#[test]
fn thousands_of_waiters_on_one_key_are_served_in_order() {
    const N: usize = 2000;
    let s = Server::config().arg("maxclients", "10000").start();
    let mut c = s.conn();
    acquire(&mut c, "k", "gate", 60_000).unwrap();
    let mut raws: Vec<Raw> = (0..N).map(|_| Raw::new(&s)).collect();
    for (i, r) in raws.iter_mut().enumerate() {
        r.send(&[
            "LOCK.ACQUIRE",
            "k",
            &format!("w{i}"),
            "30000",
            "WAIT",
            "60000",
        ]);
    }
    until_waiting(&mut c, "k", N as i64);
    release(&mut c, "k", "gate");
    let mut last = 0;
    for (i, r) in raws.iter_mut().enumerate() {
        let reply = r.line();
        let token: i64 = reply
            .strip_prefix(':')
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("waiter {i}: {reply}"));
        assert!(token > last);
        last = token;
        assert_eq!(info(&mut c, "k").unwrap().0, format!("w{i}"), "FIFO");
        r.send(&["LOCK.RELEASE", "k", &format!("w{i}")]);
        assert_eq!(r.line(), ":0");
    }
    assert_eq!(info(&mut c, "k"), None);
    assert_eq!(stat(&mut c, "handoffs"), N as i64);
}

#[test]
fn waiters_spread_over_thousands_of_keys_get_their_locks_when_leases_expire() {
    const N: usize = 2000;
    let s = Server::config().arg("maxclients", "10000").start();
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..N {
        p.cmd("LOCK.ACQUIRE")
            .arg(format!("k{i}"))
            .arg("crashed")
            .arg(500 + (i % 300) as u64);
    }
    let _: Vec<Option<i64>> = p.query(&mut c).unwrap();
    let mut raws: Vec<Raw> = (0..N).map(|_| Raw::new(&s)).collect();
    for (i, r) in raws.iter_mut().enumerate() {
        r.send(&[
            "LOCK.ACQUIRE",
            &format!("k{i}"),
            "next",
            "30000",
            "WAIT",
            "20000",
        ]);
    }
    for (i, r) in raws.iter_mut().enumerate() {
        let reply = r.line();
        assert!(reply.starts_with(':'), "waiter on k{i}: {reply}");
    }
    assert_eq!(stat(&mut c, "handoffs"), N as i64);
    assert_eq!(stat(&mut c, "expired"), N as i64);
    assert_eq!(stat(&mut c, "held"), N as i64);
    assert_eq!(stat(&mut c, "waiters"), 0);
}

#[test]
fn info_reports_waiters() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", 60_000).unwrap();
    let a = spawn_waiter(&s, "k", "a", 1000, 0);
    let b = spawn_waiter(&s, "k2", "b", 1000, 200);
    until_waiting(&mut c, "k", 1);
    assert_eq!(
        stat(&mut c, "waiters"),
        1,
        "a wait on a free key does not block"
    );
    assert!(b.join().unwrap().0.unwrap().is_some());
    release(&mut c, "k", "holder");
    a.join().unwrap().0.unwrap();
    assert_eq!(stat(&mut c, "waiters"), 0);
}
