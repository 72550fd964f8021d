//! The `INFO lock` section: current locks and waiters, and the counters.

use redis_module::InfoContext;

use crate::state;
use crate::stats::{read, STATS};

/// Writes the section (field names get Redis's `lock_` prefix).
pub fn write(ctx: &InfoContext) {
    let (waiters, leases) = state::with(|s| (s.queues.total(), s.schedule.len()));
    let held = STATS.held.load(std::sync::atomic::Ordering::Relaxed).max(0);
    let fields: [(&str, i64); 15] = [
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
