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
use std::time::{Duration, Instant};

use redis::Value;
use testkit::lock::{
    self, acquire, key_waiters, release, spawn_waiter, stat, wait_key_waiters, wait_waiters,
};
use testkit::timing::{before, lease_ms};
use testkit::{until_conclusive, Server, EXPIRY_SLACK, PATIENCE};

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
    acquire(&mut c, "k", "gate", 600_000).unwrap();
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
                .arg(60_000)
                .arg("WAIT")
                .arg(300_000)
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
        wait_key_waiters(&mut c, "k", i + 1);
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
    acquire(&mut c, "k", "holder", 600_000).unwrap();
    let (r, waited) = spawn_waiter(&s, "k", "w", 1000, 300).join_timed();
    assert_eq!(r.unwrap(), None);
    assert!(
        waited >= Duration::from_millis(250),
        "answered too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(300) + PATIENCE,
        "answered too late: {waited:?}"
    );
    assert_eq!(key_waiters(&mut c, "k"), 0);
    assert_eq!(stat(&mut c, "wait_timeouts"), 1);
    assert_eq!(lock::info(&mut c, "k").unwrap().owner, "holder");
}

#[test]
fn wait_zero_waits_until_the_hand_off() {
    let s = Server::start();
    let mut c = s.conn();
    let first = acquire(&mut c, "k", "holder", 600_000).unwrap();
    let w = spawn_waiter(&s, "k", "w", 45_000, 0);
    wait_key_waiters(&mut c, "k", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.is_finished(), "WAIT 0 does not time out");
    let released = Instant::now();
    assert_eq!(release(&mut c, "k", "holder"), Some(0));
    let token = w.join().unwrap().expect("granted");
    assert!(token > first);
    let v: Value = redis::cmd("LOCK.INFO").arg("k").query(&mut c).unwrap();
    let since_release = released.elapsed().as_millis() as i64;
    let Value::Array(f) = v else { panic!() };
    let ttl: i64 = redis::from_redis_value_ref(&f[5]).unwrap();
    // The hand-off came after the release was sent: the lease runs 45 s
    // from then, not from when the wait began (500 ms and more earlier).
    assert!(
        ttl >= 45_000 - since_release - 2,
        "the new holder's lease is its own ttl from the hand-off, got {ttl} \
         {since_release} ms after the release"
    );
    assert_eq!(lock::info(&mut c, "k").unwrap().owner, "w");
}

#[test]
fn an_expiring_holder_hands_the_lock_to_the_head_waiter_at_its_deadline() {
    // The waiter must be queued before the lease ends (else it simply finds
    // the lock free): an attempt too slow for that proves nothing, and the
    // next one uses a longer lease.
    until_conclusive(|attempt| {
        let s = Server::start();
        let mut c = s.conn();
        let ttl = lease_ms(600, attempt);
        let lease = lock::grant_timed(&mut c, "k", "crashed", ttl);
        let w = spawn_waiter(&s, "k", "w", 10_000, 120_000);
        wait_key_waiters(&mut c, "k", 1);
        before("the waiter's arrival", Instant::now(), lease.earliest)?;
        let r = w.join();
        let granted = Instant::now();
        assert!(r.unwrap().is_some());
        assert!(
            granted + Duration::from_millis(50) >= lease.earliest,
            "granted {:?} before the deadline",
            lease.earliest - granted
        );
        assert!(
            granted < lease.latest + EXPIRY_SLACK,
            "granted {:?} after the deadline",
            granted - lease.latest
        );
        assert_eq!(stat(&mut c, "expired"), 1);
        assert_eq!(stat(&mut c, "handoffs"), 1);
        Ok(())
    });
}

#[test]
fn waiters_that_leave_are_skipped() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "holder", 600_000).unwrap();

    // 1: closes its socket while waiting.
    let mut gone = Raw::new(&s);
    gone.send(&["LOCK.ACQUIRE", "k", "gone", "10000", "WAIT", "0"]);
    wait_key_waiters(&mut c, "k", 1);
    drop(gone);
    wait_key_waiters(&mut c, "k", 0);

    // 2: killed by CLIENT KILL.
    let killed = spawn_waiter(&s, "k", "killed", 10_000, 0);
    wait_key_waiters(&mut c, "k", 1);

    // 3: CLIENT UNBLOCK (answered nil), 4: CLIENT UNBLOCK ERROR.
    let unblocked = spawn_waiter(&s, "k", "unblocked", 10_000, 0);
    wait_key_waiters(&mut c, "k", 2);
    let errored = spawn_waiter(&s, "k", "errored", 10_000, 0);
    wait_key_waiters(&mut c, "k", 3);

    // 5: the one that stays.
    let stays = spawn_waiter(&s, "k", "stays", 10_000, 0);
    wait_key_waiters(&mut c, "k", 4);

    let n: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(killed.client_id())
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert!(killed.join().is_err(), "a killed client gets no reply");
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(unblocked.client_id())
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        unblocked.join().unwrap(),
        None,
        "CLIENT UNBLOCK answers nil"
    );
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(errored.client_id())
        .arg("ERROR")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let err = errored.join().unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    wait_key_waiters(&mut c, "k", 1);

    release(&mut c, "k", "holder");
    let r = stays.join();
    assert!(r.unwrap().is_some());
    assert_eq!(lock::info(&mut c, "k").unwrap().owner, "stays");
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
    // Nothing waited (with WAIT 0 a wait would last until the read timeout).
    assert!(start.elapsed() < PATIENCE);
    assert_eq!(key_waiters(&mut c, "k"), 0);
}

#[test]
fn same_owner_on_another_connection_reenters_at_once() {
    let s = Server::start();
    let mut c = s.conn();
    let t = acquire(&mut c, "k", "me", 60_000).unwrap();
    let r = spawn_waiter(&s, "k", "me", 60_000, 0).join();
    assert_eq!(r.unwrap(), Some(t));
    assert_eq!(lock::info(&mut c, "k").unwrap().holds, 2);

    // Queued behind another holder: both of "a"'s waiters get it together.
    acquire(&mut c, "q", "x", 60_000).unwrap();
    let a1 = spawn_waiter(&s, "q", "a", 60_000, 0);
    wait_key_waiters(&mut c, "q", 1);
    let b = spawn_waiter(&s, "q", "b", 60_000, 0);
    wait_key_waiters(&mut c, "q", 2);
    let a2 = spawn_waiter(&s, "q", "a", 60_000, 0);
    wait_key_waiters(&mut c, "q", 3);
    release(&mut c, "q", "x");
    let t1 = a1.join().unwrap();
    let t2 = a2.join().unwrap();
    assert_eq!(t1, t2);
    let i = lock::info(&mut c, "q").unwrap();
    assert_eq!((i.owner.as_str(), i.holds, i.waiters), ("a", 2, 1));
    release(&mut c, "q", "a");
    release(&mut c, "q", "a");
    assert!(b.join().unwrap().is_some());
}

#[test]
fn force_release_hands_off_to_the_head_waiter() {
    let s = Server::start();
    let mut c = s.conn();
    acquire(&mut c, "k", "stuck", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "next", 10_000, 0);
    wait_key_waiters(&mut c, "k", 1);
    let n: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    assert!(w.join().unwrap().is_some());
    assert_eq!(lock::info(&mut c, "k").unwrap().owner, "next");
}

#[test]
fn generic_commands_with_waiters_present() {
    let s = Server::start();
    let mut c = s.conn();
    // DEL / UNLINK / RENAME-away: the head waiter takes the free name.
    for how in ["DEL", "UNLINK", "RENAME"] {
        acquire(&mut c, "k", "holder", 60_000).unwrap();
        let w = spawn_waiter(&s, "k", "w", 10_000, 0);
        wait_key_waiters(&mut c, "k", 1);
        if how == "RENAME" {
            let _: () = redis::cmd("RENAME")
                .arg("k")
                .arg("elsewhere")
                .query(&mut c)
                .unwrap();
        } else {
            let _: i64 = redis::cmd(how).arg("k").query(&mut c).unwrap();
        }
        assert!(w.join().unwrap().is_some(), "{how}");
        assert_eq!(lock::info(&mut c, "k").unwrap().owner, "w", "{how}");
        let _: i64 = redis::cmd("DEL").arg("k").query(&mut c).unwrap();
    }
    assert_eq!(
        lock::info(&mut c, "elsewhere").unwrap().owner,
        "holder",
        "the renamed lock kept its holder"
    );

    // FLUSHALL and SWAPDB: the waiter's name is free afterwards.
    for how in ["FLUSHALL", "SWAPDB"] {
        acquire(&mut c, "k", "holder", 60_000).unwrap();
        let w = spawn_waiter(&s, "k", "w", 10_000, 0);
        wait_key_waiters(&mut c, "k", 1);
        if how == "FLUSHALL" {
            let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        } else {
            let _: () = redis::cmd("SWAPDB").arg(0).arg(9).query(&mut c).unwrap();
        }
        assert!(w.join().unwrap().is_some(), "{how}");
        assert_eq!(lock::info(&mut c, "k").unwrap().owner, "w", "{how}");
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    }

    // SET over the lock key: the name now holds a string; waiters are told.
    acquire(&mut c, "k", "holder", 60_000).unwrap();
    let w = spawn_waiter(&s, "k", "w", 10_000, 0);
    wait_key_waiters(&mut c, "k", 1);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("text")
        .query(&mut c)
        .unwrap();
    let err = w.join().unwrap_err();
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
    wait_key_waiters(&mut c, "k", 1);
    release(&mut c, "k", "first");
    let token = w.join().unwrap().unwrap();
    drop(c);
    s.kill9();
    s.restart();
    let mut c = s.conn();
    let i = lock::info(&mut c, "k").unwrap();
    assert_eq!((i.owner.as_str(), i.holds, i.token), ("second", 1, token));
}

#[test]
fn thousands_of_waiters_on_one_key_are_served_in_order() {
    const N: usize = 2000;
    let s = Server::config().arg("maxclients", "10000").start();
    let mut c = s.conn();
    acquire(&mut c, "k", "gate", 600_000).unwrap();
    let mut raws: Vec<Raw> = (0..N).map(|_| Raw::new(&s)).collect();
    for (i, r) in raws.iter_mut().enumerate() {
        r.send(&[
            "LOCK.ACQUIRE",
            "k",
            &format!("w{i}"),
            "300000",
            "WAIT",
            "600000",
        ]);
    }
    wait_key_waiters(&mut c, "k", N as i64);
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
        assert_eq!(
            lock::info(&mut c, "k").unwrap().owner,
            format!("w{i}"),
            "FIFO"
        );
        r.send(&["LOCK.RELEASE", "k", &format!("w{i}")]);
        assert_eq!(r.line(), ":0");
    }
    assert_eq!(lock::info(&mut c, "k"), None);
    assert_eq!(stat(&mut c, "handoffs"), N as i64);
}

#[test]
fn waiters_spread_over_thousands_of_keys_get_their_locks_when_leases_expire() {
    const N: usize = 2000;
    let s = Server::config().arg("maxclients", "10000").start();
    let mut c = s.conn();
    // Held for long while the 2000 clients connect and queue (that takes
    // what it takes on this machine) ...
    let mut p = redis::pipe();
    for i in 0..N {
        p.cmd("LOCK.ACQUIRE")
            .arg(format!("k{i}"))
            .arg("crashed")
            .arg(600_000);
    }
    let _: Vec<Option<i64>> = p.query(&mut c).unwrap();
    let mut raws: Vec<Raw> = (0..N).map(|_| Raw::new(&s)).collect();
    for (i, r) in raws.iter_mut().enumerate() {
        r.send(&[
            "LOCK.ACQUIRE",
            &format!("k{i}"),
            "next",
            "300000",
            "WAIT",
            "600000",
        ]);
    }
    wait_waiters(&mut c, N as i64);
    // ... then the last renewals before the crash: deadlines spread over
    // 300 ms, half a second from now; nobody renews after them.
    let mut p = redis::pipe();
    for i in 0..N {
        p.cmd("LOCK.RENEW")
            .arg(format!("k{i}"))
            .arg("crashed")
            .arg(500 + (i % 300) as u64);
    }
    let renewed: Vec<i64> = p.query(&mut c).unwrap();
    assert!(renewed.iter().all(|r| *r == 1));
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
    acquire(&mut c, "k", "holder", 600_000).unwrap();
    let a = spawn_waiter(&s, "k", "a", 1000, 0);
    let b = spawn_waiter(&s, "k2", "b", 1000, 200);
    wait_key_waiters(&mut c, "k", 1);
    assert_eq!(
        stat(&mut c, "waiters"),
        1,
        "a wait on a free key does not block"
    );
    assert!(b.join().unwrap().is_some());
    release(&mut c, "k", "holder");
    a.join().unwrap();
    assert_eq!(stat(&mut c, "waiters"), 0);
}
