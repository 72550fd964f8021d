//! The measurements of the issues, one file each, and what they share:
//! the context (server, plan, lock implementations), key and owner names,
//! and a pipelined bulk operation for filling and sweeping the keyspace.
//!
//! - `throughput`: 1. uncontended acquire+release cycles;
//! - `cpu`: 2. server CPU per command (`INFO commandstats`);
//! - `handoff`: 3. contended hand-off and the FIFO check;
//! - `expiry`: 4. lease-expiry promptness;
//! - `scale`: 5. memory per lock, 6. latency vs live locks, RDB save/load;
//! - `watchdog`: 7. renewal load;
//! - `rwlock`: 8. a read/write lock under continuous readers and a periodic
//!   writer;
//! - `semaphore`: 9. clients contending for the permits of a semaphore;
//!
//! and, not a measurement of the locks, `client_ab`: the load generator on
//! its own RESP client against the `redis` crate (`client_lib`: the crate's
//! side of the load connections).

pub mod client_ab;
pub mod client_lib;
pub mod cpu;
pub mod expiry;
pub mod handoff;
pub mod rwlock;
pub mod scale;
pub mod semaphore;
pub mod throughput;
pub mod watchdog;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Client, Impl, Link, Lock, Op};
use crate::plan::Plan;
use crate::server::Admin;

/// A scenario that can be selected with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1. Uncontended throughput.
    Throughput,
    /// 2. Server CPU per command.
    Cpu,
    /// 3. Contended hand-off and FIFO order.
    Handoff,
    /// 4. Lease-expiry promptness.
    Expiry,
    /// 5 and 6. Memory per lock, latency vs live locks, RDB save/load.
    Scale,
    /// 7. Watchdog renewals.
    Watchdog,
    /// 8. Read/write lock: continuous readers, a periodic writer.
    RwLock,
    /// 9. Semaphore: clients contending for its permits.
    Semaphore,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Throughput,
        Scenario::Cpu,
        Scenario::Handoff,
        Scenario::Expiry,
        Scenario::Scale,
        Scenario::Watchdog,
        Scenario::RwLock,
        Scenario::Semaphore,
    ];

    /// The `--only` name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Cpu => "cpu",
            Scenario::Handoff => "handoff",
            Scenario::Expiry => "expiry",
            Scenario::Scale => "scale",
            Scenario::Watchdog => "watchdog",
            Scenario::RwLock => "rwlock",
            Scenario::Semaphore => "semaphore",
        }
    }
}

/// `--only` takes the names of [`Scenario::name`].
impl clap::ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Scenario] {
        &Scenario::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// What every scenario gets.
pub struct Ctx {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// Sizes and durations.
    pub plan: Plan,
    /// The implementations to measure, in report order.
    pub locks: Vec<Lock>,
    /// An admin connection.
    pub admin: Admin,
}

impl Ctx {
    /// The handle for `imp`, when it was selected.
    pub fn lock(&self, imp: Impl) -> Option<Lock> {
        self.locks.iter().find(|l| l.imp() == imp).cloned()
    }
}

/// A 16-byte key: one tag letter and 15 digits.
pub fn key16(tag: u8, i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.push(tag);
    k.extend_from_slice(format!("{:015}", i % 1_000_000_000_000_000).as_bytes());
    k
}

/// The index back from a [`key16`] name.
pub fn key16_index(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.get(1..)?).ok()?.parse().ok()
}

/// A 36-byte owner (a UUID string, as real clients use), distinct per
/// `(tag, i)` and the same on every run.
pub fn owner36(tag: u8, i: u64) -> Vec<u8> {
    let bits = fastrand::Rng::with_seed(i ^ (u64::from(tag) << 56)).u128(..);
    uuid::Uuid::from_u128(bits)
        .hyphenated()
        .to_string()
        .into_bytes()
}

/// A pipelined bulk operation: `op` on keys `key16(tag, 0..n)` with their
/// owners, over `conns` connections, `depth` commands per round trip.
#[derive(Clone, Copy, Debug)]
pub struct Bulk {
    /// What to do to each key.
    pub op: Op,
    /// Key and owner tag.
    pub tag: u8,
    /// How many keys.
    pub n: usize,
    /// Lease for acquire and renew.
    pub ttl_ms: u64,
    /// Parallel connections.
    pub conns: usize,
    /// Commands per round trip.
    pub depth: usize,
}

/// Runs `bulk`, failing when any key does not answer as a held,
/// uncontended lock would.
pub async fn apply_all(port: u16, lock: &Lock, bulk: Bulk) -> Result<()> {
    let Bulk {
        op,
        tag,
        n,
        ttl_ms,
        conns,
        depth,
    } = bulk;
    let conns = conns.clamp(1, n.max(1));
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let lock = lock.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(port, false).await?;
            let ttl = ttl_ms.to_string();
            let ttl = ttl.as_bytes();
            let mine: Vec<u64> = (c..n).step_by(conns).map(|i| i as u64).collect();
            for chunk in mine.chunks(depth.max(1)) {
                let queue = |q: &mut dyn crate::locks::Queue| {
                    for &i in chunk {
                        let (k, o) = (key16(tag, i), owner36(tag, i));
                        match op {
                            Op::Acquire => lock.queue_acquire(q, &k, &o, ttl),
                            Op::Renew => lock.queue_renew(q, &k, &o, ttl),
                            Op::Release => lock.queue_release(q, &k, &o, ttl),
                        }
                    }
                };
                let check = |r: &crate::resp::Reply| {
                    let ok = match op {
                        Op::Acquire => lock.acquired(r)? == Acquired::Granted,
                        Op::Renew => lock.renewed(r)?,
                        Op::Release => lock.released(r)?,
                    };
                    match ok {
                        true => Ok(()),
                        false => Err(BenchError::unexpected(
                            &format!("{} {} of a free or held key", lock.imp().name(), op.name()),
                            r,
                        )),
                    }
                };
                client.round_trip(chunk.len(), queue, check).await?;
            }
            Ok::<(), BenchError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Wall-clock time, Unix milliseconds with microsecond resolution.
pub fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Sleeps `seconds` (non-negative, finite).
pub async fn sleep_s(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
}

/// A progress line on standard error.
pub fn progress(msg: &str) {
    eprintln!("  {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_16_bytes_and_round_trip() {
        let k = key16(b'l', 42);
        assert_eq!(k.len(), 16);
        assert_eq!(key16_index(&k), Some(42));
        assert_eq!(key16(b'l', 999_999_999_999_999).len(), 16);
    }

    #[test]
    fn owners_are_36_bytes_and_distinct() {
        assert_eq!(owner36(b'l', 1).len(), 36);
        assert_ne!(owner36(b'l', 1), owner36(b'l', 2));
        assert_ne!(owner36(b'l', 1), owner36(b'm', 1));
        assert_eq!(owner36(b'l', 1), owner36(b'l', 1));
    }
}
