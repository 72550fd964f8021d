//! Sentinel: redis-sentinel watches a master and a replica (both with the
//! module). After Sentinel fails over from a `kill -9`ed master, the locks,
//! their leases and the token guarantee hold on the new master.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use redis::Connection;
use testkit::lock::{self, acquire};
use testkit::multi::Sentinel;
use testkit::{wait_for, Server};

/// (owner, holds, token) of a key, None when free.
fn info(c: &mut Connection, key: &str) -> Option<(String, i64, i64)> {
    lock::info(c, key).map(|i| (i.owner, i.holds, i.token))
}

#[test]
fn locks_leases_and_tokens_survive_a_sentinel_failover() {
    let mut master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let sentinel = Sentinel::start(&master, 1);
    assert_eq!(sentinel.master_port(), Some(master.port));

    let mut m = master.conn();
    let long = acquire(&mut m, "orders", "app-1", 60_000).unwrap();
    acquire(&mut m, "orders", "app-1", 60_000).unwrap();
    acquire(&mut m, "short", "app-2", 4_000).unwrap();
    let mut highest = long;
    for i in 0..20 {
        highest = highest.max(acquire(&mut m, &format!("k{i}"), "x", 60_000).unwrap());
    }
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut m).unwrap();
    assert_eq!(acked, 1);
    drop(m);

    master.kill9();
    sentinel.wait_master(&replica, Duration::from_secs(40));

    let mut r = replica.conn();
    // The lock is there with its holder, hold count and token.
    assert_eq!(info(&mut r, "orders"), Some(("app-1".to_string(), 2, long)));
    // Its lease is enforced by the new master: the short one expires.
    wait_for(
        "the short lease to expire on the new master",
        Duration::from_secs(10),
        || {
            let n: i64 = redis::cmd("EXISTS").arg("short").query(&mut r).unwrap();
            (n == 0).then_some(())
        },
    );
    // Holders keep renewing on the new master.
    let renewed: i64 = redis::cmd("LOCK.RENEW")
        .arg("orders")
        .arg("app-1")
        .arg(60_000)
        .query(&mut r)
        .unwrap();
    assert_eq!(renewed, 1);
    // New grants get larger tokens than any the old master issued.
    let fresh = acquire(&mut r, "new-key", "app-3", 60_000).unwrap();
    assert!(
        fresh > highest,
        "token {fresh} after failover, {highest} before"
    );
    let _: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("k0")
        .query(&mut r)
        .unwrap();
    let again = acquire(&mut r, "k0", "app-3", 60_000).unwrap();
    assert!(again > fresh);
}
