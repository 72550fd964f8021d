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

mod common;
mod module;
mod redisson;
mod setnx;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::resp::{Conn, Reply};
pub use common::{Acquired, Client, Link, Queue, WaitOutcome};

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
}

/// One implementation, ready to queue commands for. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lock {
    imp: Impl,
    shas: Arc<Shas>,
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
            }
        }
        Ok(Lock {
            imp,
            shas: Arc::new(shas),
        })
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
        match self.imp {
            Impl::Module => module::queue_acquire(c, key, owner, ttl_ms),
            Impl::SetNx => setnx::queue_acquire(c, key, owner, ttl_ms),
            Impl::Redisson => {
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
        match self.imp {
            Impl::Module => module::queue_release(c, key, owner),
            Impl::SetNx => setnx::queue_release(c, &self.shas.setnx_release, key, owner),
            Impl::Redisson => {
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

async fn load_script(conn: &mut Conn, body: &str) -> Result<String> {
    conn.cmd_text(&["SCRIPT", "LOAD", body]).await
}
