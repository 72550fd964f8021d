//! Counters behind `INFO lock`. Atomics, because the data type's `free`
//! callback (which counts locks going away) may run on a background thread.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Every counter the module reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lock values in the keyspace (+1 when one is stored, −1 when freed).
    pub held: AtomicI64,
    pub grants: AtomicU64,
    pub reentries: AtomicU64,
    pub denied: AtomicU64,
    pub renewals: AtomicU64,
    pub renew_misses: AtomicU64,
    pub releases: AtomicU64,
    pub release_misses: AtomicU64,
    pub expired: AtomicU64,
    pub forced_releases: AtomicU64,
    pub handoffs: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub wait_abandoned: AtomicU64,
}

/// The module's counters.
pub static STATS: Stats = Stats {
    held: AtomicI64::new(0),
    grants: AtomicU64::new(0),
    reentries: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    renewals: AtomicU64::new(0),
    renew_misses: AtomicU64::new(0),
    releases: AtomicU64::new(0),
    release_misses: AtomicU64::new(0),
    expired: AtomicU64::new(0),
    forced_releases: AtomicU64::new(0),
    handoffs: AtomicU64::new(0),
    wait_timeouts: AtomicU64::new(0),
    wait_abandoned: AtomicU64::new(0),
};

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter as a RESP-friendly integer.
pub fn read(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}
