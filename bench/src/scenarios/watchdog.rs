//! Scenario 7: watchdog load.
//!
//! `wd_locks` held locks, each renewed every ttl/3 as a client watchdog
//! does, by `WATCHDOG_CONNS` clients. Renewals are spread evenly over the
//! interval (lock i's phase is i/N of it); every 10 ms each client sends
//! the renewals that have come due, in one pipeline (a handful at a time).
//! Measured: renewals per second achieved (the target rate is N ÷
//! interval), every renewal's success, server CPU (`used_cpu_user +
//! used_cpu_sys` delta ÷ wall time) and `INFO commandstats` cost per renew;
//! also the server's idle CPU with the N locks held and nothing renewed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Client, Impl, Link, Lock, Op, Queue};
use crate::scenarios::{apply_all, key16, owner36, progress, sleep_s, Bulk, Ctx};

/// One implementation.
#[derive(Clone, Debug, Serialize)]
pub struct WatchdogRow {
    /// Which implementation.
    pub imp: Impl,
    /// Held locks.
    pub locks: usize,
    /// Their ttl, ms.
    pub ttl_ms: u64,
    /// Renewal interval (ttl/3), ms.
    pub interval_ms: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Renewals answered "renewed".
    pub renewals: u64,
    /// Renewals answered "not held" (must be 0).
    pub failed: u64,
    /// `renewals / seconds`.
    pub renewals_per_sec: f64,
    /// `locks / interval`.
    pub target_per_sec: f64,
    /// Server CPU while renewing, % of one core.
    pub server_cpu_pct: f64,
    /// Server CPU with the locks held and idle, % of one core.
    pub idle_cpu_pct: f64,
    /// `INFO commandstats` µs per renew call.
    pub usec_per_call: f64,
    /// Server CPU µs per renewal, everything included (network, event loop).
    pub cpu_us_per_renewal: f64,
}

const WATCHDOG_CONNS: usize = 50;
const TICK: Duration = Duration::from_millis(10);

/// Runs every implementation.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<WatchdogRow>> {
    let mut rows = Vec::new();
    for lock in ctx.locks.clone() {
        let row = one_run(ctx, &lock).await?;
        progress(&format!(
            "watchdog {}: {:.0}/s of {:.0}/s, server CPU {:.1}% (idle {:.1}%), {:.2} usec/call, {:.2} CPU us/renewal",
            lock.imp().name(),
            row.renewals_per_sec,
            row.target_per_sec,
            row.server_cpu_pct,
            row.idle_cpu_pct,
            row.usec_per_call,
            row.cpu_us_per_renewal
        ));
        rows.push(row);
    }
    ctx.admin.flushall().await?;
    Ok(rows)
}

async fn one_run(ctx: &mut Ctx, lock: &Lock) -> Result<WatchdogRow> {
    let plan = ctx.plan.clone();
    let (n, ttl_ms) = (plan.wd_locks, plan.wd_ttl_ms);
    let interval = Duration::from_millis((ttl_ms / 3).max(1));
    ctx.admin.flushall().await?;
    let fill = Bulk {
        op: Op::Acquire,
        tag: b'w',
        n,
        ttl_ms,
        conns: 4,
        depth: 512,
    };
    apply_all(ctx.port, lock, fill).await?;

    let c0 = ctx.admin.cpu_seconds().await?;
    sleep_s(plan.wd_idle_seconds).await;
    let c1 = ctx.admin.cpu_seconds().await?;
    let idle_cpu_pct = (c1 - c0) / plan.wd_idle_seconds * 100.0;

    let mut conns = Vec::with_capacity(WATCHDOG_CONNS);
    for _ in 0..WATCHDOG_CONNS {
        conns.push(Client::connect(ctx.port, false).await?);
    }
    ctx.admin.reset_stats().await?;
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + Duration::from_secs_f64(plan.wd_seconds);
    let cpu_start = ctx.admin.cpu_seconds().await?;
    let schedule = Schedule {
        locks: n,
        ttl_ms,
        interval,
        start,
        end,
    };
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(renewer(lock.clone(), conn, c, schedule)));
    }
    let (mut renewals, mut failed) = (0, 0);
    for t in tasks {
        let (ok, bad) = t.await??;
        renewals += ok;
        failed += bad;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_end = ctx.admin.cpu_seconds().await?;
    let usec_per_call = ctx
        .admin
        .command_stat(lock.stat_name(Op::Renew))
        .await?
        .per_call();
    let cpu = cpu_end - cpu_start;
    if failed > 0 {
        return Err(BenchError::Setup(format!(
            "watchdog: {failed} renewals of held locks failed for {}",
            lock.imp().name()
        )));
    }
    Ok(WatchdogRow {
        imp: lock.imp(),
        locks: n,
        ttl_ms,
        interval_ms: interval.as_millis() as u64,
        seconds: elapsed,
        renewals,
        failed,
        renewals_per_sec: renewals as f64 / elapsed,
        target_per_sec: n as f64 / interval.as_secs_f64(),
        server_cpu_pct: cpu / elapsed * 100.0,
        idle_cpu_pct,
        usec_per_call,
        cpu_us_per_renewal: cpu * 1e6 / renewals.max(1) as f64,
    })
}

/// When the held locks are renewed.
#[derive(Clone, Copy)]
struct Schedule {
    /// Locks in all.
    locks: usize,
    ttl_ms: u64,
    interval: Duration,
    start: Instant,
    end: Instant,
}

/// One client's watchdog, for locks `first`, `first + WATCHDOG_CONNS`, ...:
/// returns (renewed, not renewed).
async fn renewer(
    lock: Lock,
    mut client: Client,
    first: usize,
    schedule: Schedule,
) -> Result<(u64, u64)> {
    let Schedule {
        locks: n,
        interval,
        start,
        end,
        ..
    } = schedule;
    let ttl = schedule.ttl_ms.to_string();
    let mut due: VecDeque<(Instant, u64)> = (first..n)
        .step_by(WATCHDOG_CONNS)
        .map(|i| (start + interval.mul_f64(i as f64 / n as f64), i as u64))
        .collect();
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut tick = tokio::time::interval_at(start.into(), TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_ticks = (end - start).as_millis() as u64 / TICK.as_millis() as u64 + 10;
    for _ in 0..max_ticks {
        tick.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        // The locks that have come due, each once, rescheduled an interval on.
        let mut renew = Vec::new();
        while let Some(&(at, i)) = due.front() {
            if at > now || renew.len() == due.len() {
                break;
            }
            due.pop_front();
            renew.push(i);
            due.push_back((at + interval, i));
        }
        if renew.is_empty() {
            continue;
        }
        let queue = |q: &mut dyn Queue| {
            for &i in &renew {
                let (k, o) = (key16(b'w', i), owner36(b'w', i));
                lock.queue_renew(q, &k, &o, ttl.as_bytes());
            }
        };
        let check = |r: &crate::resp::Reply| {
            match lock.renewed(r)? {
                true => ok += 1,
                false => bad += 1,
            }
            Ok(())
        };
        client.round_trip(renew.len(), queue, check).await?;
    }
    Ok((ok, bad))
}
