//! The three lock implementations measured side by side, behind one
//! interface: how to acquire, renew and release (as commands queued on a
//! pipeline), how to read the replies, and how a client waits for a lock
//! another client holds.
//!
//! - [`Impl::Module`]: the fencelock module (`LOCK.*`, server-side FIFO wait);
//! - [`Impl::SetNx`]: baseline 1, the redis.io single-instance recipe
//!   (`setnx.rs`);
//! - [`Impl::Redisson`]: baseline 2, a Redisson-style reentrant hash lock
//!   (`redisson.rs`).
//!
//! The lock family (scenarios 8 and 9) has two of them: the module
//! (`SHARED`, `LIMIT`) and, under [`Impl::Redisson`], a Redisson-style
//! read/write lock (`rwlock.rs`) and permit-expirable semaphore
//! (`semaphore.rs`); [`Lock::has_family`] tells which.

mod common;
mod module;
mod redisson;
mod rwlock;
mod semaphore;
mod setnx;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::resp::{Conn, Reply};
pub use common::{Acquired, Client, Link, Queue, WaitOutcome, Waited};

/// Which lock implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// The fencelock module.
    Module,
    /// `SET NX PX` + Lua compare-and-delete / compare-and-pexpire.
    SetNx,
    /// Redisson-style hash lock in Lua with pub/sub waiting.
    Redisson,
}

impl Impl {
    /// Every implementation, in report order.
    pub const ALL: [Impl; 3] = [Impl::Module, Impl::SetNx, Impl::Redisson];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Module => "module",
            Impl::SetNx => "setnx",
            Impl::Redisson => "redisson",
        }
    }

    /// The name used in tables and the chart.
    pub fn label(self) -> &'static str {
        match self {
            Impl::Module => "fencelock",
            Impl::SetNx => "SET NX PX + Lua",
            Impl::Redisson => "Redisson-style Lua",
        }
    }
}

/// `--impls` takes the names of [`Impl::name`].
impl clap::ValueEnum for Impl {
    fn value_variants<'a>() -> &'a [Impl] {
        &Impl::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// One of the three lock operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Take the lock.
    Acquire,
    /// Extend the lease.
    Renew,
    /// Give the lock up.
    Release,
}

impl Op {
    /// `acquire`, `renew` or `release` (tables, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::Release => "release",
        }
    }
}

/// The SHA1s of the baselines' Lua scripts, loaded once per server.
#[derive(Debug, Default)]
struct Shas {
    setnx_release: String,
    setnx_renew: String,
    redisson_acquire: String,
    redisson_release: String,
    redisson_renew: String,
    rw_read_acquire: String,
    rw_read_release: String,
    rw_write_acquire: String,
    rw_write_release: String,
    sem_acquire: String,
    sem_release: String,
}

/// Which side of a read/write lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    /// A shared (read) hold.
    Read,
    /// The exclusive (write) hold.
    Write,
}

/// One implementation, ready to queue commands for. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lock {
    imp: Impl,
    shas: Arc<Shas>,
    /// The module with exactly-once retries ([`Lock::with_request_ids`]):
    /// every `LOCK.ACQUIRE` and `LOCK.RELEASE` carries `ID request-id`, a
    /// fresh id each; this counts the ids handed out (shared by the clones).
    request_ids: Option<Arc<RequestIds>>,
}

/// Where fresh request ids come from: 36-byte UUID strings, as a client
/// would send, whose last 16 hex digits count up (so no two are equal)
/// behind a random prefix.
#[derive(Debug)]
struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn fresh(&self) -> [u8; 36] {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 36];
        uuid::Uuid::from_u64_pair(self.prefix, n)
            .hyphenated()
            .encode_lower(&mut out);
        out
    }
}

impl Lock {
    /// Loads the scripts the baselines need (`SCRIPT LOAD`; they survive
    /// `FLUSHALL`) and returns a handle for `imp`.
    pub async fn prepare(conn: &mut Conn, imp: Impl) -> Result<Lock> {
        let mut shas = Shas::default();
        match imp {
            Impl::Module => {
                // Fail early with a clear message when the module is missing.
                let r = conn
                    .call_raw(&[b"LOCK.INFO", b"fencelock-bench:probe"])
                    .await?;
                if let Reply::Error(e) = r {
                    return Err(BenchError::Setup(format!(
                        "the fencelock module is not loaded in the server ({e})"
                    )));
                }
            }
            Impl::SetNx => {
                shas.setnx_release = load_script(conn, setnx::RELEASE).await?;
                shas.setnx_renew = load_script(conn, setnx::RENEW).await?;
            }
            Impl::Redisson => {
                shas.redisson_acquire = load_script(conn, redisson::ACQUIRE).await?;
                shas.redisson_release = load_script(conn, redisson::RELEASE).await?;
                shas.redisson_renew = load_script(conn, redisson::RENEW).await?;
                shas.rw_read_acquire = load_script(conn, rwlock::READ_ACQUIRE).await?;
                shas.rw_read_release = load_script(conn, rwlock::READ_RELEASE).await?;
                shas.rw_write_acquire = load_script(conn, rwlock::WRITE_ACQUIRE).await?;
                shas.rw_write_release = load_script(conn, rwlock::WRITE_RELEASE).await?;
                shas.sem_acquire = load_script(conn, semaphore::ACQUIRE).await?;
                shas.sem_release = load_script(conn, semaphore::RELEASE).await?;
            }
        }
        Ok(Lock {
            imp,
            shas: Arc::new(shas),
            request_ids: None,
        })
    }

    /// The module sending `ID request-id` with every acquire and release
    /// (`docs/INTERFACE.md`, "Exactly-once retries"; renewals have no id),
    /// a fresh 36-byte id per operation; `None` for the baselines.
    pub fn with_request_ids(&self) -> Option<Lock> {
        (self.imp == Impl::Module).then(|| Lock {
            request_ids: Some(Arc::new(RequestIds {
                prefix: fastrand::u64(..),
                next: AtomicU64::new(1),
            })),
            ..self.clone()
        })
    }

    /// True when acquires and releases carry `ID request-id`.
    pub fn sends_request_ids(&self) -> bool {
        self.request_ids.is_some()
    }

    /// Which implementation this is.
    pub fn imp(&self) -> Impl {
        self.imp
    }

    /// The `INFO commandstats` name of the command that carries `op`
    /// (`evalsha` for the Lua ones).
    pub fn stat_name(&self, op: Op) -> &'static str {
        match (self.imp, op) {
            (Impl::Module, Op::Acquire) => "lock.acquire",
            (Impl::Module, Op::Renew) => "lock.renew",
            (Impl::Module, Op::Release) => "lock.release",
            (Impl::SetNx, Op::Acquire) => "set",
            _ => "evalsha",
        }
    }

    /// True when a client of this implementation waits on a subscription.
    pub fn waits_on_pubsub(&self) -> bool {
        self.imp == Impl::Redisson
    }

    /// Opens the connections one lock client needs.
    pub async fn client(&self, port: u16) -> Result<Client> {
        Client::connect(port, self.waits_on_pubsub()).await
    }

    /// Queues a non-blocking acquire.
    pub fn queue_acquire<Q: Queue + ?Sized>(
        &self,
        c: &mut Q,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) {
        match (self.imp, &self.request_ids) {
            (Impl::Module, Some(ids)) => {
                module::queue_acquire_with_id(c, key, owner, ttl_ms, &ids.fresh())
            }
            (Impl::Module, None) => module::queue_acquire(c, key, owner, ttl_ms),
            (Impl::SetNx, _) => setnx::queue_acquire(c, key, owner, ttl_ms),
            (Impl::Redisson, _) => {
                redisson::queue_acquire(c, &self.shas.redisson_acquire, key, owner, ttl_ms)
            }
        }
    }

    /// Queues a release.
    pub fn queue_release<Q: Queue + ?Sized>(
        &self,
        c: &mut Q,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) {
        match (self.imp, &self.request_ids) {
            (Impl::Module, Some(ids)) => module::queue_release_with_id(c, key, owner, &ids.fresh()),
            (Impl::Module, None) => module::queue_release(c, key, owner),
            (Impl::SetNx, _) => setnx::queue_release(c, &self.shas.setnx_release, key, owner),
            (Impl::Redisson, _) => {
                redisson::queue_release(c, &self.shas.redisson_release, key, owner, ttl_ms)
            }
        }
    }

    /// Queues a renewal (lease = now + ttl).
    pub fn queue_renew<Q: Queue + ?Sized>(
        &self,
        c: &mut Q,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) {
        match self.imp {
            Impl::Module => module::queue_renew(c, key, owner, ttl_ms),
            Impl::SetNx => setnx::queue_renew(c, &self.shas.setnx_renew, key, owner, ttl_ms),
            Impl::Redisson => {
                redisson::queue_renew(c, &self.shas.redisson_renew, key, owner, ttl_ms)
            }
        }
    }

    /// Reads an acquire reply.
    pub fn acquired(&self, r: &Reply) -> Result<Acquired> {
        let a = match self.imp {
            Impl::Module => module::acquired(r),
            Impl::SetNx => setnx::acquired(r),
            Impl::Redisson => redisson::acquired(r),
        };
        a.ok_or_else(|| BenchError::unexpected(&format!("{} acquire", self.imp.name()), r))
    }

    /// Reads a release reply: true when the lock was released (or its hold
    /// count decreased), false when the caller did not hold it.
    pub fn released(&self, r: &Reply) -> Result<bool> {
        match (self.imp, r) {
            (Impl::Module | Impl::Redisson, Reply::Int(n)) if *n >= 0 => Ok(true),
            (Impl::Module | Impl::Redisson, Reply::Nil) => Ok(false),
            (Impl::SetNx, Reply::Int(n)) => Ok(*n == 1),
            _ => Err(BenchError::unexpected(
                &format!("{} release", self.imp.name()),
                r,
            )),
        }
    }

    /// Reads a renew reply: true when the lease was extended.
    pub fn renewed(&self, r: &Reply) -> Result<bool> {
        match r {
            Reply::Int(n) => Ok(*n == 1),
            _ => Err(BenchError::unexpected(
                &format!("{} renew", self.imp.name()),
                r,
            )),
        }
    }

    /// Acquires `key`, waiting while another client holds it, the way this
    /// implementation waits: the module queues the request on the server;
    /// baseline 1 polls with backoff; baseline 2 subscribes to the lock's
    /// channel and retries on each message or when the holder's ttl runs
    /// out. Gives up at `give_up`.
    pub async fn acquire_waiting(
        &self,
        client: &mut impl Link,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
        give_up: Instant,
        rng: &mut fastrand::Rng,
    ) -> Result<WaitOutcome> {
        match self.imp {
            Impl::Module => module::acquire_waiting(client, key, owner, ttl_ms, give_up).await,
            Impl::SetNx => setnx::acquire_waiting(client, key, owner, ttl_ms, give_up, rng).await,
            Impl::Redisson => {
                let sha = &self.shas.redisson_acquire;
                redisson::acquire_waiting(client, sha, key, owner, ttl_ms, give_up).await
            }
        }
    }

    /// One non-blocking acquire attempt, sent and answered.
    pub async fn try_acquire(
        &self,
        c: &mut impl Link,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) -> Result<Acquired> {
        let r = c
            .call(|q| self.queue_acquire(q, key, owner, ttl_ms))
            .await?;
        self.acquired(&r)
    }

    /// A release, sent and answered; an error when `owner` did not hold it.
    pub async fn release(
        &self,
        c: &mut impl Link,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) -> Result<()> {
        let r = c
            .call(|q| self.queue_release(q, key, owner, ttl_ms))
            .await?;
        if self.released(&r)? {
            Ok(())
        } else {
            Err(BenchError::unexpected(
                &format!("{} release by the holder", self.imp.name()),
                &r,
            ))
        }
    }
}

#[cfg(test)]
impl Lock {
    /// A handle for unit tests that queue no Lua (no scripts loaded).
    pub fn for_tests(imp: Impl) -> Lock {
        Lock {
            imp,
            shas: Arc::default(),
            request_ids: None,
        }
    }
}

/// The lock family: read/write locks and semaphores (scenarios 8 and 9).
impl Lock {
    /// True when this implementation has a read/write lock and a semaphore
    /// (the module; the Redisson-style baseline).
    pub fn has_family(&self) -> bool {
        matches!(self.imp, Impl::Module | Impl::Redisson)
    }

    fn no_family(&self) -> BenchError {
        BenchError::Setup(format!(
            "{} has no read/write lock or semaphore",
            self.imp.name()
        ))
    }

    /// Takes `key` in `mode`, waiting the implementation's way: the module
    /// queues `LOCK.ACQUIRE ... [SHARED] WAIT` on the server; the baseline
    /// subscribes and retries on each release message or when the holder's
    /// ttl has passed. Gives up at `give_up`.
    pub async fn rw_acquire_waiting(
        &self,
        c: &mut impl Link,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
        mode: RwMode,
        give_up: Instant,
    ) -> Result<Waited> {
        match self.imp {
            Impl::Module => {
                let options: &[&[u8]] = match mode {
                    RwMode::Read => &[b"SHARED"],
                    RwMode::Write => &[],
                };
                module::acquire_family(c, key, owner, ttl_ms, options, give_up).await
            }
            Impl::Redisson => {
                let sha = match mode {
                    RwMode::Read => &self.shas.rw_read_acquire,
                    RwMode::Write => &self.shas.rw_write_acquire,
                };
                common::wait_on_channel(
                    c,
                    &rwlock::channel(key),
                    give_up,
                    |q| rwlock::queue_acquire(q, sha, key, owner, ttl_ms),
                    rwlock::parse_acquire,
                    "Redisson-style read/write acquire",
                )
                .await
            }
            Impl::SetNx => Err(self.no_family()),
        }
    }

    /// Gives up one hold of `key` in `mode`; an error when `owner` did not
    /// hold it.
    pub async fn rw_release(
        &self,
        c: &mut impl Link,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
        mode: RwMode,
    ) -> Result<()> {
        let r = match self.imp {
            Impl::Module => c.call(|q| module::queue_release(q, key, owner)).await?,
            Impl::Redisson => {
                let sha = match mode {
                    RwMode::Read => &self.shas.rw_read_release,
                    RwMode::Write => &self.shas.rw_write_release,
                };
                c.call(|q| rwlock::queue_release(q, sha, key, owner, ttl_ms))
                    .await?
            }
            Impl::SetNx => return Err(self.no_family()),
        };
        family_released(self.imp, &r, "read/write release by the holder")
    }

    /// Makes `key` a semaphore of `permits` before a run: the baseline
    /// sets its counter; the module needs nothing (the first grant with
    /// `LIMIT` creates it).
    pub async fn sem_init(&self, conn: &mut Conn, key: &[u8], permits: usize) -> Result<()> {
        match self.imp {
            Impl::Module => Ok(()),
            Impl::Redisson => {
                let n = permits.to_string();
                conn.call(&[b"SET", key, n.as_bytes()]).await.map(|_| ())
            }
            Impl::SetNx => Err(self.no_family()),
        }
    }

    /// Takes one permit of `key` (a semaphore of `permits`) for `id` (the
    /// module's owner, the baseline's permit id), waiting the
    /// implementation's way: `LOCK.ACQUIRE ... LIMIT permits WAIT`; or
    /// subscribe and retry on each release message or at the earliest
    /// permit expiry. Gives up at `give_up`.
    pub async fn sem_acquire_waiting(
        &self,
        c: &mut impl Link,
        key: &[u8],
        id: &[u8],
        ttl_ms: u64,
        permits: usize,
        give_up: Instant,
    ) -> Result<Waited> {
        match self.imp {
            Impl::Module => {
                let (ttl, limit) = (ttl_ms.to_string(), permits.to_string());
                let options: &[&[u8]] = &[b"LIMIT", limit.as_bytes()];
                module::acquire_family(c, key, id, ttl.as_bytes(), options, give_up).await
            }
            Impl::Redisson => {
                let sha = &self.shas.sem_acquire;
                // The time the last try was queued at, to read its reply.
                let sent_at = std::sync::atomic::AtomicU64::new(0);
                common::wait_on_channel(
                    c,
                    &semaphore::channel(key),
                    give_up,
                    |q| {
                        let now = unix_ms();
                        sent_at.store(now, std::sync::atomic::Ordering::Relaxed);
                        semaphore::queue_acquire(q, sha, key, id, ttl_ms, now);
                    },
                    |r| {
                        semaphore::parse_acquire(
                            r,
                            sent_at.load(std::sync::atomic::Ordering::Relaxed),
                        )
                    },
                    "Redisson-style semaphore acquire",
                )
                .await
            }
            Impl::SetNx => Err(self.no_family()),
        }
    }

    /// Gives back the permit of `id`; an error when it was not held.
    pub async fn sem_release(&self, c: &mut impl Link, key: &[u8], id: &[u8]) -> Result<()> {
        let r = match self.imp {
            Impl::Module => c.call(|q| module::queue_release(q, key, id)).await?,
            Impl::Redisson => {
                let sha = &self.shas.sem_release;
                c.call(|q| semaphore::queue_release(q, sha, key, id))
                    .await?
            }
            Impl::SetNx => return Err(self.no_family()),
        };
        family_released(self.imp, &r, "semaphore release by the holder")
    }
}

/// The name of `imp`'s read/write lock in tables.
pub fn rw_label(imp: Impl) -> &'static str {
    match imp {
        Impl::Module => "fencelock (SHARED)",
        Impl::Redisson => "Redisson-style RReadWriteLock",
        Impl::SetNx => "–",
    }
}

/// The name of `imp`'s semaphore in tables.
pub fn sem_label(imp: Impl) -> &'static str {
    match imp {
        Impl::Module => "fencelock (LIMIT)",
        Impl::Redisson => "Redisson-style RPermitExpirableSemaphore",
        Impl::SetNx => "–",
    }
}

/// A family release reply: what the owner still holds (an integer ≥ 0),
/// or nil when it held nothing (an error here: the caller held it).
fn family_released(imp: Impl, r: &Reply, what: &str) -> Result<()> {
    match r {
        Reply::Int(n) if *n >= 0 => Ok(()),
        _ => Err(BenchError::unexpected(&format!("{} {what}", imp.name()), r)),
    }
}

/// Wall-clock time, Unix ms (the baseline semaphore's lease scores).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn load_script(conn: &mut Conn, body: &str) -> Result<String> {
    conn.cmd_text(&["SCRIPT", "LOAD", body]).await
}

#[cfg(test)]
mod tests {
    //! The Redisson-style family baselines against a plain redis-server:
    //! they are what the module is compared with, so they must be locks.

    use std::time::Duration;

    use super::common::Try;
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn plain_server() -> testkit::Server {
        testkit::ServerConfig {
            module: false,
            ..Default::default()
        }
        .start()
    }

    /// Collects the arguments of the commands queued on it.
    struct Recorder(Vec<Vec<u8>>);

    impl Queue for Recorder {
        fn queue(&mut self, args: &[&[u8]]) {
            self.0.extend(args.iter().map(|a| a.to_vec()));
        }
    }

    /// Sends the one command `queue` queues; its reply.
    async fn send(conn: &mut Conn, queue: impl FnOnce(&mut Recorder)) -> Reply {
        let mut r = Recorder(Vec::new());
        queue(&mut r);
        let args: Vec<&[u8]> = r.0.iter().map(Vec::as_slice).collect();
        conn.call(&args).await.unwrap()
    }

    #[test]
    fn the_module_with_request_ids_sends_a_fresh_36_byte_id_on_acquire_and_release_only() {
        let plain = Lock::for_tests(Impl::Module);
        let with_ids = plain.with_request_ids().unwrap();
        assert!(with_ids.sends_request_ids() && !plain.sends_request_ids());
        assert!(Lock::for_tests(Impl::SetNx).with_request_ids().is_none());
        let queued = |lock: &Lock, op: Op| {
            let mut r = Recorder(Vec::new());
            match op {
                Op::Acquire => lock.queue_acquire(&mut r, b"k", b"o", b"100"),
                Op::Renew => lock.queue_renew(&mut r, b"k", b"o", b"100"),
                Op::Release => lock.queue_release(&mut r, b"k", b"o", b"100"),
            }
            r.0
        };
        let words = |v: &[&[u8]]| v.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            queued(&plain, Op::Acquire),
            words(&[b"LOCK.ACQUIRE", b"k", b"o", b"100"])
        );
        let (a, b) = (
            queued(&with_ids, Op::Acquire),
            queued(&with_ids, Op::Acquire),
        );
        assert_eq!(a[..5], words(&[b"LOCK.ACQUIRE", b"k", b"o", b"100", b"ID"]));
        assert_eq!((a.len(), a[5].len()), (6, 36));
        assert_ne!(a[5], b[5], "every operation has an id of its own");
        let release = queued(&with_ids, Op::Release);
        assert_eq!(release[..4], words(&[b"LOCK.RELEASE", b"k", b"o", b"ID"]));
        assert_eq!(release[4].len(), 36);
        assert_eq!(
            queued(&with_ids, Op::Renew),
            words(&[b"LOCK.RENEW", b"k", b"o", b"100"])
        );
    }

    const KEY: &[u8] = b"rw";
    const TTL: &[u8] = b"30000";

    async fn rw_try(conn: &mut Conn, sha: &str, owner: &[u8]) -> Option<Try> {
        let r = send(conn, |q| rwlock::queue_acquire(q, sha, KEY, owner, TTL)).await;
        rwlock::parse_acquire(&r)
    }

    async fn rw_release(conn: &mut Conn, sha: &str, owner: &[u8]) -> Reply {
        send(conn, |q| rwlock::queue_release(q, sha, KEY, owner, TTL)).await
    }

    #[test]
    fn redisson_style_rwlock_shares_reads_excludes_writes_and_announces_the_last_release() {
        let server = plain_server();
        runtime().block_on(async {
            let mut conn = Conn::connect(server.port).await.unwrap();
            let lock = Lock::prepare(&mut conn, Impl::Redisson).await.unwrap();
            let s = &lock.shas;
            let (read, write) = (&s.rw_read_acquire, &s.rw_write_acquire);
            let (unread, unwrite) = (&s.rw_read_release, &s.rw_write_release);
            let c = &mut conn;
            let mut sub = Client::connect(server.port, true).await.unwrap();
            sub.subscribe(&rwlock::channel(KEY)).await.unwrap();

            // Two readers share; the writer is refused with the ttl.
            assert_eq!(rw_try(c, read, b"a").await, Some(Try::Granted));
            assert_eq!(rw_try(c, read, b"b").await, Some(Try::Granted));
            let w = rw_try(c, write, b"w").await;
            assert!(
                matches!(w, Some(Try::Busy(Some(d))) if d > Duration::from_secs(20)),
                "{w:?}"
            );
            // The first read release announces nothing; the last one does.
            assert_eq!(rw_release(c, unread, b"a").await, Reply::Int(0));
            assert!(!sub.message_within(Duration::from_millis(50)).await.unwrap());
            assert_eq!(rw_release(c, unread, b"a").await, Reply::Nil);
            assert_eq!(rw_release(c, unread, b"b").await, Reply::Int(0));
            assert!(sub.message_within(Duration::from_secs(5)).await.unwrap());
            assert_eq!(c.call(&[b"EXISTS", KEY]).await.unwrap(), Reply::Int(0));

            // The writer excludes readers and other writers until released.
            assert_eq!(rw_try(c, write, b"w").await, Some(Try::Granted));
            assert!(matches!(
                rw_try(c, read, b"a").await,
                Some(Try::Busy(Some(_)))
            ));
            assert!(matches!(
                rw_try(c, write, b"v").await,
                Some(Try::Busy(Some(_)))
            ));
            assert_eq!(rw_release(c, unwrite, b"v").await, Reply::Nil);
            assert_eq!(rw_release(c, unread, b"w").await, Reply::Nil);
            assert_eq!(rw_release(c, unwrite, b"w").await, Reply::Int(0));
            assert!(sub.message_within(Duration::from_secs(5)).await.unwrap());
            assert_eq!(c.call(&[b"EXISTS", KEY]).await.unwrap(), Reply::Int(0));

            // Every read hold has a lease of its own.
            assert_eq!(rw_try(c, read, b"a").await, Some(Try::Granted));
            let lease = c.call(&[b"PTTL", b"rw:lease:a:1"]).await.unwrap();
            assert!(matches!(lease, Reply::Int(n) if n > 20_000), "{lease:?}");
        });
    }

    async fn sem_try(conn: &mut Conn, sha: &str, id: &[u8], ttl: u64, at: u64) -> Option<Try> {
        let r = send(conn, |q| {
            semaphore::queue_acquire(q, sha, b"sem", id, ttl, at)
        })
        .await;
        semaphore::parse_acquire(&r, at)
    }

    #[test]
    fn redisson_style_semaphore_counts_permits_reclaims_expired_ones_and_announces_releases() {
        let server = plain_server();
        runtime().block_on(async {
            let mut conn = Conn::connect(server.port).await.unwrap();
            let lock = Lock::prepare(&mut conn, Impl::Redisson).await.unwrap();
            let key: &[u8] = b"sem";
            lock.sem_init(&mut conn, key, 2).await.unwrap();
            let (sha, c, now) = (lock.shas.sem_acquire.clone(), &mut conn, 1_000_000);
            assert_eq!(
                sem_try(c, &sha, b"p1", 30_000, now).await,
                Some(Try::Granted)
            );
            assert_eq!(
                sem_try(c, &sha, b"p2", 10_000, now).await,
                Some(Try::Granted)
            );
            // Full: the refusal names the earliest expiry (p2's, 10 s away).
            assert_eq!(
                sem_try(c, &sha, b"p3", 30_000, now).await,
                Some(Try::Busy(Some(Duration::from_millis(10_000))))
            );
            // 10 s later p2's lease has run out: reclaimed, and taken.
            let later = now + 10_000;
            assert_eq!(
                sem_try(c, &sha, b"p3", 30_000, later).await,
                Some(Try::Granted)
            );

            let mut client = Client::connect(server.port, true).await.unwrap();
            client.subscribe(&semaphore::channel(key)).await.unwrap();
            lock.sem_release(&mut client, key, b"p1").await.unwrap();
            assert!(client.message_within(Duration::from_secs(5)).await.unwrap());
            assert!(lock.sem_release(&mut client, key, b"p1").await.is_err());
            assert!(lock.sem_release(&mut client, key, b"p2").await.is_err());
            let free = c.call(&[b"GET", key]).await.unwrap();
            assert_eq!(free, Reply::Bulk(b"1".to_vec()));
        });
    }
}
