//! What the implementations share: where their commands are queued, the
//! connections a lock client talks through, and what replies say in common
//! terms.

use std::time::Duration;

use crate::error::{BenchError, Result};
use crate::resp::{Conn, Reply};

/// What an acquire reply says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is ours.
    Granted,
    /// Another owner holds it; its remaining ttl when the reply tells.
    Busy { holder_ttl_ms: Option<i64> },
}

/// How one blocking acquire ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitOutcome {
    /// True when the lock was granted before the give-up time.
    pub granted: bool,
    /// Acquire requests answered "busy" (or a timed-out wait) on the way.
    pub wasted: u64,
}

/// Where commands are queued: this crate's connection, or a `redis` crate
/// command or pipeline (for the client A/B, `scenarios::client_lib`).
pub trait Queue {
    /// Appends one command.
    fn queue(&mut self, args: &[&[u8]]);
}

impl Queue for Conn {
    fn queue(&mut self, args: &[&[u8]]) {
        Conn::queue(self, args);
    }
}

impl Queue for redis::Cmd {
    /// Appends the arguments: queue one command on an empty `Cmd`.
    fn queue(&mut self, args: &[&[u8]]) {
        for a in args {
            self.arg(*a);
        }
    }
}

impl Queue for redis::Pipeline {
    fn queue(&mut self, args: &[&[u8]]) {
        let mut c = redis::Cmd::new();
        c.queue(args);
        self.add_command(c);
    }
}

/// How long a plain command may take to answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The connections of one lock client — commands, and for the
/// Redisson-style waiters a subscription — as every load loop uses them.
/// [`Client`] is this crate's RESP client; the client A/B has one on the
/// `redis` crate.
#[allow(async_fn_in_trait, reason = "used with concrete types only")]
pub trait Link {
    /// Sends the `n` commands `queue` queues in one round trip and passes
    /// every reply, in order, to `check`.
    async fn round_trip(
        &mut self,
        n: usize,
        queue: impl Fn(&mut dyn Queue),
        check: impl FnMut(&Reply) -> Result<()>,
    ) -> Result<()>;

    /// Sends the one command `queue` queues; its reply, or `None` when none
    /// came within `limit`.
    async fn call_within(
        &mut self,
        queue: impl Fn(&mut dyn Queue),
        limit: Duration,
    ) -> Result<Option<Reply>>;

    /// Subscribes to `channel` and waits for the confirmation; messages
    /// that arrived before it (from an earlier subscription) are dropped.
    async fn subscribe(&mut self, channel: &[u8]) -> Result<()>;

    /// Unsubscribes from `channel` without waiting for the confirmation.
    async fn unsubscribe(&mut self, channel: &[u8]) -> Result<()>;

    /// Waits at most `limit` for a message: true when one came.
    async fn message_within(&mut self, limit: Duration) -> Result<bool>;

    /// [`Link::call_within`] with [`REPLY_TIMEOUT`]; no reply is an error.
    async fn call(&mut self, queue: impl Fn(&mut dyn Queue)) -> Result<Reply> {
        self.call_within(queue, REPLY_TIMEOUT)
            .await?
            .ok_or_else(|| BenchError::Timeout(format!("no reply within {REPLY_TIMEOUT:?}")))
    }
}

/// A lock client on this crate's RESP client.
pub struct Client {
    cmd: Conn,
    sub: Option<Conn>,
}

impl Client {
    /// Connects to 127.0.0.1:`port`; with a second connection for
    /// subscriptions when `pubsub`.
    pub async fn connect(port: u16, pubsub: bool) -> Result<Client> {
        let cmd = Conn::connect(port).await?;
        let sub = match pubsub {
            true => Some(Conn::connect(port).await?),
            false => None,
        };
        Ok(Client { cmd, sub })
    }

    fn sub(&mut self) -> Result<&mut Conn> {
        self.sub
            .as_mut()
            .ok_or_else(|| BenchError::Setup("a client without a pub/sub connection".into()))
    }
}

/// Is `r` a pub/sub frame of `kind` ("message", "subscribe", ...)?
fn is_frame(r: &Reply, kind: &[u8]) -> bool {
    matches!(r, Reply::Array(items) if matches!(items.first(), Some(Reply::Bulk(k)) if k == kind))
}

impl Link for Client {
    async fn round_trip(
        &mut self,
        n: usize,
        queue: impl Fn(&mut dyn Queue),
        mut check: impl FnMut(&Reply) -> Result<()>,
    ) -> Result<()> {
        queue(&mut self.cmd);
        self.cmd.flush().await?;
        for _ in 0..n {
            check(&self.cmd.read_reply().await?)?;
        }
        Ok(())
    }

    async fn call_within(
        &mut self,
        queue: impl Fn(&mut dyn Queue),
        limit: Duration,
    ) -> Result<Option<Reply>> {
        queue(&mut self.cmd);
        self.cmd.flush().await?;
        self.cmd.read_reply_within(limit).await
    }

    async fn subscribe(&mut self, channel: &[u8]) -> Result<()> {
        let sub = self.sub()?;
        sub.queue(&[b"SUBSCRIBE", channel]);
        sub.flush().await?;
        for _ in 0..100_000 {
            let r = sub.read_reply().await?;
            if is_frame(&r, b"subscribe") {
                return Ok(());
            }
            if let Reply::Error(_) = r {
                return Err(BenchError::unexpected("SUBSCRIBE", &r));
            }
        }
        Err(BenchError::Protocol("no SUBSCRIBE confirmation".into()))
    }

    async fn unsubscribe(&mut self, channel: &[u8]) -> Result<()> {
        // The acknowledgement is skipped by the next subscribe.
        let sub = self.sub()?;
        sub.queue(&[b"UNSUBSCRIBE", channel]);
        sub.flush().await
    }

    async fn message_within(&mut self, limit: Duration) -> Result<bool> {
        let sub = self.sub()?;
        while let Some(r) = sub.read_reply_within(limit).await? {
            if is_frame(&r, b"message") {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// How one blocking acquire of the lock family (read/write lock,
/// semaphore) ended, with every request it cost counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waited {
    /// True when granted before the give-up time.
    pub granted: bool,
    /// Requests that did not grant: refused tries, polls, a timed-out wait.
    pub wasted: u64,
    /// `SUBSCRIBE` and `UNSUBSCRIBE` requests (pub/sub waiters only).
    pub pubsub_requests: u64,
    /// Pub/sub messages received while waiting.
    pub messages: u64,
}

/// What one try of a pub/sub-waiting baseline said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Try {
    /// Granted.
    Granted,
    /// Refused; try again after a message, or at the latest after this
    /// long (when the reply gave a bound: the holder's ttl, the nearest
    /// permit expiry).
    Busy(Option<Duration>),
}

/// The Redisson way of waiting: one try; when refused, subscribe to
/// `channel`, then loop { try; wait for a message or the bound the refusal
/// gave }, and unsubscribe once granted (or at `give_up`). `queue` queues
/// one try (it may differ per try: the current time), `parse` reads its
/// reply.
pub async fn wait_on_channel(
    c: &mut impl Link,
    channel: &[u8],
    give_up: std::time::Instant,
    queue: impl Fn(&mut dyn Queue),
    parse: impl Fn(&Reply) -> Option<Try>,
    what: &str,
) -> Result<Waited> {
    let mut out = Waited::default();
    let first = c.call(&queue).await?;
    match parse(&first) {
        Some(Try::Granted) => {
            out.granted = true;
            return Ok(out);
        }
        Some(Try::Busy(_)) => out.wasted += 1,
        None => return Err(BenchError::unexpected(what, &first)),
    }
    c.subscribe(channel).await?;
    out.pubsub_requests += 1;
    loop {
        let r = c.call(&queue).await?;
        let bound = match parse(&r) {
            Some(Try::Granted) => {
                out.granted = true;
                break;
            }
            Some(Try::Busy(bound)) => bound,
            None => return Err(BenchError::unexpected(what, &r)),
        };
        out.wasted += 1;
        let now = std::time::Instant::now();
        if now >= give_up {
            break;
        }
        let limit = bound.map_or(give_up - now, |b| b.min(give_up - now));
        if !limit.is_zero() && c.message_within(limit).await? {
            out.messages += 1;
        }
    }
    c.unsubscribe(channel).await?;
    out.pubsub_requests += 1;
    Ok(out)
}
