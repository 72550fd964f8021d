//! The client's retries on real servers, through a proxy that cuts the
//! connection between the server's apply and the reply
//! (`testkit::retry::Proxy`): for every operation — acquire fresh and
//! re-entry, release partial and last, a waiting acquire granted by hand-off
//! — and every kind (lock, read lock, semaphore permits), the client sends
//! the request again with the same id over a working connection, gets the
//! answer the server gave the first time, and the server holds exactly what
//! one request leaves. Also: a request cut before it reached the server is
//! applied once by the retry; a partial release retried on a promoted
//! replica is answered from the replicated record; an acquire that gets no
//! answer within its retry window fails.
//!
//! The raw-command matrix (each operation and kind after `DEBUG RELOAD`,
//! AOF replay, failover and slot migration) is in tests/exactly_once.rs.

mod common;

use common::{admin, lock_stat, ms};
use fencelock_client::{AcquireOptions, Client, Error, Guard, Wait};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Value;
use testkit::family;
use testkit::replication;
use testkit::retry::{replicated, seed, Proxy};
use testkit::{Server, PATIENCE};
use tokio::time::{sleep, Instant};

/// A lease no slow machine lets lapse during a test (and so the retry
/// window of its acquires and releases).
fn long() -> AcquireOptions {
    AcquireOptions::new().ttl(ms(30_000))
}

/// A server, a proxy in front of it, and a client through the proxy.
async fn through_proxy() -> (Server, Proxy, Client<ConnectionManager>) {
    let server = Server::start();
    let proxy = Proxy::start(server.addr(), seed());
    let client = Client::connect(proxy.url()).await.expect("client");
    (server, proxy, client)
}

/// `LOCK.INFO key` parsed, any kind.
async fn info(admin: &mut MultiplexedConnection, key: &str) -> Option<family::Info> {
    let v: Value = redis::cmd("LOCK.INFO")
        .arg(key)
        .query_async(admin)
        .await
        .expect("LOCK.INFO");
    family::parse_info(&v)
}

/// What `owner` holds at `key` (holds or permits; 0 for nothing), and its
/// token.
async fn held(admin: &mut MultiplexedConnection, key: &str, owner: &str) -> (i64, Option<u64>) {
    info(admin, key)
        .await
        .and_then(|i| i.holder(owner))
        .map_or((0, None), |h| (h.amount, Some(h.token as u64)))
}

async fn answered(admin: &mut MultiplexedConnection) -> i64 {
    lock_stat(admin, "lock_retries_answered").await
}

/// The last reply the proxy swallowed.
fn last_swallowed(proxy: &Proxy) -> Value {
    proxy.swallowed().pop().expect("a swallowed reply")
}

/// Polls until `key` has `n` waiters (at most [`PATIENCE`]).
async fn until_waiters(admin: &mut MultiplexedConnection, key: &str, n: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = info(admin, key).await.map_or(0, |i| i.waiters());
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {now} waiters, not {n}");
        sleep(ms(10)).await;
    }
}

/// The three kinds, as the tests take them: each with its key, what one
/// acquire takes, and how it is acquired.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Lock,
    Read,
    Permits,
}

const KINDS: [Kind; 3] = [Kind::Lock, Kind::Read, Kind::Permits];

/// Handles of every kind on one client.
#[derive(Clone)]
struct Handles {
    lock: fencelock_client::Lock<ConnectionManager>,
    rw: fencelock_client::RwLock<ConnectionManager>,
    sem: fencelock_client::Semaphore<ConnectionManager>,
}

impl Handles {
    fn new(client: &Client<ConnectionManager>) -> Self {
        Self {
            lock: client.lock("lock"),
            rw: client.rw_lock("rw"),
            sem: client.semaphore("sem", 5),
        }
    }

    fn key(kind: Kind) -> &'static str {
        match kind {
            Kind::Lock => "lock",
            Kind::Read => "rw",
            Kind::Permits => "sem",
        }
    }

    /// What one acquire takes: one hold, or 2 permits.
    fn per_acquire(kind: Kind) -> i64 {
        match kind {
            Kind::Permits => 2,
            _ => 1,
        }
    }

    fn owner(&self, kind: Kind) -> &str {
        match kind {
            Kind::Lock => self.lock.owner(),
            Kind::Read => self.rw.owner(),
            Kind::Permits => self.sem.owner(),
        }
    }

    async fn acquire(
        &self,
        kind: Kind,
        n: u32,
        options: AcquireOptions,
    ) -> Option<Guard<ConnectionManager>> {
        match kind {
            Kind::Lock => self.lock.acquire(options).await,
            Kind::Read => self.rw.read().acquire(options).await,
            Kind::Permits => self.sem.acquire(n, options).await,
        }
        .unwrap_or_else(|e| panic!("{kind:?} acquire failed: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_whose_replies_are_lost_are_retried_and_hold_once_for_every_kind() {
    let (server, proxy, client) = through_proxy().await;
    let mut admin = admin(&server).await;
    let before = answered(&mut admin).await;
    let h = Handles::new(&client);
    let mut guards = Vec::new();
    for kind in KINDS {
        let key = Handles::key(kind);
        let per = Handles::per_acquire(kind);
        // Fresh, then a re-entry through the same handle.
        for round in 1..=2 {
            proxy.cut_reply_to("LOCK.ACQUIRE");
            let guard = h.acquire(kind, per as u32, long()).await.expect("granted");
            assert!(!proxy.is_armed(), "{kind:?}: the reply was cut");
            assert_eq!(
                last_swallowed(&proxy),
                Value::Int(guard.token() as i64),
                "{kind:?}: the retry was answered as the first attempt"
            );
            assert_eq!(
                held(&mut admin, key, h.owner(kind)).await,
                (round * per, Some(guard.token())),
                "{kind:?} round {round}: held once per acquire"
            );
            guards.push(guard);
        }
    }
    assert_eq!(answered(&mut admin).await - before, 6);
    for guard in guards {
        assert!(!guard.is_lost());
        assert!(guard.release().await.unwrap());
    }
    for kind in KINDS {
        assert_eq!(info(&mut admin, Handles::key(kind)).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_whose_replies_are_lost_are_retried_and_release_once_for_every_kind() {
    let (server, proxy, client) = through_proxy().await;
    let mut admin = admin(&server).await;
    let before = answered(&mut admin).await;
    let h = Handles::new(&client);
    for kind in KINDS {
        let (key, per) = (Handles::key(kind), Handles::per_acquire(kind));
        let first = h.acquire(kind, per as u32, long()).await.expect("granted");
        let second = h.acquire(kind, per as u32, long()).await.expect("granted");
        // Partial: the server keeps the owner's record, and answers the
        // retry from it.
        proxy.cut_reply_to("LOCK.RELEASE");
        assert!(first.release().await.unwrap());
        assert_eq!(last_swallowed(&proxy), Value::Int(per), "{kind:?}");
        assert_eq!(
            held(&mut admin, key, h.owner(kind)).await.0,
            per,
            "{kind:?}"
        );
        assert!(!second.is_lost(), "{kind:?}");
        // Last: the retry finds nothing left (the first attempt released
        // it) and says so; the guard knows that was its own release.
        proxy.cut_reply_to("LOCK.RELEASE");
        assert!(second.release().await.unwrap(), "{kind:?}");
        assert_eq!(last_swallowed(&proxy), Value::Int(0), "{kind:?}");
        assert_eq!(info(&mut admin, key).await, None, "{kind:?}");
    }
    // Only the partial releases had a record to answer from.
    assert_eq!(answered(&mut admin).await - before, 3);
    assert_eq!(proxy.swallowed().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_granted_while_its_connection_drops_gets_the_token_on_a_new_connection() {
    let (server, proxy, client) = through_proxy().await;
    let mut admin = admin(&server).await;
    let before = answered(&mut admin).await;
    let h = Handles::new(&client);
    for kind in KINDS {
        let key = Handles::key(kind);
        // Another owner holds what the waiter needs: the key exclusively, or
        // 4 of the 5 permits for a waiter that wants 3.
        let (holder, wanted): (Vec<&str>, u32) = match kind {
            Kind::Permits => (vec!["LIMIT", "5", "COUNT", "4"], 3),
            _ => (vec![], 1),
        };
        let granted: Option<i64> = redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg("x")
            .arg(60_000)
            .arg(&holder)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(granted.is_some());
        proxy.cut_reply_to("LOCK.ACQUIRE");
        let connections = proxy.accepted();
        let waiting = tokio::spawn({
            let h = h.clone();
            async move {
                let options = long().wait(Wait::For(PATIENCE));
                h.acquire(kind, wanted, options).await
            }
        });
        until_waiters(&mut admin, key, 1).await;
        // The hand-off grants the waiter; the proxy swallows the token and
        // closes its connection.
        let left: Option<i64> = redis::cmd("LOCK.RELEASE")
            .arg(key)
            .arg("x")
            .arg("COUNT")
            .arg(if wanted == 3 { 4 } else { 1 })
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, Some(0));
        let guard = waiting.await.unwrap().expect("granted");
        assert_eq!(
            last_swallowed(&proxy),
            Value::Int(guard.token() as i64),
            "{kind:?}: the retry got the hand-off's token"
        );
        assert!(
            proxy.accepted() >= connections + 2,
            "{kind:?}: the retry went over a new dedicated connection"
        );
        assert_eq!(
            held(&mut admin, key, h.owner(kind)).await,
            (i64::from(wanted), Some(guard.token())),
            "{kind:?}"
        );
        assert!(guard.release().await.unwrap());
        assert_eq!(info(&mut admin, key).await, None);
    }
    assert_eq!(answered(&mut admin).await - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_before_it_reached_the_server_is_applied_once_by_the_retry() {
    let (server, proxy, client) = through_proxy().await;
    let mut admin = admin(&server).await;
    let before = answered(&mut admin).await;
    let lock = client.lock("k");
    proxy.cut_request("LOCK.ACQUIRE");
    let outer = lock.acquire(long()).await.unwrap().expect("granted");
    let inner = lock.acquire(long()).await.unwrap().expect("re-entered");
    assert_eq!(held(&mut admin, "k", lock.owner()).await.0, 2);
    proxy.cut_request("LOCK.RELEASE");
    assert!(inner.release().await.unwrap());
    assert_eq!(held(&mut admin, "k", lock.owner()).await.0, 1);
    assert_eq!(proxy.dropped(), 2);
    assert_eq!(answered(&mut admin).await, before, "nothing to answer from");
    assert!(outer.release().await.unwrap());
    assert_eq!(info(&mut admin, "k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_release_retried_on_a_promoted_replica_is_answered_from_the_replicated_record() {
    let (mut master, replica) = replication::pair();
    let proxy = Proxy::start(master.addr(), seed());
    let client = Client::connect(proxy.url()).await.expect("client");
    let lock = client.lock("k");
    let outer = lock.acquire(long()).await.unwrap().expect("granted");
    let inner = lock.acquire(long()).await.unwrap().expect("re-entered");
    // The release is applied on the master, its reply lost, and the master
    // unreachable from then on.
    proxy.refuse_new(true);
    proxy.cut_reply_to("LOCK.RELEASE");
    let release = tokio::spawn(inner.release());
    let swallowed = tokio::task::block_in_place(|| proxy.wait_swallowed(1));
    assert_eq!(swallowed, Value::Int(1));
    // The replica has the release and its record (WAIT 1), then takes over.
    replicated(&master, 1);
    master.kill9();
    let mut r = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .expect("REPLICAOF NO ONE");
    proxy.set_upstream(replica.addr());
    proxy.refuse_new(false);
    assert!(release.await.unwrap().unwrap(), "released");
    let mut admin = admin(&replica).await;
    assert_eq!(held(&mut admin, "k", lock.owner()).await.0, 1, "once");
    assert_eq!(answered(&mut admin).await, 1);
    assert!(!outer.is_lost());
    assert!(outer.release().await.unwrap());
    assert_eq!(info(&mut admin, "k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_gets_no_answer_within_its_retry_window_fails() {
    let (server, proxy, client) = through_proxy().await;
    let mut admin = admin(&server).await;
    let lock = client.lock("k");
    // The server grants it, the reply is lost, and no connection can be
    // made again.
    proxy.refuse_new(true);
    proxy.cut_reply_to("LOCK.ACQUIRE");
    let started = Instant::now();
    let failed = lock.acquire(AcquireOptions::new().ttl(ms(500))).await;
    assert!(matches!(failed, Err(Error::Redis(_))), "{failed:?}");
    assert!(
        started.elapsed() >= ms(500),
        "retried for the whole window (the ttl), not given up at once"
    );
    assert!(
        matches!(last_swallowed(&proxy), Value::Int(t) if t > 0),
        "the first attempt was granted"
    );
    // The grant nobody heard of expires on its own; then the client works
    // again.
    let deadline = Instant::now() + PATIENCE;
    while info(&mut admin, "k").await.is_some() {
        assert!(Instant::now() < deadline, "the lost grant never expired");
        sleep(ms(20)).await;
    }
    proxy.refuse_new(false);
    let guard = lock.acquire(long()).await.unwrap().expect("granted");
    assert_eq!(held(&mut admin, "k", lock.owner()).await.0, 1);
    assert!(guard.release().await.unwrap());
}
