//! Everything one run measured, and where and when it ran.

use serde::Serialize;

use crate::plan::{Mode, Plan};
use crate::scenarios::cpu::CpuRow;
use crate::scenarios::expiry::{BurstRow, ExpiryRow};
use crate::scenarios::handoff::{FifoRow, HandoffRow};
use crate::scenarios::rwlock::RwRow;
use crate::scenarios::scale::ScaleRow;
use crate::scenarios::semaphore::SemRow;
use crate::scenarios::throughput::ThroughputRow;
use crate::scenarios::watchdog::WatchdogRow;

/// Where and when the run happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// Start, `YYYY-MM-DD HH:MM UTC`.
    pub date_utc: String,
    /// Start, Unix seconds.
    pub unix_time: u64,
    /// `quick` or `full`.
    pub mode: Option<Mode>,
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// `redis_version` of the server.
    pub redis_version: String,
    /// /proc/loadavg when the run started and when it ended (the machine
    /// may be shared; a high load makes every number noisier).
    pub load_avg_start: String,
    /// See `load_avg_start`.
    pub load_avg_end: String,
    /// True when the server ran pinned to the first CPU and the load
    /// generator (one thread) to the last.
    pub pinned: bool,
    /// The module file, when the benchmark started the server.
    pub module: Option<String>,
    /// Wall time of the whole run, s.
    pub elapsed_s: f64,
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Where and when.
    pub meta: Meta,
    /// The sizes used.
    pub plan: Plan,
    /// Scenario 1.
    pub throughput: Vec<ThroughputRow>,
    /// Scenario 2.
    pub cpu: Vec<CpuRow>,
    /// Scenario 3.
    pub handoff: Vec<HandoffRow>,
    /// Scenario 3, FIFO check.
    pub fifo: Vec<FifoRow>,
    /// Scenario 4.
    pub expiry: Vec<ExpiryRow>,
    /// Scenario 4b.
    pub burst: Vec<BurstRow>,
    /// Scenarios 5 and 6.
    pub scale: Vec<ScaleRow>,
    /// Scenario 7.
    pub watchdog: Vec<WatchdogRow>,
    /// Scenario 8.
    pub rwlock: Vec<RwRow>,
    /// Scenario 9.
    pub semaphore: Vec<SemRow>,
    /// Scenario 9, FIFO check.
    pub semaphore_fifo: Vec<FifoRow>,
    /// Every target, judged.
    pub targets: Vec<TargetResult>,
}

impl Results {
    /// An empty result set.
    pub fn new(meta: Meta, plan: Plan) -> Results {
        Results {
            meta,
            plan,
            throughput: Vec::new(),
            cpu: Vec::new(),
            handoff: Vec::new(),
            fifo: Vec::new(),
            expiry: Vec::new(),
            burst: Vec::new(),
            scale: Vec::new(),
            watchdog: Vec::new(),
            rwlock: Vec::new(),
            semaphore: Vec::new(),
            semaphore_fifo: Vec::new(),
            targets: Vec::new(),
        }
    }
}

/// One target and its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    /// Scenario number (1-9).
    pub scenario: u8,
    /// What the issue asks.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met or missed; `None` when not measured in this run.
    pub met: Option<bool>,
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn utc_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        let at = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .map(utc_date)
                .ok()
        };
        assert_eq!(at(0).as_deref(), Some("1970-01-01 00:00 UTC"));
        assert_eq!(
            at(951_782_400 + 3_660).as_deref(),
            Some("2000-02-29 01:01 UTC")
        );
        assert_eq!(at(1_700_000_000).as_deref(), Some("2023-11-14 22:13 UTC"));
    }
}
