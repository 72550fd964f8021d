//! Scenario 1: uncontended acquire+release cycles over distinct keys.
//!
//! `tp_connections` clients, each with its own owner and its own keys. At
//! pipeline depth d a client sends d acquires (d distinct keys) in one
//! round trip, checks every one was granted, then sends the d releases in
//! the next — d commands in flight, as `redis-benchmark -P d` counts them.
//! The figure is completed cycles per second over the measured window
//! (after a warm-up), the median of `tp_rounds` runs; the implementations
//! take turns within each round so that background load hits all alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Acquired, Impl, Link, Lock};
use crate::scenarios::client_lib::{ClientLib, LoadClient};
use crate::scenarios::{key16, progress, Ctx};
use crate::stats::median;

/// One implementation at one pipeline depth.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    /// Which implementation.
    pub imp: Impl,
    /// Commands in flight per connection.
    pub depth: usize,
    /// Client connections.
    pub connections: usize,
    /// Cycles per second of each round.
    pub rounds: Vec<f64>,
    /// Median of `rounds`.
    pub cycles_per_sec: f64,
    /// Server CPU during the runs, % of one core (mean over rounds): near
    /// 100 means the server was the bottleneck, lower means the load
    /// generator was.
    pub server_cpu_pct: f64,
}

/// Lease of the cycled locks (never reached: each is released at once).
const TTL_MS: &str = "30000";
/// Bound on cycles per connection per run (the time bound comes first).
const MAX_CYCLES_PER_CONN: u64 = 100_000_000;

/// Runs every depth × round × implementation.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<ThroughputRow>> {
    let mut rows = Vec::new();
    for &depth in &ctx.plan.tp_depths.clone() {
        let mut per_impl: Vec<(Impl, Vec<f64>, Vec<f64>)> = ctx
            .locks
            .iter()
            .map(|l| (l.imp(), Vec::new(), Vec::new()))
            .collect();
        for round in 0..ctx.plan.tp_rounds {
            for (lock, (_, results, cpu)) in ctx.locks.clone().iter().zip(per_impl.iter_mut()) {
                ctx.admin.flushall().await?;
                let cpu0 = ctx.admin.cpu_seconds().await?;
                let t = Instant::now();
                let rate = one_run(ctx, lock, depth, ClientLib::Resp).await?;
                let cpu1 = ctx.admin.cpu_seconds().await?;
                cpu.push((cpu1 - cpu0) / t.elapsed().as_secs_f64() * 100.0);
                progress(&format!(
                    "throughput depth {depth} round {} {}: {:.0} cycles/s",
                    round + 1,
                    lock.imp().name(),
                    rate
                ));
                results.push(rate);
            }
        }
        for (imp, rounds, cpu) in per_impl {
            rows.push(ThroughputRow {
                imp,
                depth,
                connections: ctx.plan.tp_connections,
                cycles_per_sec: median(&rounds),
                rounds,
                server_cpu_pct: cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
            });
        }
    }
    Ok(rows)
}

/// One timed run of `lock` at pipeline depth `depth`: cycles per second.
pub async fn one_run(ctx: &Ctx, lock: &Lock, depth: usize, lib: ClientLib) -> Result<f64> {
    let plan = &ctx.plan;
    let mut links = Vec::with_capacity(plan.tp_connections);
    for _ in 0..plan.tp_connections {
        links.push(LoadClient::connect(lib, ctx.port, false).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + Duration::from_secs_f64(plan.tp_warmup);
    let end = measure_from + Duration::from_secs_f64(plan.tp_seconds);
    let window = Arc::new((start, measure_from, end));
    let mut tasks = Vec::new();
    for (c, link) in links.into_iter().enumerate() {
        let lock = lock.clone();
        let window = Arc::clone(&window);
        tasks.push(tokio::spawn(async move {
            client(lock, link, c, depth, *window).await
        }));
    }
    let mut cycles = 0u64;
    for t in tasks {
        cycles += t.await??;
    }
    Ok(cycles as f64 / plan.tp_seconds)
}

/// One client: returns the cycles it completed inside the measured window.
async fn client(
    lock: Lock,
    mut link: LoadClient,
    c: usize,
    depth: usize,
    window: (Instant, Instant, Instant),
) -> Result<u64> {
    let (start, measure_from, end) = window;
    let owner = uuid::Uuid::new_v4().hyphenated().to_string().into_bytes();
    let keys: Vec<Vec<u8>> = (0..depth)
        .map(|j| key16(b't', (c * 1000 + j) as u64))
        .collect();
    let ttl = TTL_MS.as_bytes();
    tokio::time::sleep_until(start.into()).await;
    let mut counted = 0u64;
    let mut done = 0u64;
    while done < MAX_CYCLES_PER_CONN {
        let now = Instant::now();
        if now >= end {
            break;
        }
        link.round_trip(
            depth,
            |q| {
                keys.iter()
                    .for_each(|k| lock.queue_acquire(q, k, &owner, ttl))
            },
            |r| match lock.acquired(r)? {
                Acquired::Granted => Ok(()),
                Acquired::Busy { .. } => Err(BenchError::unexpected("uncontended acquire", r)),
            },
        )
        .await?;
        link.round_trip(
            depth,
            |q| {
                keys.iter()
                    .for_each(|k| lock.queue_release(q, k, &owner, ttl))
            },
            |r| match lock.released(r)? {
                true => Ok(()),
                false => Err(BenchError::unexpected("release by the holder", r)),
            },
        )
        .await?;
        done += depth as u64;
        let t = Instant::now();
        if t >= measure_from && t < end {
            counted += depth as u64;
        }
    }
    Ok(counted)
}
