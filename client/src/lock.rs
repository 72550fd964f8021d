//! [`Lock`]: a handle on one key with one owner string — acquiring (in its
//! steps: send, check the replicas, confirm after a wait, hand out the
//! guard), and the calls that look at or clear the lock on the server.

use std::fmt;
use std::sync::Arc;

use redis::{Cmd, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::commands::{self, show};
use crate::connection::{Connection, Connections};
use crate::error::{Error, LeaseLost};
use crate::guard::Guard;
use crate::handle::{Handle, Recorded};
use crate::info::LockInfo;
use crate::options::{AcquireOptions, Durability, LeaseParams};
use crate::watchdog;

/// A lock handle: one key, one owner string (`<client uuid>:<n>`).
///
/// Take it from [`Client::lock`](crate::Client::lock). Acquiring through the
/// same handle again while it holds the lock re-enters (the server counts
/// holds; the token stays the same); another handle, of this client or any
/// other, is excluded. Cloning the handle keeps the owner.
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

/// One acquire as it goes to the server.
struct Attempt {
    /// The lease's parameters: the held lease's on a re-entry.
    params: LeaseParams,
    /// `LOCK.ACQUIRE`'s `WAIT` argument.
    wait_ms: Option<u64>,
    /// The replication `WAIT` after the grant.
    durability: Option<Durability>,
}

impl Attempt {
    /// Whether the request may block on the server (a queue wait or a
    /// replication `WAIT`).
    fn may_block(&self) -> bool {
        self.wait_ms.is_some() || self.durability.is_some()
    }
}

/// What the server answered to an [`Attempt`].
struct Reply {
    /// The fencing token, `None` when not granted.
    token: Option<u64>,
    /// When `LOCK.ACQUIRE` was sent.
    sent: Instant,
    /// With durability: what was asked for, and `WAIT`'s reply.
    replicas: Option<(Durability, Result<u64, Error>)>,
}

/// When the lease of a grant was last confirmed.
struct Confirmed {
    /// The send time the local deadline counts from.
    sent: Instant,
    /// A confirming renewal said the lock is already gone.
    gone: bool,
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
    /// the options are invalid, the connection failed (the lock may then
    /// have been granted: it expires after its ttl), or the grant was not
    /// acknowledged by enough replicas (then it has been released).
    ///
    /// A re-entry joins the lease the handle already holds: it refreshes it
    /// with that lease's own ttl, keeps that lease's watchdog, and its guard
    /// shares the lease's token and [`lost`](Guard::lost) signal; only the
    /// wait and replica options of a re-entry apply.
    ///
    /// Cancelling a waiting acquire (dropping the future) closes its
    /// dedicated connection, which takes it out of the server's queue; a
    /// grant that raced with that is never renewed and expires after its ttl.
    pub async fn acquire(&self, options: AcquireOptions) -> Result<Option<Guard<C>>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let fresh_params = options.params()?;
        let _op = self.handle.ops.lock().await;
        let held = self.handle.live_lease();
        let attempt = Attempt {
            // A re-entry keeps the held lease's parameters (one fixed ttl
            // per lease is what keeps the local deadline safe).
            params: held.as_ref().map_or(fresh_params, |l| l.params),
            wait_ms: options.wait_ms(),
            durability: options.durability(),
        };
        let reply = self.send(&attempt).await?;
        let Some(token) = reply.token else {
            self.not_granted();
            return Ok(None);
        };
        let reentry = held.is_some_and(|l| l.token == token);
        if let Some((d, acked)) = reply.replicas {
            self.check_replicas(d, acked, token, reentry).await?;
        }
        let confirmed = self.confirm_after_wait(&attempt, token, reply.sent).await;
        Ok(Some(self.hand_out(
            token,
            attempt.params,
            confirmed,
            &runtime,
        )))
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
    /// RESP2 or RESP3.
    pub async fn info(&self) -> Result<Option<LockInfo>, Error> {
        let mut conn = self.handle.conn();
        let reply: Value = commands::info(&self.handle.key)
            .query_async(&mut conn)
            .await?;
        commands::lock_info(reply)
    }

    /// Whether anyone (this handle or another owner) holds the lock now,
    /// as the server says.
    pub async fn is_locked(&self) -> Result<bool, Error> {
        Ok(self.info().await?.is_some())
    }

    /// How many holds this handle's owner has on the server now (each
    /// re-entry adds one): 0 when the lock is free or held by another owner.
    pub async fn hold_count(&self) -> Result<u64, Error> {
        Ok(self
            .info()
            .await?
            .filter(|info| info.owner == self.handle.owner)
            .map_or(0, |info| info.holds))
    }

    /// Removes the lock whoever holds it (`LOCK.FORCERELEASE`, an
    /// administrative command that ACLs may deny); the first waiter in the
    /// server's queue gets it. Returns whether there was a lock to remove.
    ///
    /// If this handle held the lock, its guards know at once: their
    /// [`lost`](Guard::lost) completes with [`LeaseLost::NotHeld`] and they
    /// send no release. Another holder's watchdog learns it at its next
    /// renewal.
    pub async fn force_release(&self) -> Result<bool, Error> {
        let h = &self.handle;
        // The lease held when the request goes out: one granted later (to a
        // concurrent acquire of this handle) may well outlive it.
        let held = h.live_lease();
        let mut conn = h.conn();
        let reply: Value = commands::force_release(&h.key)
            .query_async(&mut conn)
            .await?;
        let removed = commands::forced(reply)?;
        // Whatever the reply, that lease is gone from the server now.
        if let Some(lease) = held.filter(|lease| lease.lose(LeaseLost::NotHeld)) {
            warn!(key = %show(&h.key), owner = %h.owner, token = lease.token, "lock force-released through its own handle");
        }
        Ok(removed)
    }

    /// Sends the `LOCK.ACQUIRE` (in one pipeline with the replication
    /// `WAIT` when durability is asked for), over a dedicated connection
    /// when it may block.
    async fn send(&self, attempt: &Attempt) -> Result<Reply, Error> {
        let h = &self.handle;
        let mut conn = h.connections.for_acquire(attempt.may_block()).await?;
        let cmd = commands::acquire(&h.key, &h.owner, attempt.params.ttl_ms(), attempt.wait_ms);
        let sent = Instant::now();
        let (token, replicas) = match attempt.durability {
            None => (commands::token(cmd.query_async(&mut conn).await?)?, None),
            Some(d) => {
                let (token, acked) = acquire_and_wait(&mut conn, cmd, d).await?;
                (token, Some((d, acked)))
            }
        };
        Ok(Reply {
            token,
            sent,
            replicas,
        })
    }

    /// Not granted: another owner holds the lock, so a lease this handle
    /// still counted on is gone.
    fn not_granted(&self) {
        let h = &self.handle;
        if let Some(token) = h.lose_live_lease(LeaseLost::NotHeld) {
            warn!(key = %show(&h.key), owner = %h.owner, token, "lock re-entry found the lease lost");
        }
        debug!(key = %show(&h.key), owner = %h.owner, "lock not granted");
    }

    /// Fails the acquire, after giving the grant back, when fewer replicas
    /// than asked acknowledged it.
    async fn check_replicas(
        &self,
        d: Durability,
        acked: Result<u64, Error>,
        token: u64,
        reentry: bool,
    ) -> Result<(), Error> {
        let Err(e) = check_durability(d, acked) else {
            return Ok(());
        };
        let h = &self.handle;
        warn!(key = %show(&h.key), owner = %h.owner, token, error = %e, "grant not acknowledged by replicas; releasing it");
        if !reentry {
            // A new token: the lease this handle held had ended.
            h.lose_live_lease(LeaseLost::NotHeld);
        }
        h.undo_grant(reentry).await;
        Err(e)
    }

    /// The grant may have come at any time during a wait: when it came
    /// later than a renewal interval after the send, confirms the lease
    /// with a renewal, so that the local deadline is measured from a known
    /// send time. (If that fails, the watchdog finds the deadline near or
    /// past and says so.)
    async fn confirm_after_wait(&self, attempt: &Attempt, token: u64, sent: Instant) -> Confirmed {
        let unconfirmed = Confirmed { sent, gone: false };
        if !attempt.may_block() || Instant::now() < sent + attempt.params.renew_every {
            return unconfirmed;
        }
        let h = &self.handle;
        let confirm_sent = Instant::now();
        match h.renew(&mut h.conn(), attempt.params.ttl_ms()).await {
            Ok(true) => Confirmed {
                sent: confirm_sent,
                gone: false,
            },
            Ok(false) => Confirmed { sent, gone: true },
            Err(e) => {
                warn!(key = %show(&h.key), owner = %h.owner, token, error = %e, "could not confirm a lease granted after a wait");
                unconfirmed
            }
        }
    }

    /// Records the grant (joining the held lease or starting a new one with
    /// its watchdog) and hands out its guard.
    fn hand_out(
        &self,
        token: u64,
        params: LeaseParams,
        confirmed: Confirmed,
        runtime: &tokio::runtime::Handle,
    ) -> Guard<C> {
        let h = &self.handle;
        let lease = match h.record_grant(token, params, confirmed.sent) {
            Recorded::Joined(lease) => lease,
            Recorded::Started(lease) => {
                watchdog::spawn(runtime, Arc::clone(&lease), Arc::clone(h));
                lease
            }
        };
        if confirmed.gone {
            // Granted, then gone before the confirmation (a ttl shorter than
            // the round trip): the guard is handed out already lost.
            lease.lose(LeaseLost::NotHeld);
        }
        Guard::new(Arc::clone(h), lease)
    }
}

/// `LOCK.ACQUIRE` and the replication `WAIT` in one pipeline, so that the
/// `WAIT` runs on the same server connection right after the grant: it then
/// counts the replicas that have the grant, and on a cluster connection it is
/// routed with the key (a lone `WAIT` goes to every primary). Returns the
/// token and `WAIT`'s reply.
async fn acquire_and_wait<C: Connection>(
    conn: &mut C,
    acquire: Cmd,
    d: Durability,
) -> Result<(Option<u64>, Result<u64, Error>), Error> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .add_command(acquire)
        .add_command(commands::wait_replicas(d));
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let token = commands::token(replies.next().unwrap_or(Value::Nil))?;
    let acked = replies
        .next()
        .ok_or_else(|| Error::UnexpectedReply {
            command: "WAIT",
            reply: "no reply".into(),
        })
        .and_then(commands::acked);
    Ok((token, acked))
}

fn check_durability(d: Durability, acked: Result<u64, Error>) -> Result<(), Error> {
    let acked = acked?;
    if acked >= d.replicas {
        Ok(())
    } else {
        Err(Error::NotDurable {
            acked,
            wanted: d.replicas,
            timeout: std::time::Duration::from_millis(d.timeout_ms),
        })
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
