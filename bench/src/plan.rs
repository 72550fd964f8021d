//! How big each scenario is in quick and in full mode. Full mode follows the
//! issue's numbers and should finish in under ten minutes on two cores;
//! quick mode keeps every scenario but shrinks it to run in well under a
//! minute.

use serde::Serialize;

/// Quick or full sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Small sizes, well under a minute (smoke test, `make bench-quick`).
    Quick,
    /// The sizes of the issue (`make bench`).
    Full,
}

/// Sizes and durations of every scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Quick or full.
    pub mode: Mode,
    /// Scenario 1: client connections.
    pub tp_connections: usize,
    /// Scenario 1: pipeline depths (commands in flight per connection).
    pub tp_depths: Vec<usize>,
    /// Scenario 1: measured seconds per run.
    pub tp_seconds: f64,
    /// Scenario 1: unmeasured warm-up seconds per run.
    pub tp_warmup: f64,
    /// Scenario 1: repetitions (the median is reported).
    pub tp_rounds: usize,
    /// Scenario 2: keys per phase.
    pub cpu_keys: usize,
    /// Scenario 2: repetitions (the median is reported).
    pub cpu_rounds: usize,
    /// Scenario 3: clients contending for one key.
    pub ho_clients: Vec<usize>,
    /// Scenario 3: hold times, ms.
    pub ho_hold_ms: Vec<u64>,
    /// Scenario 3: measured seconds per run.
    pub ho_seconds: f64,
    /// Scenario 3: waiters in the FIFO check.
    pub fifo_waiters: usize,
    /// Scenario 4: live leases per run.
    pub exp_sizes: Vec<usize>,
    /// Scenario 4: deadlines are spread over this many ms.
    pub exp_spread_ms: u64,
    /// Scenario 4: how long after the last deadline to wait for stragglers.
    pub exp_grace_ms: u64,
    /// Scenario 4b: leases that all end at the same moment.
    pub burst_leases: usize,
    /// Scenarios 5 and 6: the small and the large number of live locks.
    pub scale_sizes: Vec<usize>,
    /// Scenario 6: acquire latency samples per size.
    pub lat_samples: usize,
    /// Scenario 7: held locks.
    pub wd_locks: usize,
    /// Scenario 7: their ttl (renewed every ttl/3).
    pub wd_ttl_ms: u64,
    /// Scenario 7: measured seconds.
    pub wd_seconds: f64,
    /// Scenario 7: seconds of idle CPU measured before renewals start.
    pub wd_idle_seconds: f64,
    /// Scenario 8: readers looping on one read/write lock.
    pub rw_readers: usize,
    /// Scenario 8: each read hold lasts a random time in this range, ms.
    pub rw_read_hold_ms: (u64, u64),
    /// Scenario 8: a writer turn starts every this many ms.
    pub rw_writer_every_ms: u64,
    /// Scenario 8: how long the writer holds the lock, ms.
    pub rw_write_hold_ms: u64,
    /// Scenario 8: measured seconds per implementation.
    pub rw_seconds: f64,
    /// Scenario 9: clients looping on one semaphore.
    pub sem_clients: usize,
    /// Scenario 9: its permits.
    pub sem_permits: usize,
    /// Scenario 9: how long each permit is held, ms.
    pub sem_hold_ms: u64,
    /// Scenario 9: measured seconds per implementation.
    pub sem_seconds: f64,
    /// Scenario 9: waiters in the FIFO check.
    pub sem_fifo_waiters: usize,
}

impl Plan {
    /// The plan for `mode`, with timed runs overridden by `seconds`.
    pub fn new(mode: Mode, seconds: Option<f64>) -> Plan {
        let full = Plan {
            mode,
            tp_connections: 50,
            tp_depths: vec![1, 16],
            tp_seconds: 1.5,
            tp_warmup: 0.3,
            tp_rounds: 7,
            cpu_keys: 200_000,
            cpu_rounds: 5,
            ho_clients: vec![2, 16, 64],
            ho_hold_ms: vec![0, 1],
            ho_seconds: 3.0,
            fifo_waiters: 16,
            exp_sizes: vec![1_000, 100_000, 1_000_000],
            exp_spread_ms: 10_000,
            exp_grace_ms: 20_000,
            burst_leases: 100_000,
            scale_sizes: vec![1_000, 1_000_000],
            lat_samples: 20_000,
            wd_locks: 100_000,
            wd_ttl_ms: 30_000,
            wd_seconds: 20.0,
            wd_idle_seconds: 2.0,
            rw_readers: 4,
            rw_read_hold_ms: (1, 5),
            rw_writer_every_ms: 10,
            rw_write_hold_ms: 1,
            rw_seconds: 3.0,
            sem_clients: 16,
            sem_permits: 4,
            sem_hold_ms: 1,
            sem_seconds: 3.0,
            sem_fifo_waiters: 12,
        };
        let mut p = match mode {
            Mode::Full => full,
            // Every scenario and configuration, at small sizes.
            Mode::Quick => Plan {
                tp_seconds: 0.5,
                tp_warmup: 0.1,
                tp_rounds: 1,
                cpu_keys: 20_000,
                // Three, so both orders of the module with and without
                // request ids run and their ratio is a median (~2 s).
                cpu_rounds: 3,
                ho_seconds: 0.3,
                fifo_waiters: 8,
                exp_sizes: vec![1_000, 20_000],
                exp_spread_ms: 1_000,
                exp_grace_ms: 3_000,
                burst_leases: 10_000,
                scale_sizes: vec![1_000, 50_000],
                lat_samples: 1_000,
                wd_locks: 5_000,
                wd_ttl_ms: 3_000,
                wd_seconds: 2.0,
                wd_idle_seconds: 0.5,
                rw_seconds: 0.5,
                sem_seconds: 0.5,
                sem_fifo_waiters: 8,
                ..full
            },
        };
        if let Some(s) = seconds {
            p.tp_seconds = s;
            p.ho_seconds = s;
            p.wd_seconds = s;
            p.rw_seconds = s;
            p.sem_seconds = s;
        }
        p
    }
}
