//! Helpers shared by the client's integration tests: an async admin
//! connection to look at locks, polling, and the paths of the examples.
#![allow(dead_code)]

use std::time::Duration;

use fencelock_client::Client;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use testkit::Server;

/// `LOCK.INFO` of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: String,
    pub holds: i64,
    pub ttl_ms: i64,
    pub token: u64,
    pub waiters: i64,
}

/// A lock client for `server` (what applications get from `Client::connect`).
pub async fn client(server: &Server) -> Client<ConnectionManager> {
    Client::connect(server.url()).await.expect("connect client")
}

/// A plain async connection for looking at and poking locks.
pub async fn admin(server: &Server) -> MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

/// `LOCK.INFO key` of an exclusive lock, parsed (RESP2 flat array).
pub async fn info(conn: &mut MultiplexedConnection, key: &str) -> Option<LockInfo> {
    let reply: Option<Vec<redis::Value>> = redis::cmd("LOCK.INFO")
        .arg(key)
        .query_async(conn)
        .await
        .expect("LOCK.INFO");
    let fields = reply?;
    let mut info = LockInfo {
        owner: String::new(),
        holds: -1,
        ttl_ms: -1,
        token: 0,
        waiters: -1,
    };
    for pair in fields.chunks(2) {
        let name: String = redis::from_redis_value(pair[0].clone()).expect("field name");
        let value = pair[1].clone();
        match name.as_str() {
            "owner" => info.owner = redis::from_redis_value(value).expect("owner"),
            "holds" => info.holds = redis::from_redis_value(value).expect("holds"),
            "ttl" => info.ttl_ms = redis::from_redis_value(value).expect("ttl"),
            "token" => info.token = redis::from_redis_value(value).expect("token"),
            "waiters" => info.waiters = redis::from_redis_value(value).expect("waiters"),
            // The lock family's servers name the mode; this reads only the
            // exclusive shape.
            "mode" => {
                let mode: String = redis::from_redis_value(value).expect("mode");
                assert_eq!(
                    mode, "exclusive",
                    "LOCK.INFO {key} is not an exclusive lock"
                );
            }
            other => panic!("LOCK.INFO has an unknown field {other}"),
        }
    }
    Some(info)
}

/// `LOCK.FORCERELEASE key`.
pub async fn force_release(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LOCK.FORCERELEASE")
        .arg(key)
        .query_async(conn)
        .await
        .expect("LOCK.FORCERELEASE")
}

/// One integer field of `INFO lock`.
pub async fn lock_stat(conn: &mut MultiplexedConnection, field: &str) -> i64 {
    let text: String = redis::cmd("INFO")
        .arg("lock")
        .query_async(conn)
        .await
        .expect("INFO lock");
    testkit::info_field(&text, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO lock has no field {field}:\n{text}"))
}

/// Polls `LOCK.INFO key` every 10 ms until `check` accepts it, or panics
/// after `timeout`; returns the accepted value.
pub async fn until_info(
    conn: &mut MultiplexedConnection,
    key: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Option<LockInfo>) -> bool,
) -> Option<LockInfo> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = info(conn, key).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; LOCK.INFO {key}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
