//! The client library under the load generator: this crate's RESP client
//! ([`Client`], always), or the `redis` crate ([`CrateClient`], for the
//! client A/B only: `--client-ab`, see `client_ab.rs`). On the crate:
//! multiplexed async connections (TCP_NODELAY, no response timeout), a
//! pipeline per round trip, and a RESP3 push channel for subscriptions. The
//! lock commands and the reply checks are the same code for both.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{BenchError, Result};
use crate::locks::{Client, Link, Queue};
use crate::resp::Reply;

/// Which client library a load connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientLib {
    /// This crate's RESP client (`resp.rs`).
    Resp,
    /// The `redis` crate.
    Crate,
}

impl ClientLib {
    /// The name used in tables.
    pub fn label(self) -> &'static str {
        match self {
            ClientLib::Resp => "hand-written",
            ClientLib::Crate => "redis crate",
        }
    }
}

/// A lock client on either library: what the throughput and hand-off
/// scenarios run on.
pub enum LoadClient {
    /// This crate's RESP client.
    Resp(Client),
    /// The `redis` crate.
    Crate(CrateClient),
}

impl LoadClient {
    /// Connects to 127.0.0.1:`port` on `lib`; with a subscription
    /// connection when `pubsub`.
    pub async fn connect(lib: ClientLib, port: u16, pubsub: bool) -> Result<LoadClient> {
        Ok(match lib {
            ClientLib::Resp => LoadClient::Resp(Client::connect(port, pubsub).await?),
            ClientLib::Crate => LoadClient::Crate(CrateClient::connect(port, pubsub).await?),
        })
    }
}

impl Link for LoadClient {
    async fn round_trip(
        &mut self,
        n: usize,
        queue: impl Fn(&mut dyn Queue),
        check: impl FnMut(&Reply) -> Result<()>,
    ) -> Result<()> {
        match self {
            LoadClient::Resp(c) => c.round_trip(n, queue, check).await,
            LoadClient::Crate(c) => c.round_trip(n, queue, check).await,
        }
    }

    async fn call_within(
        &mut self,
        queue: impl Fn(&mut dyn Queue),
        limit: Duration,
    ) -> Result<Option<Reply>> {
        match self {
            LoadClient::Resp(c) => c.call_within(queue, limit).await,
            LoadClient::Crate(c) => c.call_within(queue, limit).await,
        }
    }

    async fn subscribe(&mut self, channel: &[u8]) -> Result<()> {
        match self {
            LoadClient::Resp(c) => c.subscribe(channel).await,
            LoadClient::Crate(c) => c.subscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &[u8]) -> Result<()> {
        match self {
            LoadClient::Resp(c) => c.unsubscribe(channel).await,
            LoadClient::Crate(c) => c.unsubscribe(channel).await,
        }
    }

    async fn message_within(&mut self, limit: Duration) -> Result<bool> {
        match self {
            LoadClient::Resp(c) => c.message_within(limit).await,
            LoadClient::Crate(c) => c.message_within(limit).await,
        }
    }
}

/// A lock client on the `redis` crate.
pub struct CrateClient {
    cmd: MultiplexedConnection,
    /// A RESP3 connection for subscriptions and its pushed messages.
    sub: Option<(MultiplexedConnection, UnboundedReceiver<PushInfo>)>,
}

fn client(port: u16, protocol: redis::ProtocolVersion) -> Result<redis::Client> {
    let addr = redis::ConnectionAddr::Tcp("127.0.0.1".into(), port);
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let settings = info.redis_settings().clone().set_protocol(protocol);
    Ok(redis::Client::open(info.set_redis_settings(settings))?)
}

fn config() -> redis::AsyncConnectionConfig {
    // No response timeout: blocking acquires wait as long as they need
    // (every wait is bounded by the caller).
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)))
}

/// A `redis` crate value in the hand-written client's terms, so that the
/// same code reads the replies.
fn to_reply(v: Value) -> Reply {
    match v {
        Value::Nil => Reply::Nil,
        Value::Int(n) => Reply::Int(n),
        Value::BulkString(b) => Reply::Bulk(b),
        Value::SimpleString(s) => Reply::Status(s),
        Value::Okay => Reply::Status("OK".into()),
        Value::Array(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        other => Reply::Error(format!("{other:?}")),
    }
}

impl CrateClient {
    /// Connects to 127.0.0.1:`port` (RESP2); with a RESP3 connection for
    /// subscriptions when `pubsub`.
    pub async fn connect(port: u16, pubsub: bool) -> Result<CrateClient> {
        let cmd = client(port, redis::ProtocolVersion::RESP2)?
            .get_multiplexed_async_connection_with_config(&config())
            .await?;
        let sub = match pubsub {
            true => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let conn = client(port, redis::ProtocolVersion::RESP3)?
                    .get_multiplexed_async_connection_with_config(&config().set_push_sender(tx))
                    .await?;
                Some((conn, rx))
            }
            false => None,
        };
        Ok(CrateClient { cmd, sub })
    }

    fn sub(&mut self) -> Result<&mut (MultiplexedConnection, UnboundedReceiver<PushInfo>)> {
        self.sub
            .as_mut()
            .ok_or_else(|| BenchError::Setup("a client without a pub/sub connection".into()))
    }
}

impl Link for CrateClient {
    async fn round_trip(
        &mut self,
        _n: usize,
        queue: impl Fn(&mut dyn Queue),
        mut check: impl FnMut(&Reply) -> Result<()>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        queue(&mut pipe);
        let replies: Vec<Value> = pipe.query_async(&mut self.cmd).await?;
        for v in replies {
            check(&to_reply(v))?;
        }
        Ok(())
    }

    async fn call_within(
        &mut self,
        queue: impl Fn(&mut dyn Queue),
        limit: Duration,
    ) -> Result<Option<Reply>> {
        let mut cmd = redis::Cmd::new();
        queue(&mut cmd);
        match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut self.cmd)).await {
            Ok(v) => Ok(Some(to_reply(v?))),
            Err(_) => Ok(None),
        }
    }

    async fn subscribe(&mut self, channel: &[u8]) -> Result<()> {
        let (conn, rx) = self.sub()?;
        conn.subscribe(channel).await?;
        while rx.try_recv().is_ok() {}
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: &[u8]) -> Result<()> {
        // Not waited for, as on the hand-written client.
        let (conn, _) = self.sub()?;
        let (mut conn, channel) = (conn.clone(), channel.to_vec());
        tokio::spawn(async move {
            let _ = conn.unsubscribe(channel).await;
        });
        Ok(())
    }

    async fn message_within(&mut self, limit: Duration) -> Result<bool> {
        let (_, rx) = self.sub()?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) if p.kind == PushKind::Message => return Ok(true),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Ok(false),
            }
        }
    }
}
