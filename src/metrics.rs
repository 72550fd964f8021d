//! The module's counters and the `INFO lock` section that reports them.
//! Atomics, because the data type's `free` callback (which counts locks
//! going away) may run on a background thread.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use redis_module::InfoContext;

use crate::state;

/// Every counter the module reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lock values in the keyspace (+1 when one is stored, −1 when freed).
    pub held: AtomicI64,
    pub grants: AtomicU64,
    pub shared_grants: AtomicU64,
    pub semaphore_grants: AtomicU64,
    pub retries_answered: AtomicU64,
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
    shared_grants: AtomicU64::new(0),
    semaphore_grants: AtomicU64::new(0),
    retries_answered: AtomicU64::new(0),
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

/// A lock value was stored in the keyspace.
pub fn lock_stored() {
    STATS.held.fetch_add(1, Ordering::Relaxed);
}

/// A lock value was freed (possibly on a background thread).
pub fn lock_freed() {
    STATS.held.fetch_sub(1, Ordering::Relaxed);
}

/// Writes the `INFO lock` section: current locks, waiters and leases, then
/// every counter.
pub fn write_info(ctx: &InfoContext) {
    let (waiters, leases) = state::with(|s| (s.queues.total(), s.schedule.len()));
    let held = STATS.held.load(Ordering::Relaxed).max(0);
    let fields: [(&str, i64); 19] = [
        ("held", held),
        ("waiters", i64::try_from(waiters).unwrap_or(i64::MAX)),
        (
            "leases_scheduled",
            i64::try_from(leases).unwrap_or(i64::MAX),
        ),
        ("grants", read(&STATS.grants)),
        ("reentries", read(&STATS.reentries)),
        ("denied", read(&STATS.denied)),
        ("renewals", read(&STATS.renewals)),
        ("renew_misses", read(&STATS.renew_misses)),
        ("releases", read(&STATS.releases)),
        ("release_misses", read(&STATS.release_misses)),
        ("expired", read(&STATS.expired)),
        ("forced_releases", read(&STATS.forced_releases)),
        ("handoffs", read(&STATS.handoffs)),
        ("wait_timeouts", read(&STATS.wait_timeouts)),
        ("wait_abandoned", read(&STATS.wait_abandoned)),
        ("shared_grants", read(&STATS.shared_grants)),
        ("semaphore_grants", read(&STATS.semaphore_grants)),
        ("retries_answered", read(&STATS.retries_answered)),
        ("clock_offset_ms", state::wall_offset().0),
    ];
    let built = fields
        .iter()
        .try_fold(ctx.builder().add_section(""), |b, (name, value)| {
            b.field(name, *value)
        });
    if let Ok(section) = built {
        let _ = section.build_section().and_then(|b| b.build_info());
    }
}
