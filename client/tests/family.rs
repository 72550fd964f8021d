//! The lock family through the client, against real redis-server processes
//! with the module: read/write locks (readers share and exclude writers, a
//! queued writer is not overtaken, the downgrade, the upgrade refusal, a
//! read released under the write guard), semaphores (permits counted, a
//! waiter served when permits return), `info` of both shapes over RESP2 and
//! RESP3, the watchdog keeping shared and semaphore leases past their ttl,
//! and loss by `LOCK.FORCERELEASE key owner`.

mod common;

use std::time::Duration;

use common::{admin, client, lock_stat, ms};
use fencelock_client::{
    AcquireOptions, Client, Connection, Error, Guard, KeyInfo, LeaseLost, RwLock, Wait,
};
use redis::aio::ConnectionManager;
use redis::Value;
use testkit::{Server, PATIENCE};
use tokio::time::{sleep, timeout, Instant};

fn ttl(n: u64) -> AcquireOptions {
    AcquireOptions::new().ttl(ms(n))
}

/// A lease no slow machine lets lapse during a test.
fn long() -> AcquireOptions {
    ttl(30_000)
}

/// A lease that cannot lapse during a test, renewed every 200 ms: a loss is
/// noticed at the next renewal.
fn watched() -> AcquireOptions {
    long().renew_every(ms(200))
}

/// Polls `probe.info()` every 10 ms until `check` accepts it, or panics
/// after [`PATIENCE`]; returns the accepted value. (An `RwLock` handle that
/// never acquires reads any kind of key.)
async fn until_key(
    probe: &RwLock<ConnectionManager>,
    what: &str,
    check: impl Fn(&Option<KeyInfo>) -> bool,
) -> Option<KeyInfo> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = probe.info().await.unwrap();
        if check(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; LOCK.INFO: {now:?}"
        );
        sleep(ms(10)).await;
    }
}

fn waiters(n: u64) -> impl Fn(&Option<KeyInfo>) -> bool {
    move |info| info.as_ref().is_some_and(|i| i.waiters() == n)
}

/// The readers of a key held shared, as (owner, holds, token).
fn readers(info: Option<KeyInfo>) -> Vec<(String, u64, u64)> {
    match info {
        Some(KeyInfo::Shared(shared)) => shared
            .holders
            .into_iter()
            .map(|h| (h.owner, h.holds, h.token))
            .collect(),
        other => panic!("expected readers, got {other:?}"),
    }
}

/// The exclusive holder of a key, as (owner, holds, token).
fn writer(info: Option<KeyInfo>) -> (String, u64, u64) {
    match info {
        Some(KeyInfo::Exclusive(i)) => (i.owner, i.holds, i.token),
        other => panic!("expected an exclusive holder, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_the_key_and_a_writer_waits_for_all_of_them() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let probe = a.rw_lock("cfg");
    let (first, second, late) = (a.rw_lock("cfg"), b.rw_lock("cfg"), a.rw_lock("cfg"));
    let writer_handle = b.rw_lock("cfg");

    let r1 = first.read().acquire(long()).await.unwrap().expect("reader");
    let r2 = second
        .read()
        .acquire(long())
        .await
        .unwrap()
        .expect("reader");
    let (t1, t2) = (r1.token(), r2.token());
    assert_ne!(t1, t2, "each reader has its own grant");
    assert!(writer_handle.write().try_acquire().await.unwrap().is_none());
    assert!(a.lock("cfg").try_acquire().await.unwrap().is_none());
    assert_eq!(
        readers(probe.info().await.unwrap()),
        [
            (first.owner().to_string(), 1, t1),
            (second.owner().to_string(), 1, t2)
        ]
    );

    let queued = tokio::spawn({
        let w = writer_handle.clone();
        async move { w.write().acquire(long().wait(Wait::For(PATIENCE))).await }
    });
    until_key(&probe, "the writer to queue", waiters(1)).await;
    // A later reader does not overtake the queued writer.
    assert!(late.read().try_acquire().await.unwrap().is_none());

    assert!(r1.release().await.unwrap());
    // One reader is left: the writer still waits.
    assert_eq!(
        readers(probe.info().await.unwrap()),
        [(second.owner().to_string(), 1, t2)]
    );
    assert!(r2.release().await.unwrap());
    let w = timeout(PATIENCE, queued)
        .await
        .expect("the writer is handed the lock when the last reader leaves")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert!(w.token() > t1.max(t2));
    assert_eq!(
        writer(probe.info().await.unwrap()),
        (writer_handle.owner().to_string(), 1, w.token())
    );
    assert!(late.read().try_acquire().await.unwrap().is_none());
    assert!(w.release().await.unwrap());
    assert_eq!(probe.info().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_downgrades_keeping_its_token_and_then_readers_join() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let rw = a.rw_lock("cfg");
    let other = b.rw_lock("cfg");

    let w = rw.write().acquire(long()).await.unwrap().expect("granted");
    let r = rw.read().acquire(long()).await.unwrap().expect("re-entry");
    assert_eq!(r.token(), w.token());
    assert_eq!(
        writer(rw.info().await.unwrap()),
        (rw.owner().to_string(), 2, w.token())
    );
    assert!(other.read().try_acquire().await.unwrap().is_none());

    assert!(w.release().await.unwrap());
    assert_eq!(
        readers(rw.info().await.unwrap()),
        [(rw.owner().to_string(), 1, r.token())]
    );
    assert!(!r.is_lost());
    let joined = other
        .read()
        .try_acquire()
        .await
        .unwrap()
        .expect("readers join after the downgrade");
    assert!(b
        .rw_lock("cfg")
        .write()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    assert!(r.release().await.unwrap());
    assert_eq!(
        readers(rw.info().await.unwrap()),
        [(other.owner().to_string(), 1, joined.token())]
    );
    assert!(joined.release().await.unwrap());
    assert_eq!(rw.info().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_released_under_the_write_guard_keeps_the_lock_exclusive() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let rw = a.rw_lock("cfg");
    let other = b.rw_lock("cfg");
    let w = rw.write().acquire(long()).await.unwrap().expect("granted");
    let r = rw.read().acquire(long()).await.unwrap().expect("re-entry");
    // The server releases exclusive holds first: sending this release now
    // would turn the write lock into a read lock under `w`.
    assert!(r.release().await.unwrap());
    assert_eq!(writer(rw.info().await.unwrap()).1, 2);
    assert!(other.read().try_acquire().await.unwrap().is_none());
    assert!(!w.is_lost());
    assert!(w.release().await.unwrap());
    assert_eq!(rw.info().await.unwrap(), None, "both holds went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_asking_to_write_gets_the_upgrade_error_and_keeps_reading() {
    let server = Server::start();
    let a = client(&server).await;
    let mut admin = admin(&server).await;
    let rw = a.rw_lock("cfg");
    let r = rw
        .read()
        .acquire(watched())
        .await
        .unwrap()
        .expect("granted");
    // Refused at once, also when asked to wait (bounded, should the
    // server queue it instead).
    for options in [long(), long().wait(Wait::For(ms(5_000)))] {
        match rw.write().acquire(options).await {
            Err(Error::Upgrade) => {}
            other => panic!("expected the upgrade refusal, got {other:?}"),
        }
    }
    assert_eq!(
        readers(rw.info().await.unwrap()),
        [(rw.owner().to_string(), 1, r.token())]
    );
    // The watchdog renews on (every 200 ms).
    let before = lock_stat(&mut admin, "lock_renewals").await;
    let deadline = Instant::now() + PATIENCE;
    while lock_stat(&mut admin, "lock_renewals").await < before + 2 {
        assert!(Instant::now() < deadline, "no renewals after the refusal");
        sleep(ms(50)).await;
    }
    assert!(!r.is_lost());
    assert!(r.release().await.unwrap());
    assert_eq!(rw.info().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_counts_permits_per_owner_and_per_guard() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let s1 = a.semaphore("pool", 3);
    let s2 = b.semaphore("pool", 3);

    let two = s1.acquire(2, long()).await.unwrap().expect("2 of 3");
    assert_eq!(s1.available().await.unwrap(), 1);
    assert!(s2.acquire(2, long()).await.unwrap().is_none());
    let one = s2.acquire(1, long()).await.unwrap().expect("the last one");
    assert_ne!(one.token(), two.token());
    assert_eq!(s2.available().await.unwrap(), 0);
    assert!(s1.try_acquire(1).await.unwrap().is_none());
    assert!(!two.is_lost(), "a refused acquire leaves the held permits");
    let info = s1.info().await.unwrap().expect("held");
    assert_eq!((info.limit, info.available, info.waiters), (3, 0, 0));
    let holders: Vec<_> = info
        .holders
        .iter()
        .map(|h| (h.owner.as_str(), h.permits, h.token))
        .collect();
    assert_eq!(
        holders,
        [(s1.owner(), 2, two.token()), (s2.owner(), 1, one.token())]
    );

    assert!(two.release().await.unwrap());
    assert_eq!((s1.held().await.unwrap(), s2.held().await.unwrap()), (0, 1));
    let more = s2.acquire(2, long()).await.unwrap().expect("2 more");
    assert_eq!(more.token(), one.token(), "one owner, one grant");
    assert_eq!(s2.held().await.unwrap(), 3);
    // Each guard gives back its own permits.
    assert!(one.release().await.unwrap());
    assert_eq!(s2.held().await.unwrap(), 2);
    assert!(!more.is_lost());

    // Another limit, or a read/write lock, on the key is refused.
    for wrong in [
        a.semaphore("pool", 4).try_acquire(1).await,
        a.rw_lock("pool").read().try_acquire().await,
        a.lock("pool").try_acquire().await,
    ] {
        match wrong {
            Err(Error::Redis(e)) => assert_eq!(e.code(), Some("WRONGTYPE"), "{e}"),
            other => panic!("expected WRONGTYPE, got {other:?}"),
        }
    }
    assert!(more.release().await.unwrap());
    assert_eq!(s1.info().await.unwrap(), None);
    assert_eq!(s1.available().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_waiter_is_granted_when_permits_return() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let probe = a.rw_lock("pool");
    let holder = a.semaphore("pool", 3);
    let waiter = b.semaphore("pool", 3);
    let held = holder.acquire(2, long()).await.unwrap().expect("granted");

    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire(2, long().wait(Wait::For(PATIENCE))).await }
    });
    until_key(&probe, "the waiter to queue", waiters(1)).await;
    // One permit is free, but the queue is strict FIFO.
    assert!(b
        .semaphore("pool", 3)
        .try_acquire(1)
        .await
        .unwrap()
        .is_none());

    drop(held); // released in the background
    let granted = timeout(PATIENCE, queued)
        .await
        .expect("granted when the permits return")
        .unwrap()
        .unwrap()
        .expect("granted");
    assert_eq!(waiter.held().await.unwrap(), 2);
    assert_eq!(holder.held().await.unwrap(), 0);
    assert_eq!(waiter.available().await.unwrap(), 1);
    assert!(granted.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reads_readers_and_semaphores_over_resp2_and_resp3() {
    let server = Server::start();
    for resp3 in [false, true] {
        let url = if resp3 {
            format!("{}?protocol=resp3", server.url())
        } else {
            server.url()
        };
        let client = Client::connect(url.as_str()).await.unwrap();
        let (rw, sem) = (client.rw_lock("cfg"), client.semaphore("pool", 5));
        let other = client.rw_lock("cfg");
        let r = rw.read().acquire(long()).await.unwrap().expect("reader");
        let r2 = rw.read().acquire(long()).await.unwrap().expect("re-entry");
        let o = other.read().acquire(long()).await.unwrap().expect("reader");
        let p = sem.acquire(3, long()).await.unwrap().expect("permits");

        let Some(KeyInfo::Shared(shared)) = rw.info().await.unwrap() else {
            panic!("expected readers")
        };
        assert_eq!(shared.waiters, 0);
        assert_eq!(shared.holders.len(), 2);
        let (mine, theirs) = (&shared.holders[0], &shared.holders[1]);
        assert_eq!((mine.owner.as_str(), mine.holds), (rw.owner(), 2));
        assert_eq!((mine.token, theirs.token), (r.token(), o.token()));
        assert_eq!((theirs.owner.as_str(), theirs.holds), (other.owner(), 1));
        for h in [mine, theirs] {
            assert!(h.ttl <= Duration::from_secs(30) && h.ttl > Duration::ZERO);
        }
        assert_eq!(rw.hold_count().await.unwrap(), 2);

        let info = sem.info().await.unwrap().expect("held");
        assert_eq!((info.limit, info.available, info.waiters), (5, 2, 0));
        assert_eq!(info.holders.len(), 1);
        assert_eq!(
            (info.holders[0].owner.as_str(), info.holders[0].permits),
            (sem.owner(), 3)
        );
        assert_eq!(info.holders[0].token, p.token());

        // The replies really came in the protocol's own shape.
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for key in ["cfg", "pool"] {
            let raw: Value = redis::cmd("LOCK.INFO")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if resp3 {
                assert!(matches!(raw, Value::Map(_)), "RESP3 reply {raw:?}");
            } else {
                assert!(matches!(raw, Value::Array(_)), "RESP2 reply {raw:?}");
            }
        }
        for guard in [r, r2, o, p] {
            assert!(guard.release().await.unwrap());
        }
        assert_eq!(rw.info().await.unwrap(), None);
        assert_eq!(sem.info().await.unwrap(), None);
    }
}

/// Whether `guard` gave its lease up for want of a confirmed renewal (its
/// local deadline passed: [`LeaseLost::Unconfirmed`]). When the server no
/// longer shows the lease (`gone`), the guard must say so soon (its local
/// deadline comes before the server's). Panics when it was lost for any
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

/// One run of the watchdog scenario with leases of `lease_ms`: two readers
/// of one key and a semaphore holder, held for three ttls. `false` when a
/// renewal came too late on this machine (the run proves nothing).
async fn shared_leases_outlive_their_ttl(lease_ms: u64) -> bool {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let mut admin = admin(&server).await;
    let probe = a.rw_lock("cfg");
    let (first, second) = (a.rw_lock("cfg"), b.rw_lock("cfg"));
    let sem = b.semaphore("pool", 2);
    let r1 = first.read().acquire(ttl(lease_ms)).await.unwrap().unwrap();
    let r2 = second.read().acquire(ttl(lease_ms)).await.unwrap().unwrap();
    let p = sem.acquire(1, ttl(lease_ms)).await.unwrap().unwrap();

    let start = Instant::now();
    while start.elapsed() < 3 * ms(lease_ms) {
        let tokens: Vec<u64> = match probe.info().await.unwrap() {
            Some(KeyInfo::Shared(s)) => s.holders.iter().map(|h| h.token).collect(),
            _ => Vec::new(),
        };
        let permits = sem.held().await.unwrap();
        let mut inconclusive = false;
        for (guard, gone) in [
            (&r1, !tokens.contains(&r1.token())),
            (&r2, !tokens.contains(&r2.token())),
        ] {
            inconclusive |= gave_up(guard, gone).await;
        }
        inconclusive |= gave_up(&p, permits != 1).await;
        if inconclusive {
            return false;
        }
        sleep(ms(50)).await;
    }
    let renewals = lock_stat(&mut admin, "lock_renewals").await;
    for guard in [r1, r2, p] {
        let lost = guard.lost();
        if !guard.release().await.unwrap() {
            let reason = timeout(PATIENCE, lost).await.expect("lost");
            assert_eq!(reason, LeaseLost::Unconfirmed, "not held at the end");
            return false;
        }
    }
    // To live three ttls, each of the three leases was renewed at least
    // twice (every ttl/3 on a machine that keeps up).
    assert!(renewals >= 3 * 2, "only {renewals} renewals");
    assert_eq!(lock_stat(&mut admin, "lock_expired").await, 0);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_shared_and_semaphore_leases_past_their_ttl() {
    for attempt in 0..testkit::timing::ATTEMPTS {
        let lease_ms = testkit::timing::lease_ms(500, attempt);
        if shared_leases_outlive_their_ttl(lease_ms).await {
            return;
        }
        eprintln!("attempt {attempt} ({lease_ms} ms leases): a renewal came too late on this machine; again");
    }
    panic!("in every attempt a renewal came too late for the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_when_one_owner_is_force_released_and_the_others_keep_theirs() {
    let server = Server::start();
    let (a, b) = (client(&server).await, common::client(&server).await);
    let mut admin = admin(&server).await;
    let (first, second) = (a.rw_lock("cfg"), b.rw_lock("cfg"));
    let r1 = first.read().acquire(watched()).await.unwrap().unwrap();
    let r2 = second.read().acquire(watched()).await.unwrap().unwrap();

    // An operator evicts the first reader.
    let removed: i64 = redis::cmd("LOCK.FORCERELEASE")
        .arg("cfg")
        .arg(first.owner())
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let reason = timeout(PATIENCE, r1.lost())
        .await
        .expect("lost() at the next renewal");
    assert_eq!(reason, LeaseLost::NotHeld);
    assert!(!r2.is_lost());
    assert_eq!(
        readers(second.info().await.unwrap()),
        [(second.owner().to_string(), 1, r2.token())]
    );
    assert!(!r1.release().await.unwrap());

    // A semaphore holder evicted through another handle.
    let (s1, s2) = (a.semaphore("pool", 2), b.semaphore("pool", 2));
    let p1 = s1.acquire(1, watched()).await.unwrap().unwrap();
    let p2 = s2.acquire(1, watched()).await.unwrap().unwrap();
    assert!(s2.force_release_owner(s1.owner()).await.unwrap());
    let reason = timeout(PATIENCE, p1.lost())
        .await
        .expect("lost() at the next renewal");
    assert_eq!(reason, LeaseLost::NotHeld);
    assert!(!p2.is_lost());
    assert_eq!(s2.available().await.unwrap(), 1);
    assert!(!s2.force_release_owner(s1.owner()).await.unwrap());

    // Through the holder's own handle: its guards know at once.
    assert!(second.force_release_owner(second.owner()).await.unwrap());
    assert!(r2.is_lost());
    assert!(!r2.release().await.unwrap());
    assert_eq!(second.info().await.unwrap(), None);
    assert!(p2.release().await.unwrap());
}
