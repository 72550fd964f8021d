//! The calls that look at and clear a lock, and the shorthand acquire,
//! against a real server: `info`, `is_locked` and `hold_count` over RESP2
//! and RESP3, `force_release`, `try_acquire`, and the guard's `remaining`.

mod common;

use std::time::Duration;

use common::{admin, info, lock_stat, ms, until_info};
use fencelock_client::{AcquireOptions, Client, LeaseLost, Wait};
use redis::aio::ConnectionManager;
use redis::Value;
use testkit::{Server, PATIENCE};
use tokio::time::{sleep, timeout, Instant};

fn ttl(n: u64) -> AcquireOptions {
    AcquireOptions::new().ttl(ms(n))
}

/// A lease renewed every 200 ms that still survives a renewal taking 2.5 s
/// on a slow, loaded machine: the local deadline is 2.7 s after each
/// confirmed send.
fn sturdy() -> AcquireOptions {
    ttl(3_000).renew_every(ms(200))
}

fn url(server: &Server, resp3: bool) -> String {
    if resp3 {
        format!("{}?protocol=resp3", server.url())
    } else {
        server.url()
    }
}

/// A client that speaks RESP3 or RESP2.
async fn client_in(server: &Server, resp3: bool) -> Client<ConnectionManager> {
    Client::connect(url(server, resp3))
        .await
        .expect("connect client")
}

/// `LOCK.INFO key` as it comes over a connection in that protocol.
async fn raw_info(server: &Server, resp3: bool, key: &str) -> Value {
    let mut conn = redis::Client::open(url(server, resp3))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    redis::cmd("LOCK.INFO")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("LOCK.INFO")
}

/// Asserts that a remaining `ttl` reported after `elapsed` (measured around
/// the grant and the read) fits a lease of `full`: at most `full`, and at
/// least `full − elapsed` (with a second's slack for rounding and clocks).
fn assert_ttl_fits(ttl: Duration, full: Duration, elapsed: Duration) {
    assert!(ttl <= full, "ttl {ttl:?} above the lease of {full:?}");
    assert!(
        ttl + elapsed + Duration::from_secs(1) >= full,
        "ttl {ttl:?} of {full:?} after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_locked_and_hold_count_follow_the_lock_over_resp2_and_resp3() {
    let server = Server::start();
    let mut admin = admin(&server).await;
    for resp3 in [false, true] {
        let key = if resp3 { "job:resp3" } else { "job:resp2" };
        let client = client_in(&server, resp3).await;
        let other = client_in(&server, !resp3).await;
        let lock = client.lock(key);
        let stranger = other.lock(key);
        assert_eq!(lock.info().await.unwrap(), None);
        assert!(!lock.is_locked().await.unwrap());
        assert_eq!(lock.hold_count().await.unwrap(), 0);

        let full = Duration::from_secs(30);
        let before = Instant::now();
        let outer = lock.acquire(ttl(30_000)).await.unwrap().expect("granted");
        let inner = lock.acquire(ttl(30_000)).await.unwrap().expect("re-entry");
        let shown = lock.info().await.unwrap().expect("held");
        assert_ttl_fits(shown.ttl, full, before.elapsed());
        assert_eq!(shown.owner, lock.owner());
        assert_eq!(
            (shown.holds, shown.token, shown.waiters),
            (2, outer.token(), 0)
        );
        // The reply really came in the protocol's own shape.
        let raw = raw_info(&server, resp3, key).await;
        if resp3 {
            assert!(matches!(raw, Value::Map(_)), "RESP3 reply {raw:?}");
        } else {
            assert!(matches!(raw, Value::Array(_)), "RESP2 reply {raw:?}");
        }
        // An independent reading agrees.
        let seen = info(&mut admin, key).await.expect("held");
        assert_eq!(
            (seen.owner.as_str(), seen.holds, seen.token),
            (lock.owner(), 2, outer.token())
        );
        assert!(lock.is_locked().await.unwrap());
        assert!(stranger.is_locked().await.unwrap());
        assert_eq!(lock.hold_count().await.unwrap(), 2);
        assert_eq!(stranger.hold_count().await.unwrap(), 0);

        // A waiter shows in the info.
        let queued = tokio::spawn({
            let stranger = stranger.clone();
            async move {
                stranger
                    .acquire(ttl(30_000).wait(Wait::For(PATIENCE)))
                    .await
            }
        });
        until_info(&mut admin, key, "the waiter to queue", PATIENCE, |i| {
            i.as_ref().is_some_and(|i| i.waiters == 1)
        })
        .await;
        assert_eq!(lock.info().await.unwrap().expect("held").waiters, 1);

        assert!(inner.release().await.unwrap());
        assert_eq!(lock.hold_count().await.unwrap(), 1);
        assert!(outer.release().await.unwrap());
        let handed = timeout(PATIENCE, queued)
            .await
            .expect("hand-off")
            .unwrap()
            .unwrap()
            .expect("granted");
        assert_eq!(lock.hold_count().await.unwrap(), 0);
        assert_eq!(stranger.hold_count().await.unwrap(), 1);
        let now = lock.info().await.unwrap().expect("held by the waiter");
        assert_eq!(
            (now.owner.as_str(), now.token, now.waiters),
            (stranger.owner(), handed.token(), 0)
        );
        assert!(handed.release().await.unwrap());
        assert!(!lock.is_locked().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_frees_the_lock_and_the_holder_learns_it() {
    let server = Server::start();
    let client = common::client(&server).await;
    let operator = common::client(&server).await;
    let mut admin = admin(&server).await;
    let lock = client.lock("job");

    // Through another handle: the holder's watchdog finds out at its next
    // renewal.
    let guard = lock.acquire(sturdy()).await.unwrap().expect("granted");
    assert!(operator.lock("job").force_release().await.unwrap());
    assert_eq!(info(&mut admin, "job").await, None);
    let reason = timeout(PATIENCE, guard.lost())
        .await
        .expect("lost() at the next renewal");
    assert_eq!(reason, LeaseLost::NotHeld);
    assert!(!guard.release().await.unwrap());

    // Through the holding handle: its guard knows at once, and sends nothing.
    let guard = lock
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("free again");
    assert!(lock.force_release().await.unwrap());
    assert!(guard.is_lost());
    assert_eq!(guard.lost().await, LeaseLost::NotHeld);
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert!(
        !lock.force_release().await.unwrap(),
        "nothing left to remove"
    );
    assert!(!guard.release().await.unwrap());
    assert_eq!(lock_stat(&mut admin, "lock_forced_releases").await, 2);
    assert_eq!(lock_stat(&mut admin, "lock_releases").await, 0);

    // With a waiter: the server hands the lock to it.
    let held = lock
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("free again");
    let waiter = operator.lock("job");
    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire(ttl(30_000).wait(Wait::For(PATIENCE))).await }
    });
    until_info(&mut admin, "job", "the waiter to queue", PATIENCE, |i| {
        i.as_ref().is_some_and(|i| i.waiters == 1)
    })
    .await;
    assert!(operator.lock("job").force_release().await.unwrap());
    let handed = timeout(PATIENCE, queued)
        .await
        .expect("hand-off on force-release")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert!(handed.token() > held.token());
    // The old holder's release cannot take it from the new one.
    assert!(!held.release().await.unwrap());
    assert_eq!(waiter.hold_count().await.unwrap(), 1);
    assert!(handed.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_takes_a_free_lock_with_the_defaults_and_never_queues() {
    let server = Server::start();
    let client = common::client(&server).await;
    let other = common::client(&server).await;
    let mut admin = admin(&server).await;

    let before = Instant::now();
    let guard = client
        .lock("job")
        .try_acquire()
        .await
        .unwrap()
        .expect("free");
    let held = info(&mut admin, "job").await.expect("held");
    let shown = Duration::from_millis(u64::try_from(held.ttl_ms).unwrap());
    assert_ttl_fits(shown, AcquireOptions::DEFAULT_TTL, before.elapsed());
    assert_eq!(held.token, guard.token());

    let stranger = other.lock("job");
    assert!(stranger.try_acquire().await.unwrap().is_none());
    assert_eq!(lock_stat(&mut admin, "lock_denied").await, 1);
    assert_eq!(info(&mut admin, "job").await.expect("held").waiters, 0);
    assert_eq!(lock_stat(&mut admin, "lock_wait_timeouts").await, 0);

    assert!(guard.release().await.unwrap());
    let next = stranger.try_acquire().await.unwrap().expect("free now");
    assert!(next.token() > held.token);
    assert!(next.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_is_moved_forward_by_the_renewals_and_zero_once_lost() {
    let server = Server::start();
    let client = common::client(&server).await;
    let lock = client.lock("job");
    let confirmed_for = ms(2_700);
    let guard = lock.acquire(sturdy()).await.unwrap().expect("granted");
    let start = Instant::now();
    while start.elapsed() < confirmed_for + ms(300) {
        let left = guard.remaining();
        assert!(left <= confirmed_for, "remaining {left:?}");
        sleep(ms(50)).await;
    }
    // Past the first deadline: only confirmed renewals keep it above zero.
    assert!(!guard.is_lost());
    assert!(guard.remaining() > Duration::ZERO);
    assert!(guard.remaining() <= confirmed_for);

    assert!(lock.force_release().await.unwrap());
    assert_eq!(guard.remaining(), Duration::ZERO);
}
