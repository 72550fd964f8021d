//! [`Connection`]: what the client needs from a connection; and the
//! connections of one client: the shared one, and the way to open a dedicated
//! one for an acquire that may block on the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::error::Error;

/// What the client needs from a connection: the async connection trait of
/// the `redis` crate, cheap to clone and shareable between tasks, e.g.
/// `redis::aio::ConnectionManager` (one server, reconnects) or
/// `redis::cluster_async::ClusterConnection` (Redis Cluster).
pub trait Connection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Connection for C {}

/// Opens a dedicated connection.
pub(crate) type Connector<C> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = RedisResult<C>> + Send>> + Send + Sync>;

/// A [`Connector`] from a closure that returns a future.
pub(crate) fn connector<C, F, Fut>(connect: F) -> Connector<C>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RedisResult<C>> + Send + 'static,
{
    Arc::new(move || Box::pin(connect()))
}

/// The connections of one client, fixed when it is built.
pub(crate) struct Connections<C> {
    /// Renewals, releases, reads and non-blocking acquires go over this one.
    shared: C,
    /// Opens a dedicated connection for an acquire that may block.
    dedicated: Option<Connector<C>>,
}

impl<C> Connections<C> {
    pub fn new(shared: C, dedicated: Option<Connector<C>>) -> Self {
        Self { shared, dedicated }
    }

    /// Whether acquires that may block get a dedicated connection.
    pub fn has_dedicated(&self) -> bool {
        self.dedicated.is_some()
    }
}

impl<C: Connection> Connections<C> {
    /// The shared connection.
    pub fn shared(&self) -> C {
        self.shared.clone()
    }

    /// The connection for an acquire: a new dedicated one when it may block
    /// on the server and the client has a way to open one, else the shared
    /// one.
    pub async fn for_acquire(&self, may_block: bool) -> Result<C, Error> {
        match &self.dedicated {
            Some(connect) if may_block => Ok(connect().await?),
            _ => Ok(self.shared()),
        }
    }
}
