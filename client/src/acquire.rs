//! One acquire through a handle, in its steps — send (again, with the same
//! request id, while no answer comes), check the replicas, confirm after a
//! wait, hand out the guard — the same for an exclusive lock, a read or
//! write lock and semaphore permits (the [`Request`]).

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::commands::{self, show, Request};
use crate::connection::Connection;
use crate::error::{Error, LeaseLost};
use crate::guard::Guard;
use crate::handle::{Handle, Recorded};
use crate::lease::Hold;
use crate::options::{ceil_ms, AcquireOptions, Durability, LeaseParams};
use crate::retry::Retries;
use crate::watchdog;

/// One acquire as it goes to the server.
struct Attempt {
    /// What is asked for.
    request: Request,
    /// The lease's parameters: the held lease's on a re-entry.
    params: LeaseParams,
    /// `LOCK.ACQUIRE`'s `WAIT` argument (`Some(0)`: no limit) for the
    /// first attempt.
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

    /// How long the acquire is retried while no answer comes: as long as it
    /// may block on the server (its wait, then the replicas' `WAIT`
    /// timeout), and at least for the ttl (after which a grant of a lost
    /// attempt has expired anyway); `None` for a wait without limit.
    fn retry_window(&self) -> Option<Duration> {
        let replicas = self
            .durability
            .map_or(Duration::ZERO, |d| Duration::from_millis(d.timeout_ms));
        let blocks = match self.wait_ms {
            None => replicas,
            Some(0) => return None,
            Some(ms) => Duration::from_millis(ms) + replicas,
        };
        Some(self.params.ttl.max(blocks))
    }

    /// The `WAIT` argument of an attempt sent at `now` when the first was
    /// sent at `first_sent`: the wait that is left, at least 1 ms (0 would
    /// mean no limit).
    fn wait_ms_left(&self, first_sent: Instant, now: Instant) -> Option<u64> {
        match self.wait_ms {
            None => None,
            Some(0) => Some(0),
            Some(ms) => {
                let end = first_sent + Duration::from_millis(ms);
                let left = ceil_ms(end.saturating_duration_since(now));
                Some(left.clamp(1, u128::from(ms)) as u64)
            }
        }
    }

    /// What the guard of a grant stands for.
    fn hold(&self) -> Hold {
        match self.request {
            Request::Exclusive => Hold::Exclusive,
            Request::Shared => Hold::Shared,
            Request::Permits { count, .. } => Hold::Permits(u64::from(count)),
        }
    }
}

/// What the server answered to an [`Attempt`].
struct Reply {
    /// The fencing token, `None` when not granted.
    token: Option<u64>,
    /// When the first attempt of `LOCK.ACQUIRE` was sent (the grant, to
    /// whichever attempt, came no earlier).
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

/// Takes (or re-enters) what `request` asks for through `handle`, as
/// `options` say: `Ok(Some(guard))` when granted, `Ok(None)` when not (after
/// the wait, if one was asked for).
///
/// A re-entry joins the lease the handle already holds: it refreshes it
/// with that lease's own ttl (one fixed ttl per lease keeps the local
/// deadline safe), keeps that lease's watchdog, and its guard shares the
/// lease's token and `lost` signal.
pub(crate) async fn acquire<C: Connection>(
    handle: &Arc<Handle<C>>,
    request: Request,
    options: AcquireOptions,
) -> Result<Option<Guard<C>>, Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let fresh_params = options.params()?;
    let _acquiring = handle.acquiring.lock().await;
    let held = handle.live_lease();
    let attempt = Attempt {
        request,
        params: held.as_ref().map_or(fresh_params, |l| l.params),
        wait_ms: options.wait_ms(),
        durability: options.durability(),
    };
    let in_flight = handle.in_flight();
    let reply = send(handle, &attempt).await?;
    let _op = handle.ops.lock().await;
    // From here on no release of the handle runs until the grant is
    // recorded.
    drop(in_flight);
    let Some(token) = reply.token else {
        not_granted(handle, request);
        return Ok(None);
    };
    let reentry = held.is_some_and(|l| l.token == token);
    if let Some((d, acked)) = reply.replicas {
        check_replicas(handle, &attempt, d, acked, token, reentry).await?;
    }
    let confirmed = confirm_after_wait(handle, &attempt, token, reply.sent).await;
    Ok(Some(hand_out(handle, &attempt, token, confirmed, &runtime)))
}

/// Sends the `LOCK.ACQUIRE` (in one pipeline with the replication `WAIT`
/// when durability is asked for), over a dedicated connection when it may
/// block, with the handle's next request id; while no answer comes, sends it
/// again with the same id over a working connection (the shared one
/// reconnects; a dedicated one is opened anew) until the retry window closes.
/// The server's refusal of an upgrade is [`Error::Upgrade`].
async fn send<C: Connection>(handle: &Handle<C>, attempt: &Attempt) -> Result<Reply, Error> {
    let id = handle.request_id("acquire");
    let mut retries = Retries::new("acquire", attempt.retry_window());
    loop {
        match retries
            .attempt(send_once(handle, attempt, &id, &retries))
            .await
        {
            Ok((token, replicas)) => {
                return Ok(Reply {
                    token,
                    sent: retries.first_sent(),
                    replicas,
                })
            }
            Err(Error::Redis(e)) if commands::is_upgrade(&e) => return Err(Error::Upgrade),
            Err(e) => retries.after(e, &handle.key, &handle.owner).await?,
        }
    }
}

/// The token, and with durability what was asked for and `WAIT`'s reply.
type Answer = (Option<u64>, Option<(Durability, Result<u64, Error>)>);

/// One attempt of [`send`], on a connection of its own.
async fn send_once<C: Connection>(
    handle: &Handle<C>,
    attempt: &Attempt,
    id: &str,
    retries: &Retries,
) -> Result<Answer, Error> {
    let mut conn = handle.connections.for_acquire(attempt.may_block()).await?;
    let cmd = commands::acquire(
        &handle.key,
        &handle.owner,
        attempt.params.ttl_ms(),
        attempt.request,
        attempt.wait_ms_left(retries.first_sent(), Instant::now()),
        id,
    );
    match attempt.durability {
        None => match cmd.query_async(&mut conn).await {
            Ok(reply) => commands::token(reply).map(|token| (token, None)),
            Err(e) => Err(Error::Redis(e)),
        },
        Some(d) => acquire_and_wait(&mut conn, cmd, d)
            .await
            .map(|(token, acked)| (token, Some((d, acked)))),
    }
}

/// Not granted. For a lock (exclusive or shared), an owner that holds the
/// key is never refused — it re-enters, or gets the upgrade error — so a
/// lease this handle still counted on is gone. A semaphore may refuse more
/// permits to an owner that holds some: its lease stays.
fn not_granted<C: Connection>(handle: &Handle<C>, request: Request) {
    if !matches!(request, Request::Permits { .. }) {
        if let Some(token) = handle.lose_live_lease(LeaseLost::NotHeld) {
            warn!(key = %show(&handle.key), owner = %handle.owner, token, "lock re-entry found the lease lost");
        }
    }
    debug!(key = %show(&handle.key), owner = %handle.owner, ?request, "lock not granted");
}

/// Fails the acquire, after giving the grant back, when fewer replicas
/// than asked acknowledged it.
async fn check_replicas<C: Connection>(
    handle: &Handle<C>,
    attempt: &Attempt,
    d: Durability,
    acked: Result<u64, Error>,
    token: u64,
    reentry: bool,
) -> Result<(), Error> {
    let Err(e) = check_durability(d, acked) else {
        return Ok(());
    };
    warn!(key = %show(&handle.key), owner = %handle.owner, token, error = %e, "grant not acknowledged by replicas; releasing it");
    if !reentry {
        // A new token: the lease this handle held had ended.
        handle.lose_live_lease(LeaseLost::NotHeld);
    }
    handle
        .undo_grant(attempt.hold(), reentry, attempt.params.ttl)
        .await;
    Err(e)
}

/// The grant may have come at any time during a wait: when it came later
/// than a renewal interval after the send, confirms the lease with a
/// renewal, so that the local deadline is measured from a known send time.
/// (If that fails, the watchdog finds the deadline near or past and says
/// so.)
async fn confirm_after_wait<C: Connection>(
    handle: &Handle<C>,
    attempt: &Attempt,
    token: u64,
    sent: Instant,
) -> Confirmed {
    let unconfirmed = Confirmed { sent, gone: false };
    if !attempt.may_block() || Instant::now() < sent + attempt.params.renew_every {
        return unconfirmed;
    }
    let confirm_sent = Instant::now();
    match handle
        .renew(&mut handle.conn(), attempt.params.ttl_ms())
        .await
    {
        Ok(true) => Confirmed {
            sent: confirm_sent,
            gone: false,
        },
        Ok(false) => Confirmed { sent, gone: true },
        Err(e) => {
            warn!(key = %show(&handle.key), owner = %handle.owner, token, error = %e, "could not confirm a lease granted after a wait");
            unconfirmed
        }
    }
}

/// Records the grant (joining the held lease or starting a new one with
/// its watchdog) and hands out its guard.
fn hand_out<C: Connection>(
    handle: &Arc<Handle<C>>,
    attempt: &Attempt,
    token: u64,
    confirmed: Confirmed,
    runtime: &tokio::runtime::Handle,
) -> Guard<C> {
    let hold = attempt.hold();
    let lease = match handle.record_grant(token, attempt.params, hold, confirmed.sent) {
        Recorded::Joined(lease) => lease,
        Recorded::Started(lease) => {
            watchdog::spawn(runtime, Arc::clone(&lease), Arc::clone(handle));
            lease
        }
    };
    if confirmed.gone {
        // Granted, then gone before the confirmation (a ttl shorter than
        // the round trip): the guard is handed out already lost.
        lease.lose(LeaseLost::NotHeld);
    }
    Guard::new(Arc::clone(handle), lease, hold)
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
