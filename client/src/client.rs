//! [`Client`]: the connection(s), the client's random id, and the numbering
//! of lock handles.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisResult};
use uuid::Uuid;

use crate::error::Error;
use crate::lock::Lock;

/// What the client needs from a connection: the async connection trait of
/// the `redis` crate, cheap to clone and shareable between tasks, e.g.
/// [`ConnectionManager`] (one server, reconnects) or
/// `redis::cluster_async::ClusterConnection` (Redis Cluster).
pub trait Connection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Connection for C {}

type Connector<C> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = RedisResult<C>> + Send>> + Send + Sync>;

/// A lock client: one random UUID, one shared connection, and the lock
/// handles taken from it. Cheap to clone (clones share the UUID and the
/// handle counter).
///
/// ```no_run
/// # async fn run() -> Result<(), fencelock_client::Error> {
/// let client = fencelock_client::Client::connect("redis://127.0.0.1:6379/").await?;
/// let lock = client.lock("jobs:nightly");
/// # Ok(()) }
/// ```
pub struct Client<C> {
    pub(crate) inner: Arc<ClientInner<C>>,
}

pub(crate) struct ClientInner<C> {
    /// Renewals, releases and non-blocking acquires go over this one.
    pub conn: C,
    id: Uuid,
    next_handle: Arc<AtomicU64>,
    /// Opens a dedicated connection for an acquire that may block on the
    /// server.
    wait_connector: Option<Connector<C>>,
}

impl<C> Clone for Client<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.id)
            .field("wait_connections", &self.inner.wait_connector.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: Connection> Client<C> {
    /// A client over `conn`, with a new random UUID.
    ///
    /// Every command goes over `conn`, including acquires that block on the
    /// server (a [`Wait`](crate::Wait) other than `No`, or
    /// [`replicas`](crate::AcquireOptions::replicas)). A blocked command
    /// holds up everything queued behind it on the same connection —
    /// including the renewals of this client's other locks — and must not be
    /// cut short by the connection's response timeout; so when you use
    /// waiting or durable acquires, also call
    /// [`with_wait_connections`](Self::with_wait_connections) (as
    /// [`Client::connect`] does).
    pub fn new(conn: C) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                conn,
                id: Uuid::new_v4(),
                next_handle: Arc::new(AtomicU64::new(0)),
                wait_connector: None,
            }),
        }
    }

    /// Opens a dedicated connection with `connect` for each acquire that may
    /// block on the server, and closes it afterwards. Give it a connection
    /// without a response timeout (or one longer than your waits and replica
    /// timeouts), e.g. `ConnectionManagerConfig::new().set_response_timeout(None)`.
    /// Call it before taking lock handles: handles keep the client they were
    /// taken from.
    pub fn with_wait_connections<F, Fut>(self, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RedisResult<C>> + Send + 'static,
    {
        let connector: Connector<C> = Arc::new(move || Box::pin(connect()));
        Self {
            inner: Arc::new(ClientInner {
                conn: self.inner.conn.clone(),
                id: self.inner.id,
                next_handle: Arc::clone(&self.inner.next_handle),
                wait_connector: Some(connector),
            }),
        }
    }

    /// The client's random UUID, the first part of every owner string.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// A new lock handle for `key`, with its own owner string
    /// `<uuid>:<n>`. Acquires through one handle re-enter; two handles
    /// exclude each other, also within one process. Cloning a handle keeps
    /// its owner.
    pub fn lock(&self, key: impl AsRef<[u8]>) -> Lock<C> {
        let n = self.inner.next_handle.fetch_add(1, Ordering::Relaxed) + 1;
        let owner = format!("{}:{n}", self.inner.id);
        Lock::new(Arc::clone(&self.inner), key.as_ref().to_vec(), owner)
    }
}

impl<C: Connection> ClientInner<C> {
    /// The connection for an acquire that may block on the server.
    pub(crate) async fn blocking_connection(&self) -> Result<C, Error> {
        match &self.wait_connector {
            Some(connect) => Ok(connect().await?),
            None => Ok(self.conn.clone()),
        }
    }
}

impl Client<ConnectionManager> {
    /// Connects to one server: a [`ConnectionManager`] (reconnects by
    /// itself; the `redis` crate's default response timeout) for renewals
    /// and releases, and a dedicated one without response timeout for each
    /// waiting or durable acquire.
    pub async fn connect(info: impl IntoConnectionInfo) -> Result<Self, Error> {
        let redis_client = redis::Client::open(info)?;
        let conn = redis_client.get_connection_manager().await?;
        Ok(Self::new(conn).with_wait_connections(move || {
            let redis_client = redis_client.clone();
            async move {
                let config = ConnectionManagerConfig::new().set_response_timeout(None);
                redis_client
                    .get_connection_manager_with_config(config)
                    .await
            }
        }))
    }
}
