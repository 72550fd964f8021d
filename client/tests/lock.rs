//! The client against real redis-server processes with the module: the
//! watchdog, loss detection, re-entry and exclusion, waiting, release on
//! drop, and replica acknowledgement.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{admin, client, force_release, info, lock_stat, ms, until_info};
use fencelock_client::{AcquireOptions, Connection, Error, Guard, LeaseLost, Wait};
use testkit::{Server, PATIENCE};
use tokio::time::{sleep, timeout, Instant};

fn ttl(n: u64) -> AcquireOptions {
    AcquireOptions::new().ttl(ms(n))
}

/// A lease renewed as often as a 600 ms one (every 200 ms) that still
/// survives a renewal taking 2.5 s on a slow, loaded machine.
fn sturdy() -> AcquireOptions {
    ttl(3_000).renew_every(ms(200))
}

/// Runs a scenario with a short lease until it is conclusive, at most 4
/// times. It returns `false` when a guard gave its lease up for want of a
/// confirmed renewal (see [`gave_up`]): a short lease leaves a renewal's
/// round trip little time, and a slow, loaded machine misses that now and
/// then; such a run proves nothing. A watchdog that does not keep leases
/// fails every attempt.
async fn until_conclusive<F: Future<Output = bool>>(mut scenario: impl FnMut() -> F) {
    for attempt in 0..4 {
        if scenario().await {
            return;
        }
        eprintln!("attempt {attempt}: a renewal came too late on this machine; again");
    }
    panic!("in each of 4 attempts a renewal came too late for the lease");
}

/// Whether `guard` gave its lease up for want of a confirmed renewal: its
/// local deadline passed (`LeaseLost::Unconfirmed`). When the server no
/// longer has the lease (`gone`), the guard must say so soon (its local
/// deadline came before the server's). Panics when it was lost for any
/// other reason.
async fn gave_up<C: Connection>(guard: &Guard<C>, gone: bool) -> bool {
    if !guard.is_lost() && !gone {
        return false;
    }
    let reason = timeout(PATIENCE, guard.lost())
        .await
        .expect("the server no longer has the lease, yet the guard counts on it");
    assert_eq!(reason, LeaseLost::Unconfirmed, "lost for another reason");
    true
}

/// Releases `guard`: true when it was still held; false when it had given
/// its lease up for want of a confirmed renewal. Panics otherwise.
async fn released<C: Connection>(guard: Guard<C>) -> bool {
    let lost = guard.lost();
    if guard.release().await.unwrap() {
        return true;
    }
    let reason = timeout(PATIENCE, lost).await.expect("lost");
    assert_eq!(reason, LeaseLost::Unconfirmed, "not held at the end");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_a_300ms_lease_held_for_3s() {
    until_conclusive(|| async {
        let server = Server::start();
        let client = client(&server).await;
        let other = common::client(&server).await;
        let mut admin = admin(&server).await;
        let lock = client.lock("job");
        let guard = lock.acquire(ttl(300)).await.unwrap().expect("granted");

        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let held = info(&mut admin, "job").await;
            let stranger = other.lock("job").acquire(ttl(300)).await.unwrap();
            let gone = held.as_ref().map(|h| h.token) != Some(guard.token());
            if gave_up(&guard, gone || stranger.is_some()).await {
                return false;
            }
            let held = held.expect("lock still held");
            assert_eq!(held.owner, lock.owner());
            assert_eq!(held.token, guard.token());
            assert!(stranger.is_none());
            sleep(ms(100)).await;
        }
        let renewals = lock_stat(&mut admin, "lock_renewals").await;
        let expired = lock_stat(&mut admin, "lock_expired").await;
        if !released(guard).await {
            return false;
        }
        assert!(renewals >= 10);
        assert_eq!(expired, 0);
        assert_eq!(info(&mut admin, "job").await, None);
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_when_the_lock_is_force_released_and_nothing_resurrects_it() {
    let server = Server::start();
    let client = client(&server).await;
    let mut admin = admin(&server).await;
    let guard = client
        .lock("job")
        .acquire(sturdy())
        .await
        .unwrap()
        .expect("granted");
    let lost = guard.lost();
    assert_eq!(force_release(&mut admin, "job").await, 1);

    let reason = timeout(PATIENCE, lost)
        .await
        .expect("lost() within a few renewal periods");
    assert_eq!(reason, LeaseLost::NotHeld);
    assert!(guard.is_lost());

    // The watchdog stopped; several renewal periods later the lock is still
    // free, and the server counted the miss.
    sleep(ms(800)).await;
    assert_eq!(info(&mut admin, "job").await, None);
    assert!(lock_stat(&mut admin, "lock_renew_misses").await >= 1);
    assert!(!guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_when_the_key_is_overwritten() {
    let server = Server::start();
    let client = client(&server).await;
    let mut admin = admin(&server).await;
    let guard = client
        .lock("job")
        .acquire(sturdy())
        .await
        .unwrap()
        .expect("granted");
    let _: () = redis::cmd("SET")
        .arg("job")
        .arg("not a lock")
        .query_async(&mut admin)
        .await
        .unwrap();
    let reason = timeout(PATIENCE, guard.lost())
        .await
        .expect("lost() within a few renewal periods");
    assert_eq!(reason, LeaseLost::NotHeld);
    assert!(!guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_lost_its_lease_never_releases_the_next_holders_lock() {
    let server = Server::start();
    let first = client(&server).await;
    let second = common::client(&server).await;
    let mut admin = admin(&server).await;
    let old = first
        .lock("job")
        .acquire(sturdy())
        .await
        .unwrap()
        .expect("granted");
    force_release(&mut admin, "job").await;
    let new_lock = second.lock("job");
    let new = new_lock
        .acquire(sturdy())
        .await
        .unwrap()
        .expect("free again");
    assert!(new.token() > old.token());

    assert_eq!(
        timeout(PATIENCE, old.lost()).await.unwrap(),
        LeaseLost::NotHeld
    );
    assert!(!old.release().await.unwrap());
    let held = info(&mut admin, "job").await.expect("new holder keeps it");
    assert_eq!(held.owner, new_lock.owner());
    assert!(new.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_by_the_local_deadline_while_the_server_is_stopped() {
    let server = Server::start();
    let client = client(&server).await;
    let lease = ms(500);
    let guard = client
        .lock("job")
        .acquire(AcquireOptions::new().ttl(lease))
        .await
        .unwrap()
        .expect("granted");
    let lost = guard.lost();
    sleep(ms(200)).await;

    server.pause();
    let paused_at = Instant::now();
    let reason = timeout(lease + PATIENCE, lost)
        .await
        .expect("lost() by the local deadline while the server is stopped");
    assert_eq!(reason, LeaseLost::Unconfirmed);
    // Keep it stopped for longer than the ttl, then let it go on.
    sleep((paused_at + lease + ms(300)).saturating_duration_since(Instant::now())).await;
    server.resume();

    let mut admin = admin(&server).await;
    until_info(
        &mut admin,
        "job",
        "the lease to expire on the server",
        PATIENCE,
        Option::is_none,
    )
    .await;
    let other = common::client(&server).await;
    assert!(other.lock("job").acquire(ttl(500)).await.unwrap().is_some());
    assert!(!guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_watchdog_the_lease_expires_and_lost_says_so() {
    let server = Server::start();
    let client = client(&server).await;
    let mut admin = admin(&server).await;
    let guard = client
        .lock("job")
        .acquire(ttl(300).watchdog(false))
        .await
        .unwrap()
        .expect("granted");
    let reason = timeout(PATIENCE, guard.lost()).await.unwrap();
    assert_eq!(reason, LeaseLost::Expired);
    until_info(
        &mut admin,
        "job",
        "the lease to expire",
        PATIENCE,
        Option::is_none,
    )
    .await;
    assert_eq!(lock_stat(&mut admin, "lock_renewals").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handle_reenters_and_counts_holds() {
    let server = Server::start();
    let client = client(&server).await;
    let mut admin = admin(&server).await;
    let lock = client.lock("job");
    let outer = lock.acquire(ttl(5000)).await.unwrap().expect("granted");
    let inner = lock
        .clone()
        .acquire(ttl(5000))
        .await
        .unwrap()
        .expect("re-entered");
    assert_eq!(outer.token(), inner.token());
    let held = info(&mut admin, "job").await.unwrap();
    assert_eq!((held.owner.as_str(), held.holds), (lock.owner(), 2));

    assert!(inner.release().await.unwrap());
    assert_eq!(info(&mut admin, "job").await.unwrap().holds, 1);
    assert!(outer.release().await.unwrap());
    assert_eq!(info(&mut admin, "job").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_exclude_each_other_within_one_client_and_across_clients() {
    let server = Server::start();
    let client = client(&server).await;
    let other_client = common::client(&server).await;
    let first = client.lock("job");
    let second = client.lock("job");
    assert_ne!(first.owner(), second.owner());
    assert!(first.owner().starts_with(&client.id().to_string()));
    assert!(second.owner().starts_with(&client.id().to_string()));

    let guard = first.acquire(ttl(5000)).await.unwrap().expect("granted");
    assert!(second.acquire(ttl(5000)).await.unwrap().is_none());
    let stranger = other_client.lock("job");
    assert_ne!(stranger.owner(), first.owner());
    assert!(stranger.acquire(ttl(5000)).await.unwrap().is_none());

    let first_token = guard.token();
    assert!(guard.release().await.unwrap());
    let next = stranger
        .acquire(ttl(5000))
        .await
        .unwrap()
        .expect("free now");
    assert!(next.token() > first_token);
    assert!(next.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_releases_the_lock_in_the_background() {
    let server = Server::start();
    let client = client(&server).await;
    let mut admin = admin(&server).await;
    let lock = client.lock("job");
    let guard = lock.acquire(ttl(30_000)).await.unwrap().expect("granted");
    assert!(info(&mut admin, "job").await.is_some());
    drop(guard);
    until_info(
        &mut admin,
        "job",
        "the dropped guard's release",
        PATIENCE,
        Option::is_none,
    )
    .await;
    assert_eq!(lock_stat(&mut admin, "lock_releases").await, 1);
    assert_eq!(lock_stat(&mut admin, "lock_expired").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquire_times_out_with_none() {
    let server = Server::start();
    let holder = client(&server).await;
    let waiter = common::client(&server).await;
    let _held = holder
        .lock("job")
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("granted");

    let start = Instant::now();
    let got = waiter
        .lock("job")
        .acquire(ttl(30_000).wait(Wait::For(ms(300))))
        .await
        .unwrap();
    let waited = start.elapsed();
    assert!(got.is_none());
    assert!(waited >= ms(250), "gave up after {waited:?}");
    assert!(waited < ms(300) + PATIENCE, "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquires_are_handed_the_lock_on_release_and_on_drop() {
    let server = Server::start();
    let holder = client(&server).await;
    let waiter = common::client(&server).await;
    let mut admin = admin(&server).await;
    let held = holder
        .lock("job")
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("granted");

    let lock = waiter.lock("job");
    let queued = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(ttl(30_000).wait(Wait::For(PATIENCE))).await }
    });
    until_info(&mut admin, "job", "the waiter to queue", PATIENCE, |i| {
        i.as_ref().is_some_and(|i| i.waiters == 1)
    })
    .await;
    let first_token = held.token();
    assert!(held.release().await.unwrap());
    let handed = timeout(PATIENCE, queued)
        .await
        .expect("hand-off on release")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert!(handed.token() > first_token);
    assert_eq!(info(&mut admin, "job").await.unwrap().owner, lock.owner());

    // Wait without limit; the holder's guard is dropped.
    let forever = tokio::spawn({
        let lock = holder.lock("job");
        async move { lock.acquire(ttl(30_000).wait(Wait::Forever)).await }
    });
    until_info(
        &mut admin,
        "job",
        "the second waiter to queue",
        PATIENCE,
        |i| i.as_ref().is_some_and(|i| i.waiters == 1),
    )
    .await;
    let second_token = handed.token();
    drop(handed);
    let last = timeout(PATIENCE, forever)
        .await
        .expect("hand-off on drop")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert!(last.token() > second_token);
    assert!(last.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_does_not_hold_up_the_renewal_of_other_locks() {
    // Held up by the wait, the 300 ms lease would be given up in every
    // attempt; a slow machine may make one renewal late now and then.
    until_conclusive(|| async {
        let server = Server::start();
        let client = client(&server).await;
        let other = common::client(&server).await;
        let short = client
            .lock("short")
            .acquire(ttl(300))
            .await
            .unwrap()
            .expect("granted");
        let _busy = other
            .lock("busy")
            .acquire(ttl(30_000))
            .await
            .unwrap()
            .expect("granted");

        // The same client waits 1.5 s in the server's queue for "busy"...
        let got = client
            .lock("busy")
            .acquire(ttl(30_000).wait(Wait::For(ms(1500))))
            .await
            .unwrap();
        assert!(got.is_none());
        // ...while the 300 ms lease of "short" kept being renewed.
        if gave_up(&short, false).await {
            return false;
        }
        released(short).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acquire_succeeds_with_the_replica_up_and_fails_cleanly_without() {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let client = client(&master).await;
    let mut admin = admin(&master).await;

    let lock = client.lock("job");
    let guard = lock
        .acquire(ttl(30_000).replicas(1, PATIENCE))
        .await
        .unwrap()
        .expect("granted and acknowledged");
    assert!(guard.release().await.unwrap());

    replica.pause();
    let start = Instant::now();
    let refused = lock
        .acquire(ttl(30_000).replicas(1, ms(300)))
        .await
        .expect_err("the stopped replica cannot acknowledge");
    match refused {
        Error::NotDurable { acked, wanted, .. } => assert_eq!((acked, wanted), (0, 1)),
        other => panic!("expected NotDurable, got {other:?}"),
    }
    assert!(start.elapsed() >= ms(250));
    // The unacknowledged grant was released again.
    assert_eq!(info(&mut admin, "job").await, None);
    assert!(lock_stat(&mut admin, "lock_releases").await >= 2);
    replica.resume();

    // Waiting and durable at once: WAIT runs after the queued grant.
    let other = common::client(&master).await;
    let held = other
        .lock("job")
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("granted");
    let queued = tokio::spawn({
        let lock = lock.clone();
        async move {
            lock.acquire(ttl(30_000).wait(Wait::For(PATIENCE)).replicas(1, PATIENCE))
                .await
        }
    });
    until_info(
        &mut admin,
        "job",
        "the durable waiter to queue",
        PATIENCE,
        |i| i.as_ref().is_some_and(|i| i.waiters == 1),
    )
    .await;
    assert!(held.release().await.unwrap());
    let handed = timeout(PATIENCE, queued)
        .await
        .expect("hand-off")
        .unwrap()
        .expect("acknowledged by the resumed replica")
        .expect("granted");
    assert_eq!(info(&mut admin, "job").await.unwrap().owner, lock.owner());
    assert!(handed.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_acquire_leaves_the_queue() {
    let server = Server::start();
    let holder = client(&server).await;
    let waiter = common::client(&server).await;
    let mut admin = admin(&server).await;
    let held = holder
        .lock("job")
        .acquire(ttl(30_000))
        .await
        .unwrap()
        .expect("granted");
    let lock = waiter.lock("job");
    let queued = tokio::spawn(async move { lock.acquire(ttl(30_000).wait(Wait::Forever)).await });
    until_info(&mut admin, "job", "the waiter to queue", PATIENCE, |i| {
        i.as_ref().is_some_and(|i| i.waiters == 1)
    })
    .await;
    queued.abort();
    until_info(
        &mut admin,
        "job",
        "the cancelled waiter to leave the queue",
        PATIENCE,
        |i| i.as_ref().is_some_and(|i| i.waiters == 0),
    )
    .await;
    assert!(held.release().await.unwrap());
    assert_eq!(info(&mut admin, "job").await, None, "nobody was handed it");
}
