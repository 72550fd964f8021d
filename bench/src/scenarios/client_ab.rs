//! The client A/B (`--client-ab`; not part of a normal run): does the
//! `redis` crate, used as the load generator's client, give the same
//! figures as this crate's RESP client (`resp.rs`)?
//!
//! The throughput scenario (every pipeline depth) and the hand-off scenario
//! (every client count, hold 0 ms) run once on each client library per
//! round, `tp_rounds` rounds, the order of the two libraries alternating
//! from round to round; every implementation is measured. Reported: the
//! median figure on each library, the median of the per-round ratios
//! (crate ÷ hand-written; a round's pair shares the same background load),
//! and the CPU the load generator and the server used during the runs
//! (`/proc/self/task/*/schedstat`; `INFO cpu`). Written to
//! `client-ab.md` and `client-ab.json` in the output folder and printed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::locks::{Impl, Lock};
use crate::scenarios::client_lib::ClientLib;
use crate::scenarios::{handoff, progress, throughput, Ctx};
use crate::stats::{median, range};

/// One run of one configuration on one library.
#[derive(Clone, Debug, Serialize)]
pub struct AbRun {
    /// `throughput depth D` or `hand-off C clients`.
    pub test: String,
    /// Which implementation.
    pub imp: Impl,
    /// Which client library.
    pub lib: ClientLib,
    /// Round number.
    pub round: usize,
    /// Cycles per second (throughput) or p99 µs (hand-off).
    pub value: f64,
    /// Hand-off p50 µs (0 for throughput).
    pub p50_us: f64,
    /// Load generator CPU during the run, % of one core.
    pub client_cpu_pct: f64,
    /// Load generator CPU per command (throughput) or per grant (hand-off), µs.
    pub client_cpu_us: f64,
    /// Server CPU during the run, % of one core.
    pub server_cpu_pct: f64,
}

/// CPU seconds this process has used, all threads.
fn own_cpu_seconds() -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// Runs the A/B, writes and prints its table.
pub async fn run(ctx: &mut Ctx, out: &Path) -> Result<Vec<AbRun>> {
    let mut runs = Vec::new();
    let rounds = ctx.plan.tp_rounds;
    for round in 0..rounds {
        let libs = if round % 2 == 0 {
            [ClientLib::Resp, ClientLib::Crate]
        } else {
            [ClientLib::Crate, ClientLib::Resp]
        };
        for &depth in &ctx.plan.tp_depths.clone() {
            for lock in ctx.locks.clone() {
                for lib in libs {
                    let start = Start::now(ctx).await?;
                    let rate = throughput::one_run(ctx, &lock, depth, lib).await?;
                    // Commands over warm-up and window ≈ 2 × cycles/s × their length.
                    let commands = 2.0 * rate * (ctx.plan.tp_warmup + ctx.plan.tp_seconds);
                    let test = format!("throughput depth {depth}");
                    let figures = (rate, 0.0, commands);
                    runs.push(start.finish(ctx, &lock, lib, round, test, figures).await?);
                }
            }
        }
        for &clients in &ctx.plan.ho_clients.clone() {
            for lock in ctx.locks.clone() {
                for lib in libs {
                    let start = Start::now(ctx).await?;
                    let row = handoff::contended(ctx, &lock, clients, 0, lib).await?;
                    let test = format!("hand-off {clients} clients");
                    let figures = (row.latency_us.p99, row.latency_us.p50, row.grants as f64);
                    runs.push(start.finish(ctx, &lock, lib, round, test, figures).await?);
                }
            }
        }
    }
    let table = render(&runs, ctx);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("client-ab.md"), &table)?;
    std::fs::write(
        out.join("client-ab.json"),
        serde_json::to_string_pretty(&runs)? + "\n",
    )?;
    print!("{table}");
    Ok(runs)
}

/// CPU clocks and wall clock at the start of a run.
struct Start {
    server_cpu: f64,
    client_cpu: f64,
    at: Instant,
}

impl Start {
    /// Empties the server, then reads the clocks.
    async fn now(ctx: &mut Ctx) -> Result<Start> {
        ctx.admin.flushall().await?;
        Ok(Start {
            server_cpu: ctx.admin.cpu_seconds().await?,
            client_cpu: own_cpu_seconds(),
            at: Instant::now(),
        })
    }

    /// The run's record; `figures` = (value, p50 µs, operations).
    async fn finish(
        self,
        ctx: &mut Ctx,
        lock: &Lock,
        lib: ClientLib,
        round: usize,
        test: String,
        (value, p50_us, ops): (f64, f64, f64),
    ) -> Result<AbRun> {
        let wall = self.at.elapsed().as_secs_f64();
        let client = own_cpu_seconds() - self.client_cpu;
        let server = ctx.admin.cpu_seconds().await? - self.server_cpu;
        let run = AbRun {
            test,
            imp: lock.imp(),
            lib,
            round,
            value,
            p50_us,
            client_cpu_pct: client / wall * 100.0,
            client_cpu_us: client * 1e6 / ops.max(1.0),
            server_cpu_pct: server / wall * 100.0,
        };
        progress(&format!(
            "client-ab {} {} {} round {}: {:.1} (p50 {:.1}), client CPU {:.0}% ({:.2} µs/op), server CPU {:.0}%",
            run.test,
            run.imp.name(),
            lib.label(),
            round + 1,
            run.value,
            run.p50_us,
            run.client_cpu_pct,
            run.client_cpu_us,
            run.server_cpu_pct
        ));
        Ok(run)
    }
}

fn render(runs: &[AbRun], ctx: &Ctx) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Client A/B: {} rounds; throughput runs of {} s (+{} s warm-up), hand-off runs of {} s, hold 0 ms.\n",
        ctx.plan.tp_rounds, ctx.plan.tp_seconds, ctx.plan.tp_warmup, ctx.plan.ho_seconds
    );
    let _ = writeln!(
        s,
        "| run | implementation | figure | hand-written | redis crate | crate ÷ hand-written, median of rounds (range) | load generator CPU % (hand / crate) | load generator CPU µs per command or grant (hand / crate) | server CPU % (hand / crate) |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut tests: Vec<&str> = Vec::new();
    for r in runs {
        if !tests.contains(&r.test.as_str()) {
            tests.push(&r.test);
        }
    }
    for test in tests {
        for imp in Impl::ALL {
            let of = |lib| -> Vec<&AbRun> {
                runs.iter()
                    .filter(|r| r.test == test && r.imp == imp && r.lib == lib)
                    .collect()
            };
            let (a, b) = (of(ClientLib::Resp), of(ClientLib::Crate));
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let med = |v: &[&AbRun], f: fn(&AbRun) -> f64| {
                median(&v.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let ratio = |f: fn(&AbRun) -> f64| {
                let ratios: Vec<f64> = a
                    .iter()
                    .zip(&b)
                    .filter(|(x, _)| f(x) > 0.0)
                    .map(|(x, y)| f(y) / f(x))
                    .collect();
                let (lo, hi) = range(&ratios);
                format!("{:.2}× ({lo:.2}–{hi:.2})", median(&ratios))
            };
            let cpu = format!(
                "{:.0} / {:.0} | {:.2} / {:.2} | {:.0} / {:.0}",
                med(&a, |r| r.client_cpu_pct),
                med(&b, |r| r.client_cpu_pct),
                med(&a, |r| r.client_cpu_us),
                med(&b, |r| r.client_cpu_us),
                med(&a, |r| r.server_cpu_pct),
                med(&b, |r| r.server_cpu_pct),
            );
            let mut row = |figure: &str, f: fn(&AbRun) -> f64| {
                let _ = writeln!(
                    s,
                    "| {test} | {} | {figure} | {:.1} | {:.1} | {} | {cpu} |",
                    imp.label(),
                    med(&a, f),
                    med(&b, f),
                    ratio(f)
                );
            };
            if test.starts_with("throughput") {
                row("cycles/s", |r| r.value);
            } else {
                row("p50 µs", |r| r.p50_us);
                row("p99 µs", |r| r.value);
            }
        }
    }
    s.push('\n');
    s
}
