//! The lock family (read/write locks and semaphores) for the integration
//! tests: typed calls of the `SHARED` and `LIMIT permits [COUNT n]` options,
//! `RELEASE ... COUNT n` and `FORCERELEASE key owner`; the three shapes of
//! `LOCK.INFO`, parsed in RESP2 and RESP3 with their field order checked;
//! the documented error messages; clients waiting in the queue with any
//! kind of request; and per-holder leases checked to expire in their window.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, RedisError, RedisResult, Value};

use crate::lock::TimedLease;
use crate::{wait_for, Server, EXPIRY_SLACK, PATIENCE};

/// `COUNT` without `LIMIT`, `SHARED` with `LIMIT`, a repeated option.
pub const SYNTAX_ERROR: &str = "ERR syntax error: options are SHARED, LIMIT permits [COUNT n], WAIT timeout-ms and ID request-id, each once, SHARED and LIMIT not together";
/// `LIMIT` out of 1 ..= 1000000 or not an integer.
pub const LIMIT_ERROR: &str = "ERR LIMIT permits must be an integer from 1 to 1000000";
/// `COUNT` out of 1 ..= the LIMIT or not an integer.
pub const COUNT_ERROR: &str = "ERR COUNT n must be an integer from 1 to the LIMIT";
/// A shared-only holder asking for the exclusive lock.
pub const UPGRADE_ERROR: &str = "ERR the owner holds this lock shared: upgrading to exclusive would deadlock when two readers try; release the shared holds first";
/// A `LIMIT` request on a read/write lock.
pub const NOT_A_SEMAPHORE: &str =
    "WRONGTYPE the key holds a read/write lock, not a semaphore: acquire it without LIMIT";

/// Any request but `LIMIT <permits>` on a semaphore of `permits`.
pub fn semaphore_error(permits: u64) -> String {
    format!(
        "WRONGTYPE the key holds a semaphore of {permits} permits: acquire it with LIMIT {permits}"
    )
}

/// `RELEASE ... COUNT n` with `n` above the `held` holds or permits.
pub fn release_count_error(held: i64) -> String {
    format!("ERR COUNT is more than the owner holds ({held}); nothing changed")
}

/// The whole text of a server's error reply: code, a space, the message
/// (`ERR syntax error ...`), as a client would show it.
pub fn error_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => panic!("not an error reply from the server: {e}"),
    }
}

/// What an acquire asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No option: the exclusive (write) lock.
    Exclusive,
    /// `SHARED`: a read lock.
    Shared,
    /// `LIMIT limit COUNT count`.
    Permits { limit: u64, count: u64 },
}

impl Kind {
    /// `LIMIT limit COUNT count`.
    pub fn permits(limit: u64, count: u64) -> Kind {
        Kind::Permits { limit, count }
    }

    /// The option words after `ttl-ms`.
    pub fn args(self) -> Vec<String> {
        match self {
            Kind::Exclusive => Vec::new(),
            Kind::Shared => vec!["SHARED".into()],
            Kind::Permits { limit, count } => vec![
                "LIMIT".into(),
                limit.to_string(),
                "COUNT".into(),
                count.to_string(),
            ],
        }
    }
}

/// `LOCK.ACQUIRE key owner ttl [options]`, the reply as it came.
pub fn try_acquire(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    ttl: u64,
    kind: Kind,
) -> RedisResult<Option<i64>> {
    redis::cmd("LOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .arg(kind.args())
        .query(c)
}

/// `LOCK.ACQUIRE key owner ttl SHARED`: the token, or None when not granted.
pub fn acquire_shared(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    ttl: u64,
) -> Option<i64> {
    try_acquire(c, key, owner, ttl, Kind::Shared).expect("LOCK.ACQUIRE SHARED")
}

/// `LOCK.ACQUIRE key owner ttl LIMIT limit COUNT count`: the token, or None
/// when not granted.
pub fn acquire_permits(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    ttl: u64,
    limit: u64,
    count: u64,
) -> Option<i64> {
    try_acquire(c, key, owner, ttl, Kind::permits(limit, count)).expect("LOCK.ACQUIRE LIMIT")
}

/// A `LOCK.ACQUIRE` that must fail: the text of its error.
pub fn acquire_error(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    ttl: u64,
    kind: Kind,
) -> String {
    match try_acquire(c, key, owner, ttl, kind) {
        Ok(r) => panic!("LOCK.ACQUIRE {key} {owner} {kind:?} answered {r:?}, not an error"),
        Err(e) => error_text(&e),
    }
}

/// `LOCK.RELEASE key owner COUNT n`, the reply as it came.
pub fn try_release_count(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    n: u64,
) -> RedisResult<Option<i64>> {
    redis::cmd("LOCK.RELEASE")
        .arg(key)
        .arg(owner)
        .arg("COUNT")
        .arg(n)
        .query(c)
}

/// `LOCK.RELEASE key owner COUNT n`: what the owner still holds, None when
/// it held nothing.
pub fn release_count(c: &mut impl ConnectionLike, key: &str, owner: &str, n: u64) -> Option<i64> {
    try_release_count(c, key, owner, n).expect("LOCK.RELEASE COUNT")
}

/// `LOCK.FORCERELEASE key owner`: 1 or 0.
pub fn force_release_owner(c: &mut impl ConnectionLike, key: &str, owner: &str) -> i64 {
    redis::cmd("LOCK.FORCERELEASE")
        .arg(key)
        .arg(owner)
        .query(c)
        .expect("LOCK.FORCERELEASE key owner")
}

/// One holder of a key as `LOCK.INFO` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    /// `holds` (exclusive and shared shapes) or `permits` (semaphore).
    pub amount: i64,
    pub ttl: i64,
    pub token: i64,
}

/// `LOCK.INFO` of a held key, one variant per documented shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Info {
    /// `owner holds ttl token waiters mode=exclusive`.
    Exclusive { holder: Holder, waiters: i64 },
    /// `mode=shared waiters holders`.
    Shared { waiters: i64, holders: Vec<Holder> },
    /// `mode=semaphore limit available waiters holders`.
    Semaphore {
        limit: i64,
        available: i64,
        waiters: i64,
        holders: Vec<Holder>,
    },
}

impl Info {
    /// `exclusive`, `shared` or `semaphore`.
    pub fn mode(&self) -> &'static str {
        match self {
            Info::Exclusive { .. } => "exclusive",
            Info::Shared { .. } => "shared",
            Info::Semaphore { .. } => "semaphore",
        }
    }

    pub fn waiters(&self) -> i64 {
        match self {
            Info::Exclusive { waiters, .. }
            | Info::Shared { waiters, .. }
            | Info::Semaphore { waiters, .. } => *waiters,
        }
    }

    /// Every holder, oldest grant first (the exclusive holder alone).
    pub fn holders(&self) -> Vec<Holder> {
        match self {
            Info::Exclusive { holder, .. } => vec![holder.clone()],
            Info::Shared { holders, .. } | Info::Semaphore { holders, .. } => holders.clone(),
        }
    }

    /// (owner, holds or permits, token) of every holder, oldest first: what
    /// most checks compare (the ttl changes from one look to the next).
    pub fn held(&self) -> Vec<(String, i64, i64)> {
        self.holders()
            .into_iter()
            .map(|h| (h.owner, h.amount, h.token))
            .collect()
    }

    /// The holder `owner`, if it holds the key.
    pub fn holder(&self, owner: &str) -> Option<Holder> {
        self.holders().into_iter().find(|h| h.owner == owner)
    }
}

/// The (name, value) pairs of a RESP3 map or a RESP2 flat array.
fn fields(v: &Value) -> Vec<(String, Value)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(pairs) => pairs.clone(),
        Value::Array(items) => {
            assert!(
                items.len().is_multiple_of(2),
                "a flat field/value array has an even length: {v:?}"
            );
            items
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect()
        }
        other => panic!("expected a map or a flat array, got {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(n, v)| (redis::from_redis_value_ref(&n).expect("field name"), v))
        .collect()
}

/// The fields of `v` in exactly the order `names`, or a panic saying what
/// came instead.
fn expect_fields(v: &Value, names: &[&str]) -> Vec<Value> {
    let f = fields(v);
    let got: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names, "LOCK.INFO fields (in this order) of {v:?}");
    f.into_iter().map(|(_, v)| v).collect()
}

fn int(v: &Value, what: &str) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("{what} must be an integer reply, got {other:?}"),
    }
}

fn text(v: &Value, what: &str) -> String {
    match v {
        Value::BulkString(_) | Value::SimpleString(_) => {
            redis::from_redis_value_ref(v).expect("a string")
        }
        other => panic!("{what} must be a string reply, got {other:?}"),
    }
}

fn holders(v: &Value, amount: &str) -> Vec<Holder> {
    let Value::Array(items) = v else {
        panic!("holders must be an array, got {v:?}")
    };
    items
        .iter()
        .map(|h| {
            let f = expect_fields(h, &["owner", amount, "ttl", "token"]);
            Holder {
                owner: text(&f[0], "owner"),
                amount: int(&f[1], amount),
                ttl: int(&f[2], "ttl"),
                token: int(&f[3], "token"),
            }
        })
        .collect()
}

/// Parses a `LOCK.INFO` reply (RESP2 or RESP3), checking the field names,
/// their order and their types for the shape its `mode` names; None for nil.
pub fn parse_info(v: &Value) -> Option<Info> {
    if *v == Value::Nil {
        return None;
    }
    let f = fields(v);
    let mode = f
        .iter()
        .find(|(n, _)| n == "mode")
        .map(|(_, m)| text(m, "mode"))
        .unwrap_or_else(|| panic!("LOCK.INFO without a mode field: {v:?}"));
    let info = match mode.as_str() {
        "exclusive" => {
            let f = expect_fields(v, &["owner", "holds", "ttl", "token", "waiters", "mode"]);
            Info::Exclusive {
                holder: Holder {
                    owner: text(&f[0], "owner"),
                    amount: int(&f[1], "holds"),
                    ttl: int(&f[2], "ttl"),
                    token: int(&f[3], "token"),
                },
                waiters: int(&f[4], "waiters"),
            }
        }
        "shared" => {
            let f = expect_fields(v, &["mode", "waiters", "holders"]);
            Info::Shared {
                waiters: int(&f[1], "waiters"),
                holders: holders(&f[2], "holds"),
            }
        }
        "semaphore" => {
            let f = expect_fields(v, &["mode", "limit", "available", "waiters", "holders"]);
            Info::Semaphore {
                limit: int(&f[1], "limit"),
                available: int(&f[2], "available"),
                waiters: int(&f[3], "waiters"),
                holders: holders(&f[4], "permits"),
            }
        }
        other => panic!("unknown LOCK.INFO mode {other:?}: {v:?}"),
    };
    let live = info.holders();
    assert!(!live.is_empty(), "a held key shows its holders: {v:?}");
    for h in &live {
        assert!(
            h.ttl > 0 && h.token > 0 && h.amount > 0,
            "a shown holder has time left, a token and something held: {h:?}"
        );
    }
    Some(info)
}

/// `LOCK.INFO key` parsed (see [`parse_info`]).
pub fn info(c: &mut impl ConnectionLike, key: &str) -> Option<Info> {
    let v: Value = redis::cmd("LOCK.INFO")
        .arg(key)
        .query(c)
        .expect("LOCK.INFO");
    parse_info(&v)
}

/// (owner, holds or permits, token) of every holder of `key`, oldest first;
/// empty when nothing is held.
pub fn held(c: &mut impl ConnectionLike, key: &str) -> Vec<(String, i64, i64)> {
    info(c, key).map(|i| i.held()).unwrap_or_default()
}

/// How many clients wait on `key` (0 when nothing is held).
pub fn key_waiters(c: &mut impl ConnectionLike, key: &str) -> i64 {
    info(c, key).map_or(0, |i| i.waiters())
}

/// Waits until `LOCK.INFO key` counts `n` waiters, whatever its shape.
pub fn wait_key_waiters(c: &mut impl ConnectionLike, key: &str, n: i64) {
    wait_for(&format!("{n} waiters on {key}"), PATIENCE, || {
        (key_waiters(c, key) == n).then_some(())
    });
}

/// `MEMORY USAGE key`.
pub fn memory_usage(c: &mut impl ConnectionLike, key: &str) -> i64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .query(c)
        .expect("MEMORY USAGE")
}

/// A client in `LOCK.ACQUIRE key owner ttl [kind] WAIT wait-ms` on its own
/// connection and thread.
pub struct Waiter {
    id: i64,
    thread: JoinHandle<RedisResult<Option<i64>>>,
}

impl Waiter {
    /// Its `CLIENT ID` (for `CLIENT KILL ID`, `CLIENT UNBLOCK`).
    pub fn client_id(&self) -> i64 {
        self.id
    }

    /// Whether it has its answer already.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Its answer: the token when granted, nil when the wait ended without
    /// a grant, or an error. Expected soon: panics when it has none within
    /// [`PATIENCE`] (a waiter the server forgot to serve fails the test
    /// instead of hanging it).
    pub fn join(self) -> RedisResult<Option<i64>> {
        let thread = &self.thread;
        wait_for(
            &format!("waiter {} to be answered", self.id),
            PATIENCE,
            || thread.is_finished().then_some(()),
        );
        self.thread.join().expect("waiter thread panicked")
    }

    /// Its answer, which must be a grant: the token.
    pub fn granted(self) -> i64 {
        let what = format!("waiter {}", self.id);
        match self.join() {
            Ok(Some(t)) => t,
            other => panic!("{what} was not granted: {other:?}"),
        }
    }
}

/// Starts a client that sends `LOCK.ACQUIRE key owner ttl [kind] WAIT
/// wait_ms` to `server` on a new connection, in a thread. Its connection
/// gives the server [`PATIENCE`] beyond `wait_ms` to answer (5 × PATIENCE for
/// `WAIT 0`).
pub fn spawn_waiter(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: u64,
    kind: Kind,
    wait_ms: u64,
) -> Waiter {
    let mut c = server.conn();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut c)
        .expect("CLIENT ID");
    let wait = if wait_ms == 0 {
        5 * PATIENCE
    } else {
        Duration::from_millis(wait_ms) + PATIENCE
    };
    c.set_read_timeout(Some(wait)).expect("read timeout");
    let (key, owner) = (key.to_string(), owner.to_string());
    let thread = std::thread::spawn(move || {
        redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(owner)
            .arg(ttl)
            .arg(kind.args())
            .arg("WAIT")
            .arg(wait_ms)
            .query(&mut c)
    });
    Waiter { id, thread }
}

/// [`spawn_waiter`], then waits until `LOCK.INFO key` (seen through `c`)
/// counts `queued` waiters: the new one is in the queue, behind the others.
pub fn queue_waiter(
    server: &Server,
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    kind: Kind,
    queued: i64,
) -> Waiter {
    let w = spawn_waiter(server, key, owner, 60_000, kind, 0);
    wait_key_waiters(c, key, queued);
    w
}

/// A `LOCK.ACQUIRE key owner ttl_ms [kind]` that must be granted, timed (see
/// [`TimedLease`]).
pub fn grant_timed(
    c: &mut impl ConnectionLike,
    key: &str,
    owner: &str,
    ttl_ms: u64,
    kind: Kind,
) -> TimedLease {
    let ttl = Duration::from_millis(ttl_ms);
    let sent = Instant::now();
    let token = try_acquire(c, key, owner, ttl_ms, kind)
        .expect("LOCK.ACQUIRE")
        .unwrap_or_else(|| panic!("{key} not granted to {owner}"));
    TimedLease {
        key: key.to_string(),
        token,
        earliest: sent + ttl,
        latest: Instant::now() + ttl,
    }
}

/// Polls until each (owner, lease) has left its key (the lease's `key`, which
/// may be a new name the holder moved to): none before its earliest
/// deadline (less 50 ms for the server's millisecond clock), each within
/// [`EXPIRY_SLACK`] of its latest deadline (or of this call, for a deadline
/// already passed). A holder is identified by owner and token, so a new grant
/// to the same owner does not count as the old one.
pub fn expect_holder_expiry(c: &mut impl ConnectionLike, leases: &[(&str, &TimedLease)]) {
    let watching_since = Instant::now();
    let mut pending: Vec<&(&str, &TimedLease)> = leases.iter().collect();
    while !pending.is_empty() {
        let mut left = Vec::new();
        for entry in pending {
            let (owner, lease) = *entry;
            let asked = Instant::now();
            let there = info(c, &lease.key)
                .and_then(|i| i.holder(owner))
                .is_some_and(|h| h.token == lease.token);
            let answered = Instant::now();
            if there {
                let due = lease.latest.max(watching_since);
                assert!(
                    asked < due + EXPIRY_SLACK,
                    "{owner} on {} outlived its lease: still there {:?} after it was due",
                    lease.key,
                    asked - due
                );
                left.push(entry);
            } else {
                assert!(
                    answered + Duration::from_millis(50) >= lease.earliest,
                    "{owner} on {} expired {:?} early",
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
