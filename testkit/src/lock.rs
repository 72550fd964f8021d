//! Typed calls of the lock commands for the integration tests: one place
//! that sends them and parses their replies.

use redis::{ConnectionLike, Value};

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
    assert_eq!(names, ["owner", "holds", "ttl", "token", "waiters"]);
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
