//! [`Lock`]: a handle on one key with one owner string, for the exclusive
//! lock — acquiring (the steps are in `acquire`), and the calls that look at
//! or clear the lock on the server.

use std::fmt;
use std::sync::Arc;

use crate::acquire;
use crate::commands::{show, Request};
use crate::connection::{Connection, Connections};
use crate::error::Error;
use crate::guard::Guard;
use crate::handle::Handle;
use crate::info::{KeyInfo, LockInfo};
use crate::options::AcquireOptions;

/// A lock handle: one key, one owner string (`<client uuid>:<n>`).
///
/// Take it from [`Client::lock`](crate::Client::lock). Acquiring through the
/// same handle again while it holds the lock re-enters (the server counts
/// holds; the token stays the same); another handle, of this client or any
/// other, is excluded. Cloning the handle keeps the owner. A `Lock` and the
/// write side of an [`RwLock`](crate::RwLock) on the same key exclude each
/// other as two `Lock`s do (readers keep a `Lock` out too).
///
/// Taking the lock: [`acquire`](Self::acquire),
/// [`try_acquire`](Self::try_acquire). Looking at it on the server:
/// [`info`](Self::info), [`is_locked`](Self::is_locked),
/// [`hold_count`](Self::hold_count). Clearing it, whoever holds it:
/// [`force_release`](Self::force_release). What a holder knows about its own
/// lease without asking the server is on its [`Guard`].
#[derive(Clone)]
pub struct Lock<C> {
    handle: Arc<Handle<C>>,
}

impl<C> fmt::Debug for Lock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &show(&self.handle.key))
            .field("owner", &self.handle.owner)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> Lock<C> {
    pub(crate) fn new(connections: Arc<Connections<C>>, key: Vec<u8>, owner: String) -> Self {
        Self {
            handle: Arc::new(Handle::new(connections, key, owner)),
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.handle.key
    }

    /// The owner string sent to the server: `<client uuid>:<n>`.
    pub fn owner(&self) -> &str {
        &self.handle.owner
    }

    /// Takes the lock (or re-enters it), as `options` say.
    ///
    /// Returns `Ok(Some(guard))` when granted, `Ok(None)` when another owner
    /// holds it (after the wait, if one was asked for), and an error when
    /// the options are invalid, no attempt got an answer (the lock may then
    /// have been granted: it expires after its ttl), or the grant was not
    /// acknowledged by enough replicas (then it has been released). A key
    /// that holds a semaphore fails with the server's `WRONGTYPE` error.
    ///
    /// The request carries an `ID request-id` of its own. When the
    /// connection fails before the answer comes (a dropped connection, a
    /// timeout, a server restarting), it is sent again with the same id over
    /// a working connection — the shared one reconnects, a waiting acquire
    /// opens a new dedicated one and sends the wait that is left — for as
    /// long as it may block and at least the ttl ([`Wait::Forever`](crate::Wait::Forever):
    /// until answered). The server answers a retry it has already applied
    /// with the same token, without a second re-entry.
    ///
    /// A re-entry joins the lease the handle already holds: it refreshes it
    /// with that lease's own ttl, keeps that lease's watchdog, and its guard
    /// shares the lease's token and [`lost`](Guard::lost) signal; only the
    /// wait and replica options of a re-entry apply. The acquires of one
    /// handle run one at a time.
    ///
    /// Cancelling a waiting acquire (dropping the future) closes its
    /// dedicated connection, which takes it out of the server's queue; a
    /// grant that raced with that is never renewed and expires after its ttl.
    pub async fn acquire(&self, options: AcquireOptions) -> Result<Option<Guard<C>>, Error> {
        acquire::acquire(&self.handle, Request::Exclusive, options).await
    }

    /// Tries once to take the lock with the default options (ttl 30 s,
    /// watchdog on, no wait): `acquire(AcquireOptions::new())`. Returns
    /// `Ok(None)` at once when another owner holds it.
    pub async fn try_acquire(&self) -> Result<Option<Guard<C>>, Error> {
        self.acquire(AcquireOptions::new()).await
    }

    /// The lock as the server shows it now (`LOCK.INFO`): owner, holds,
    /// remaining ttl, token and waiters, whoever holds it; `None` when the
    /// key holds no lock. Reads over the client's shared connection, in
    /// RESP2 or RESP3. A key held shared (by [`RwLock`](crate::RwLock)
    /// readers) or holding a semaphore fails with [`Error::WrongKind`]; read
    /// it with [`RwLock::info`](crate::RwLock::info) instead.
    pub async fn info(&self) -> Result<Option<LockInfo>, Error> {
        match self.handle.info().await? {
            None => Ok(None),
            Some(KeyInfo::Exclusive(info)) => Ok(Some(info)),
            Some(other) => Err(Error::WrongKind {
                found: other.mode(),
            }),
        }
    }

    /// Whether anyone (this handle or another owner) holds the key now, in
    /// any mode, as the server says.
    pub async fn is_locked(&self) -> Result<bool, Error> {
        Ok(self.handle.info().await?.is_some())
    }

    /// How many holds this handle's owner has on the server now (each
    /// re-entry adds one): 0 when the lock is free or held by another owner.
    pub async fn hold_count(&self) -> Result<u64, Error> {
        Ok(self
            .handle
            .info()
            .await?
            .map_or(0, |info| info.held_by(&self.handle.owner)))
    }

    /// Removes the lock whoever holds it (`LOCK.FORCERELEASE`, an
    /// administrative command that ACLs may deny); the first waiter in the
    /// server's queue gets it. Returns whether there was a lock to remove.
    ///
    /// If this handle held the lock, its guards know at once: their
    /// [`lost`](Guard::lost) completes with [`LeaseLost::NotHeld`](crate::LeaseLost::NotHeld) and they
    /// send no release. Another holder's watchdog learns it at its next
    /// renewal.
    pub async fn force_release(&self) -> Result<bool, Error> {
        self.handle.force_release(None).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use redis::Value;
    use tokio::time::{sleep, Instant};

    use crate::mock::{flat, info_fields, ms, Answer, Mock};
    use crate::{AcquireOptions, Error, LeaseLost, LockInfo, Wait};

    #[tokio::test(start_paused = true)]
    async fn try_acquire_tries_once_with_the_default_options_on_the_shared_connection() {
        let mock = Mock::granting();
        let (client, opened) = mock.client_with_wait_connections();
        let lock = client.lock("k");
        let guard = lock.try_acquire().await.unwrap().expect("granted");
        assert_eq!(guard.token(), 7);
        mock.on("LOCK.ACQUIRE", [Answer::Nil]);
        let other = client.lock("k");
        assert!(other.try_acquire().await.unwrap().is_none());
        assert_eq!(
            mock.args("LOCK.ACQUIRE"),
            [["k", lock.owner(), "30000"], ["k", other.owner(), "30000"]]
        );
        assert_eq!(opened.load(Ordering::SeqCst), 0);
        // The default watchdog renews every 10 s.
        sleep(ms(10_050)).await;
        assert_eq!(mock.sent("LOCK.RENEW").len(), 1);
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn info_reads_the_lock_from_a_resp3_map_and_a_resp2_array() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        mock.on(
            "LOCK.INFO",
            [
                Answer::Reply(Value::Map(info_fields("u:1", 2))),
                Answer::Reply(flat(info_fields("u:1", 2))),
                Answer::Nil,
            ],
        );
        let expected = LockInfo {
            owner: "u:1".into(),
            holds: 2,
            ttl: ms(9987),
            token: 7,
            waiters: 1,
        };
        assert_eq!(lock.info().await.unwrap(), Some(expected.clone()));
        assert_eq!(lock.info().await.unwrap(), Some(expected));
        assert_eq!(lock.info().await.unwrap(), None);
        assert!(!lock.is_locked().await.unwrap());
        assert_eq!(mock.args("LOCK.INFO").len(), 4);
        assert!(mock.args("LOCK.INFO").iter().all(|a| a == &["k"]));
    }

    #[tokio::test(start_paused = true)]
    async fn is_locked_says_whether_anyone_holds_it() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        mock.on(
            "LOCK.INFO",
            [Answer::Reply(flat(info_fields("someone", 1))), Answer::Nil],
        );
        assert!(lock.is_locked().await.unwrap());
        assert!(!lock.is_locked().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn hold_count_counts_only_the_holds_of_this_handle() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        mock.on(
            "LOCK.INFO",
            [
                Answer::Reply(Value::Map(info_fields(lock.owner(), 2))),
                Answer::Reply(flat(info_fields("someone", 3))),
                Answer::Nil,
            ],
        );
        assert_eq!(lock.hold_count().await.unwrap(), 2);
        assert_eq!(lock.hold_count().await.unwrap(), 0);
        assert_eq!(lock.hold_count().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_info_reply_is_an_error() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        mock.on("LOCK.INFO", [Answer::Int(1)]);
        assert!(matches!(
            lock.info().await,
            Err(Error::UnexpectedReply {
                command: "LOCK.INFO",
                ..
            })
        ));
        mock.on("LOCK.INFO", [Answer::Fail]);
        assert!(matches!(lock.hold_count().await, Err(Error::Redis(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn force_release_through_the_holding_handle_marks_its_guards_lost_at_once() {
        let mock = Mock::granting();
        let lock = mock.client().lock("k");
        let guard = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        let inner = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        mock.on("LOCK.FORCERELEASE", [Answer::Int(1), Answer::Int(0)]);
        assert!(lock.force_release().await.unwrap());
        assert!(guard.is_lost() && inner.is_lost());
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert_eq!(guard.remaining(), ms(0));
        // The watchdog stopped and the guards send nothing.
        sleep(ms(30_000)).await;
        assert!(mock.sent("LOCK.RENEW").is_empty());
        assert!(!guard.release().await.unwrap());
        assert!(!inner.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
        // Nothing left to remove.
        assert!(!lock.force_release().await.unwrap());
        assert_eq!(mock.args("LOCK.FORCERELEASE"), [["k"], ["k"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn force_release_through_another_handle_is_found_by_the_holders_watchdog() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        let guard = mock.guard(AcquireOptions::new()).await;
        mock.on("LOCK.FORCERELEASE", [Answer::Int(1)]);
        assert!(mock.client().lock("k").force_release().await.unwrap());
        assert!(!guard.is_lost(), "another handle's lease is not known");
        mock.on("LOCK.RENEW", [Answer::Int(0)]);
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert_eq!(Instant::now() - t0, ms(100), "at the first renewal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_after_a_wait_longer_than_the_renewal_interval_is_confirmed() {
        let mock = Mock::granting();
        let t0 = Instant::now();
        // Granted 200 ms after the send; renewals are due every 100 ms.
        mock.on("LOCK.ACQUIRE", [Answer::Late(ms(200), 7)]);
        let guard = mock
            .guard(AcquireOptions::new().wait(Wait::For(ms(1000))))
            .await;
        assert_eq!(mock.log(), ["LOCK.ACQUIRE", "LOCK.RENEW"]);
        assert_eq!(mock.sent("LOCK.RENEW"), [t0 + ms(200)]);
        // The deadline counts from the confirming renewal, not the acquire.
        assert_eq!(guard.remaining(), ms(270));
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_that_the_confirmation_finds_gone_is_handed_out_lost() {
        let mock = Mock::granting();
        mock.on("LOCK.ACQUIRE", [Answer::Late(ms(200), 7)]);
        mock.on("LOCK.RENEW", [Answer::Int(0)]);
        let guard = mock.guard(AcquireOptions::new().wait(Wait::Forever)).await;
        assert!(guard.is_lost());
        assert_eq!(guard.lost().await, LeaseLost::NotHeld);
        assert!(!guard.release().await.unwrap());
        assert!(mock.sent("LOCK.RELEASE").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_after_a_short_wait_needs_no_confirmation() {
        let mock = Mock::granting();
        mock.on("LOCK.ACQUIRE", [Answer::Late(ms(50), 7)]);
        let guard = mock
            .guard(AcquireOptions::new().wait(Wait::For(ms(1000))))
            .await;
        assert_eq!(mock.log(), ["LOCK.ACQUIRE"]);
        assert_eq!(guard.remaining(), ms(220));
        assert_eq!(mock.args("LOCK.ACQUIRE")[0][3..], ["WAIT", "1000"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_too_few_replicas_acknowledged_is_released_and_refused() {
        let mock = Mock::granting();
        mock.on("WAIT", [Answer::Int(0)]);
        let lock = mock.client().lock("k");
        let refused = lock
            .acquire(AcquireOptions::new().replicas(1, ms(50)))
            .await;
        match refused {
            Err(Error::NotDurable {
                acked,
                wanted,
                timeout,
            }) => assert_eq!((acked, wanted, timeout), (0, 1, ms(50))),
            other => panic!("expected NotDurable, got {other:?}"),
        }
        assert_eq!(mock.log(), ["LOCK.ACQUIRE", "WAIT", "LOCK.RELEASE"]);
        assert_eq!(mock.args("WAIT"), [["1", "50"]]);
        // No lease was started: nothing renews.
        sleep(ms(60_000)).await;
        assert!(mock.sent("LOCK.RENEW").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_enough_replicas_acknowledged_is_handed_out() {
        let mock = Mock::granting();
        mock.on("WAIT", [Answer::Int(2)]);
        let (client, opened) = mock.client_with_wait_connections();
        let guard = client
            .lock("k")
            .acquire(AcquireOptions::new().replicas(2, ms(50)))
            .await
            .unwrap()
            .expect("granted");
        assert_eq!(mock.log(), ["LOCK.ACQUIRE", "WAIT"]);
        assert_eq!(opened.load(Ordering::SeqCst), 1, "a dedicated connection");
        assert!(!guard.is_lost());
        assert!(guard.release().await.unwrap());
    }
}
