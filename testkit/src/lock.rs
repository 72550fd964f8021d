//! Typed calls of the lock commands for the integration tests: one place
//! that sends them and parses their replies; clients that wait in the
//! server's queue; leases granted with the window of their deadline, and
//! checking that they expire in it.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, RedisResult, Value};

use crate::{wait_for, Server, EXPIRY_SLACK, PATIENCE};

/// What `LOCK.INFO` says about a held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: String,
    pub holds: i64,
    pub ttl: i64,
    pub token: i64,
    pub waiters: i64,
}

/// `LOCK.ACQUIRE key owner ttl`: the token, or None when held by another.
pub fn acquire(c: &mut impl ConnectionLike, key: &str, owner: &str, ttl: u64) -> Option<i64> {
    redis::cmd("LOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(c)
        .expect("LOCK.ACQUIRE")
}

/// `LOCK.RENEW key owner ttl`: 1 or 0.
pub fn renew(c: &mut impl ConnectionLike, key: &str, owner: &str, ttl: u64) -> i64 {
    redis::cmd("LOCK.RENEW")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(c)
        .expect("LOCK.RENEW")
}

/// `LOCK.RELEASE key owner`: the remaining holds, or None when not held.
pub fn release(c: &mut impl ConnectionLike, key: &str, owner: &str) -> Option<i64> {
    redis::cmd("LOCK.RELEASE")
        .arg(key)
        .arg(owner)
        .query(c)
        .expect("LOCK.RELEASE")
}

/// `LOCK.FORCERELEASE key`: 1 or 0.
pub fn force_release(c: &mut impl ConnectionLike, key: &str) -> i64 {
    redis::cmd("LOCK.FORCERELEASE")
        .arg(key)
        .query(c)
        .expect("LOCK.FORCERELEASE")
}

/// `LOCK.INFO key`, RESP2 or RESP3; checks the documented field order.
pub fn info(c: &mut impl ConnectionLike, key: &str) -> Option<LockInfo> {
    let v: Value = redis::cmd("LOCK.INFO")
        .arg(key)
        .query(c)
        .expect("LOCK.INFO");
    let pairs: Vec<(Value, Value)> = match v {
        Value::Nil => return None,
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
        other => panic!("unexpected LOCK.INFO reply {other:?}"),
    };
    let names: Vec<String> = pairs
        .iter()
        .map(|(n, _)| redis::from_redis_value_ref(n).expect("field name"))
        .collect();
    if names.first().map(String::as_str) == Some("mode") {
        // A shared or semaphore key (see testkit::family for those shapes).
        panic!("LOCK.INFO {key}: not an exclusive lock: {names:?}");
    }
    assert_eq!(names, ["owner", "holds", "ttl", "token", "waiters", "mode"]);
    let mode: String = redis::from_redis_value_ref(&pairs[5].1).expect("mode");
    assert_eq!(mode, "exclusive");
    let int =
        |i: usize| -> i64 { redis::from_redis_value_ref(&pairs[i].1).expect("integer field") };
    Some(LockInfo {
        owner: redis::from_redis_value_ref(&pairs[0].1).expect("owner"),
        holds: int(1),
        ttl: int(2),
        token: int(3),
        waiters: int(4),
    })
}

/// (owner, holds, token) of a held lock, None when free: what most checks
/// compare (the ttl changes from one look to the next).
pub fn held(c: &mut impl ConnectionLike, key: &str) -> Option<(String, i64, i64)> {
    info(c, key).map(|i| (i.owner, i.holds, i.token))
}

/// How many clients wait on `key` (`LOCK.INFO`; 0 when the key is free).
pub fn key_waiters(c: &mut impl ConnectionLike, key: &str) -> i64 {
    info(c, key).map_or(0, |i| i.waiters)
}

/// `DEBUG DIGEST-VALUE key` (covers owner, holds, token and deadline).
pub fn digest(c: &mut impl ConnectionLike, key: &str) -> Value {
    redis::cmd("DEBUG")
        .arg("DIGEST-VALUE")
        .arg(key)
        .query(c)
        .expect("DEBUG DIGEST-VALUE")
}

/// Whether the key exists at all (also an expired lock not yet removed).
pub fn exists(c: &mut impl ConnectionLike, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(c)
        .expect("EXISTS")
        == 1
}

/// One `lock_<field>` counter of `INFO lock`.
pub fn stat(c: &mut redis::Connection, field: &str) -> i64 {
    crate::info_int(c, "lock", &format!("lock_{field}"))
}

/// Waits until `INFO lock` counts `n` expiries, then checks it counts no
/// more. A lease that has passed is hidden from every read at once, but the
/// expiry timer removes it (and counts it) a moment later: a test that saw
/// a holder vanish from `LOCK.INFO` must wait for the count.
pub fn wait_expired(c: &mut redis::Connection, n: i64) {
    wait_for(&format!("{n} expiries to be counted"), PATIENCE, || {
        (stat(c, "expired") >= n).then_some(())
    });
    assert_eq!(stat(c, "expired"), n, "expiries counted");
}

/// Waits until `INFO lock` counts `n` waiting clients on the server.
pub fn wait_waiters(c: &mut redis::Connection, n: i64) {
    wait_for(&format!("{n} waiter(s)"), PATIENCE, || {
        (stat(c, "waiters") == n).then_some(())
    });
}

/// Waits until `LOCK.INFO key` counts `n` waiters on `key`.
pub fn wait_key_waiters(c: &mut impl ConnectionLike, key: &str, n: i64) {
    wait_for(&format!("{n} waiters on {key}"), PATIENCE, || {
        (key_waiters(c, key) == n).then_some(())
    });
}

/// Waits until `key` no longer exists (deleted, not only hidden from reads).
pub fn wait_gone(c: &mut impl ConnectionLike, key: &str) {
    wait_for(&format!("{key} to be deleted"), PATIENCE, || {
        (!exists(c, key)).then_some(())
    });
}

/// A client in `LOCK.ACQUIRE key owner ttl WAIT wait-ms` on its own
/// connection and thread (see [`spawn_waiter`]).
pub struct Waiter {
    id: Option<i64>,
    thread: JoinHandle<(RedisResult<Option<i64>>, Duration)>,
}

impl Waiter {
    /// Its `CLIENT ID` (for `CLIENT KILL ID`, `CLIENT UNBLOCK`); known for
    /// waiters started by [`spawn_waiter`].
    pub fn client_id(&self) -> i64 {
        self.id
            .expect("client id known only for waiters from spawn_waiter")
    }

    /// Whether it has its answer already.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Its answer: the token when granted, nil when the wait timed out (or
    /// `CLIENT UNBLOCK`), or an error (`-UNBLOCKED`, a killed connection).
    pub fn join(self) -> RedisResult<Option<i64>> {
        self.join_timed().0
    }

    /// Its answer, and how long it waited for it (from just before the
    /// command was sent).
    pub fn join_timed(self) -> (RedisResult<Option<i64>>, Duration) {
        self.thread.join().expect("waiter thread panicked")
    }
}

/// Starts a client that sends `LOCK.ACQUIRE key owner ttl WAIT wait_ms` to
/// `server` on a new connection, in a thread. Its connection gives the
/// server [`PATIENCE`] beyond `wait_ms` to answer.
pub fn spawn_waiter(server: &Server, key: &str, owner: &str, ttl: u64, wait_ms: u64) -> Waiter {
    let mut c = server.conn();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut c)
        .expect("CLIENT ID");
    let wait = if wait_ms == 0 {
        // Without a limit: until the test hands it the lock or ends it.
        5 * PATIENCE
    } else {
        Duration::from_millis(wait_ms) + PATIENCE
    };
    c.set_read_timeout(Some(wait)).expect("read timeout");
    let mut w = spawn_waiter_on(c, key, owner, ttl, wait_ms);
    w.id = Some(id);
    w
}

/// [`spawn_waiter`] on a connection the caller made (a cluster connection,
/// say).
pub fn spawn_waiter_on(
    mut c: impl ConnectionLike + Send + 'static,
    key: &str,
    owner: &str,
    ttl: u64,
    wait_ms: u64,
) -> Waiter {
    let (key, owner) = (key.to_string(), owner.to_string());
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        let r = redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(ttl)
            .arg("WAIT")
            .arg(wait_ms)
            .query(&mut c);
        (r, start.elapsed())
    });
    Waiter { id: None, thread }
}

/// A lease the test was granted, with the window its absolute deadline lies
/// in (the server set it to `now + ttl` at some moment between the send and
/// the answer).
#[derive(Clone, Debug)]
pub struct TimedLease {
    pub key: String,
    pub token: i64,
    /// Send time + ttl: the deadline is not before it.
    pub earliest: Instant,
    /// Answer time + ttl: the deadline is not after it.
    pub latest: Instant,
}

/// `LOCK.ACQUIRE key owner ttl_ms` (must be granted), timed.
pub fn grant_timed(c: &mut impl ConnectionLike, key: &str, owner: &str, ttl_ms: u64) -> TimedLease {
    let ttl = Duration::from_millis(ttl_ms);
    let sent = Instant::now();
    let token = acquire(c, key, owner, ttl_ms).unwrap_or_else(|| panic!("{key} not granted"));
    TimedLease {
        key: key.to_string(),
        token,
        earliest: sent + ttl,
        latest: Instant::now() + ttl,
    }
}

/// Polls until every lease's key is gone from the server behind `c`. None
/// may go before its earliest deadline (less 50 ms for the server's
/// millisecond clock). Each must go within [`EXPIRY_SLACK`] of its latest
/// deadline — or of this call, for a deadline that passed before it (a
/// server that could only expire it from now on, like a replica promoted
/// late).
pub fn expect_expiry(c: &mut impl ConnectionLike, leases: &[TimedLease]) {
    let watching_since = Instant::now();
    let mut pending: Vec<&TimedLease> = leases.iter().collect();
    while !pending.is_empty() {
        let mut left = Vec::new();
        for lease in pending {
            let asked = Instant::now();
            let there = exists(c, &lease.key);
            let answered = Instant::now();
            if there {
                // Still there when the server answered, so at `asked` too.
                let due = lease.latest.max(watching_since);
                assert!(
                    asked < due + EXPIRY_SLACK,
                    "{} outlived its lease: still there {:?} after it was due",
                    lease.key,
                    asked - due
                );
                left.push(lease);
            } else {
                // Gone when the server answered, so by `answered`.
                assert!(
                    answered + Duration::from_millis(50) >= lease.earliest,
                    "{} expired {:?} early",
                    lease.key,
                    lease.earliest - answered
                );
            }
        }
        pending = left;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
