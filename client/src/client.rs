//! [`Client`]: the connections, the client's random id, and the numbering
//! of handles (locks, read/write locks, semaphores); [`ClientBuilder`]: how
//! a client over a connection of your own is put together.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisResult};
use uuid::Uuid;

use crate::connection::{connector, Connection, Connections, Connector};
use crate::error::Error;
use crate::lock::Lock;
use crate::rw_lock::RwLock;
use crate::semaphore::Semaphore;

/// A lock client: one random UUID, its connections, and the lock handles
/// taken from it. Cheap to clone (clones share the UUID and the handle
/// counter).
///
/// ```no_run
/// # async fn run() -> Result<(), fencelock_client::Error> {
/// let client = fencelock_client::Client::connect("redis://127.0.0.1:6379/").await?;
/// let lock = client.lock("jobs:nightly");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client<C> {
    inner: Arc<ClientInner<C>>,
}

struct ClientInner<C> {
    connections: Arc<Connections<C>>,
    id: Uuid,
    next_handle: AtomicU64,
}

impl<C> fmt::Debug for Client<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.id)
            .field("wait_connections", &self.inner.connections.has_dedicated())
            .finish_non_exhaustive()
    }
}

/// Puts a [`Client`] together over a connection of your own; from
/// [`Client::builder`]. The connections are fixed when the client is built,
/// so every lock handle taken from it uses them.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use fencelock_client::Client;
/// use redis::cluster::ClusterClient;
///
/// let cluster = ClusterClient::new(vec!["redis://127.0.0.1:7000/"])?;
/// let client = Client::builder(cluster.get_async_connection().await?)
///     .wait_connections(move || {
///         let cluster = cluster.clone();
///         async move { cluster.get_async_connection().await }
///     })
///     .build();
/// # Ok(()) }
/// ```
#[must_use = "call build() to get the client"]
pub struct ClientBuilder<C> {
    conn: C,
    wait_connector: Option<Connector<C>>,
}

impl<C> fmt::Debug for ClientBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("wait_connections", &self.wait_connector.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: Connection> ClientBuilder<C> {
    /// Opens a dedicated connection with `connect` for each acquire that may
    /// block on the server (a [`Wait`](crate::Wait) other than `No`, or
    /// [`replicas`](crate::AcquireOptions::replicas)), and closes it
    /// afterwards, so that the blocked command holds up nothing else —
    /// least of all the renewals of the client's other locks. Give it a
    /// connection without a response timeout (or one longer than your waits
    /// and replica timeouts), e.g.
    /// `ConnectionManagerConfig::new().set_response_timeout(None)`.
    ///
    /// Without it, every command goes over the shared connection, including
    /// the blocking ones, which then also run into that connection's
    /// response timeout.
    pub fn wait_connections<F, Fut>(mut self, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RedisResult<C>> + Send + 'static,
    {
        self.wait_connector = Some(connector(connect));
        self
    }

    /// The client, with a new random UUID.
    pub fn build(self) -> Client<C> {
        Client {
            inner: Arc::new(ClientInner {
                connections: Arc::new(Connections::new(self.conn, self.wait_connector)),
                id: Uuid::new_v4(),
                next_handle: AtomicU64::new(0),
            }),
        }
    }
}

impl<C: Connection> Client<C> {
    /// A builder for a client over `conn` (renewals, releases, reads and
    /// acquires that do not block go over it); add
    /// [`wait_connections`](ClientBuilder::wait_connections) when you use
    /// waiting or durable acquires.
    pub fn builder(conn: C) -> ClientBuilder<C> {
        ClientBuilder {
            conn,
            wait_connector: None,
        }
    }

    /// A client over `conn` alone, with a new random UUID:
    /// `Client::builder(conn).build()`. Every command goes over `conn`,
    /// including acquires that block on the server; see
    /// [`ClientBuilder::wait_connections`] for why you may want more.
    pub fn new(conn: C) -> Self {
        Self::builder(conn).build()
    }

    /// The client's random UUID, the first part of every owner string.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// The next owner string `<uuid>:<n>`: one per handle, of any kind.
    fn next_owner(&self) -> String {
        let n = self.inner.next_handle.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}:{n}", self.inner.id)
    }

    /// A new lock handle for `key`, with its own owner string
    /// `<uuid>:<n>`. Acquires through one handle re-enter; two handles
    /// exclude each other, also within one process. Cloning a handle keeps
    /// its owner.
    pub fn lock(&self, key: impl AsRef<[u8]>) -> Lock<C> {
        Lock::new(
            Arc::clone(&self.inner.connections),
            key.as_ref().to_vec(),
            self.next_owner(),
        )
    }

    /// A new read/write lock handle for `key`, with its own owner string
    /// `<uuid>:<n>` shared by its [`read`](RwLock::read) and
    /// [`write`](RwLock::write) sides (so the writer can downgrade).
    ///
    /// ```no_run
    /// # async fn run(client: fencelock_client::Client<redis::aio::ConnectionManager>) -> Result<(), fencelock_client::Error> {
    /// let config = client.rw_lock("config");
    /// if let Some(read) = config.read().try_acquire().await? {
    ///     // ... read the config; other readers may too, writers wait ...
    ///     read.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn rw_lock(&self, key: impl AsRef<[u8]>) -> RwLock<C> {
        RwLock::new(
            Arc::clone(&self.inner.connections),
            key.as_ref().to_vec(),
            self.next_owner(),
        )
    }

    /// A new handle on the semaphore of `permits` (1 ..= 1 000 000) at
    /// `key`, with its own owner string `<uuid>:<n>`. Every handle on the
    /// key must use the same `permits`.
    ///
    /// ```no_run
    /// # async fn run(client: fencelock_client::Client<redis::aio::ConnectionManager>) -> Result<(), fencelock_client::Error> {
    /// let slots = client.semaphore("gpu-slots", 4);
    /// if let Some(guard) = slots.try_acquire(1).await? {
    ///     // ... one of at most 4 jobs on the GPUs ...
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, key: impl AsRef<[u8]>, permits: u32) -> Semaphore<C> {
        Semaphore::new(
            Arc::clone(&self.inner.connections),
            key.as_ref().to_vec(),
            self.next_owner(),
            permits,
        )
    }
}

impl Client<ConnectionManager> {
    /// Connects to one server: a [`ConnectionManager`] (reconnects by
    /// itself; the `redis` crate's default response timeout) for renewals,
    /// releases and reads, and a dedicated one without response timeout for
    /// each waiting or durable acquire. Add `?protocol=resp3` to the URL for
    /// RESP3.
    pub async fn connect(info: impl IntoConnectionInfo) -> Result<Self, Error> {
        let redis_client = redis::Client::open(info)?;
        let conn = redis_client.get_connection_manager().await?;
        Ok(Self::builder(conn)
            .wait_connections(move || {
                let redis_client = redis_client.clone();
                async move {
                    let config = ConnectionManagerConfig::new().set_response_timeout(None);
                    redis_client
                        .get_connection_manager_with_config(config)
                        .await
                }
            })
            .build())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::mock::{ms, Answer, Mock};
    use crate::{AcquireOptions, Client, Error, Wait};

    #[tokio::test(start_paused = true)]
    async fn the_builder_gives_acquires_that_may_block_a_dedicated_connection() {
        let mock = Mock::granting();
        let (client, opened) = mock.client_with_wait_connections();
        assert!(format!("{client:?}").contains("wait_connections: true"));
        let lock = client.lock("k");
        let guard = lock.acquire(AcquireOptions::new()).await.unwrap().unwrap();
        assert!(guard.release().await.unwrap());
        assert_eq!(opened.load(Ordering::SeqCst), 0, "no wait: shared");
        let options = AcquireOptions::new().wait(Wait::For(ms(100)));
        let guard = lock.acquire(options).await.unwrap().unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        assert!(guard.release().await.unwrap());
        // Handles taken later use the same connections.
        let later = client.clone().lock("other");
        let guard = later
            .acquire(AcquireOptions::new().wait(Wait::Forever))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        assert!(guard.release().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dedicated_connection_that_cannot_be_opened_fails_the_acquire() {
        let mock = Mock::granting();
        let tries = Arc::new(AtomicUsize::new(0));
        let client = Client::builder(mock.clone())
            .wait_connections({
                let tries = Arc::clone(&tries);
                move || {
                    tries.fetch_add(1, Ordering::SeqCst);
                    async {
                        Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "refused",
                        )))
                    }
                }
            })
            .build();
        let lock = client.lock("k");
        // Tried again until the retry window (the ttl, longer than the
        // wait) closes.
        let options = AcquireOptions::new().ttl(ms(300)).wait(Wait::For(ms(100)));
        let t0 = tokio::time::Instant::now();
        let failed = lock.acquire(options).await;
        assert!(matches!(failed, Err(Error::Redis(_))), "{failed:?}");
        assert_eq!(tokio::time::Instant::now() - t0, ms(300));
        assert!(tries.load(Ordering::SeqCst) > 3);
        assert!(mock.log().is_empty(), "nothing was sent");
        // An acquire that does not block still goes over the shared one.
        assert!(lock.try_acquire().await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn without_wait_connections_everything_goes_over_the_one_connection() {
        let mock = Mock::granting();
        mock.on("LOCK.ACQUIRE", [Answer::Late(ms(10), 7)]);
        let client = Client::builder(mock.clone()).build();
        assert!(format!("{client:?}").contains("wait_connections: false"));
        let guard = client
            .lock("k")
            .acquire(AcquireOptions::new().wait(Wait::Forever))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mock.log(), ["LOCK.ACQUIRE"]);
        assert!(guard.release().await.unwrap());
    }

    #[test]
    fn handles_get_distinct_owners_under_the_client_id() {
        let client = Mock::granting().client();
        let (a, b) = (client.lock("k"), client.clone().lock("k"));
        let id = client.id().to_string();
        assert_eq!(a.owner(), format!("{id}:1"));
        assert_eq!(b.owner(), format!("{id}:2"));
        assert_ne!(Mock::granting().client().id(), client.id());
        // Every kind of handle takes the next number.
        let rw = client.rw_lock("k");
        let sem = client.semaphore("s", 3);
        assert_eq!(rw.owner(), format!("{id}:3"));
        assert_eq!(rw.read().owner(), rw.owner());
        assert_eq!(rw.write().owner(), rw.owner());
        assert_eq!(sem.owner(), format!("{id}:4"));
        assert_eq!(sem.permits(), 3);
    }
}
