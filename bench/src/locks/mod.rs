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

mod module;
mod redisson;
mod setnx;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::resp::{Conn, Reply};
use crate::stats::Rng;

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

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == s)
    }
}

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

/// The connections one lock client uses: commands, and for the Redisson
/// baseline a second one for pub/sub.
pub struct Client {
    /// Commands.
    pub cmd: Conn,
    /// Subscriptions (Redisson baseline only).
    pub sub: Option<Conn>,
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

    /// The `INFO commandstats` names of the commands that carry acquire,
    /// release and renew (`EVALSHA` for the Lua ones).
    pub fn stat_names(&self) -> [&'static str; 3] {
        match self.imp {
            Impl::Module => ["lock.acquire", "lock.release", "lock.renew"],
            Impl::SetNx => ["set", "evalsha", "evalsha"],
            Impl::Redisson => ["evalsha", "evalsha", "evalsha"],
        }
    }

    /// Opens the connections one lock client needs.
    pub async fn client(&self, port: u16) -> Result<Client> {
        let cmd = Conn::connect(port).await?;
        let sub = match self.imp {
            Impl::Redisson => Some(Conn::connect(port).await?),
            _ => None,
        };
        Ok(Client { cmd, sub })
    }

    /// Queues a non-blocking acquire.
    pub fn queue_acquire(&self, c: &mut Conn, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
        match self.imp {
            Impl::Module => module::queue_acquire(c, key, owner, ttl_ms, None),
            Impl::SetNx => setnx::queue_acquire(c, key, owner, ttl_ms),
            Impl::Redisson => {
                redisson::queue_acquire(c, &self.shas.redisson_acquire, key, owner, ttl_ms)
            }
        }
    }

    /// Queues a release.
    pub fn queue_release(&self, c: &mut Conn, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
        match self.imp {
            Impl::Module => module::queue_release(c, key, owner),
            Impl::SetNx => setnx::queue_release(c, &self.shas.setnx_release, key, owner),
            Impl::Redisson => {
                redisson::queue_release(c, &self.shas.redisson_release, key, owner, ttl_ms)
            }
        }
    }

    /// Queues a renewal (lease = now + ttl).
    pub fn queue_renew(&self, c: &mut Conn, key: &[u8], owner: &[u8], ttl_ms: &[u8]) {
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
        let a = match (self.imp, r) {
            (Impl::Module, Reply::Int(_)) => Some(Acquired::Granted),
            (Impl::Module, Reply::Nil) => Some(Acquired::Busy {
                holder_ttl_ms: None,
            }),
            (Impl::SetNx, Reply::Status(s)) if s == "OK" => Some(Acquired::Granted),
            (Impl::SetNx, Reply::Nil) => Some(Acquired::Busy {
                holder_ttl_ms: None,
            }),
            (Impl::Redisson, Reply::Nil) => Some(Acquired::Granted),
            (Impl::Redisson, Reply::Int(ttl)) => Some(Acquired::Busy {
                holder_ttl_ms: Some(*ttl),
            }),
            _ => None,
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
        client: &mut Client,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
        give_up: Instant,
        rng: &mut Rng,
    ) -> Result<WaitOutcome> {
        match self.imp {
            Impl::Module => {
                module::acquire_waiting(&mut client.cmd, key, owner, ttl_ms, give_up).await
            }
            Impl::SetNx => {
                setnx::acquire_waiting(self, &mut client.cmd, key, owner, ttl_ms, give_up, rng)
                    .await
            }
            Impl::Redisson => {
                redisson::acquire_waiting(self, client, key, owner, ttl_ms, give_up).await
            }
        }
    }

    /// One non-blocking acquire attempt, sent and answered.
    pub async fn try_acquire(
        &self,
        c: &mut Conn,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) -> Result<Acquired> {
        self.queue_acquire(c, key, owner, ttl_ms);
        c.flush().await?;
        let r = c.read_reply().await?;
        self.acquired(&r)
    }

    /// A release, sent and answered; an error when `owner` did not hold it.
    pub async fn release(
        &self,
        c: &mut Conn,
        key: &[u8],
        owner: &[u8],
        ttl_ms: &[u8],
    ) -> Result<()> {
        self.queue_release(c, key, owner, ttl_ms);
        c.flush().await?;
        let r = c.read_reply().await?;
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
