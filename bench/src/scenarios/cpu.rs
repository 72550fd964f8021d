//! Scenario 2: server CPU per command, from `INFO commandstats`.
//!
//! For each implementation: acquire `cpu_keys` fresh keys, renew them all,
//! release them all — each phase after `CONFIG RESETSTAT`, so the one
//! command that carries it (`lock.acquire`, `set`, `evalsha`, ...) is alone
//! in its stats. The cost is `usec / calls` (Redis's own clock around the
//! command; for `EVALSHA` it includes the commands the script calls). The
//! median of `cpu_rounds` rounds.

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Impl, Lock, Op};
use crate::scenarios::{apply_all, progress, Bulk, Ctx};
use crate::stats::median;

/// One implementation, one operation.
#[derive(Clone, Debug, Serialize)]
pub struct CpuRow {
    /// Which implementation.
    pub imp: Impl,
    /// `acquire`, `renew` or `release`.
    pub op: &'static str,
    /// The command in `INFO commandstats` that carried it.
    pub command: &'static str,
    /// Calls seen per round (each must be `cpu_keys`).
    pub calls: u64,
    /// Median microseconds per call.
    pub usec_per_call: f64,
    /// Every round's value.
    pub rounds: Vec<f64>,
}

const TTL_MS: u64 = 60_000;
const CONNS: usize = 8;
const DEPTH: usize = 32;

/// Runs every round × implementation × phase.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<CpuRow>> {
    let n = ctx.plan.cpu_keys;
    let mut rows: Vec<CpuRow> = Vec::new();
    for _ in 0..ctx.plan.cpu_rounds {
        for lock in ctx.locks.clone() {
            ctx.admin.flushall().await?;
            for op in [Op::Acquire, Op::Renew, Op::Release] {
                let (name, command) = (op.name(), lock.stat_name(op));
                ctx.admin.reset_stats().await?;
                apply_all(
                    ctx.port,
                    &lock,
                    Bulk {
                        op,
                        tag: b'c',
                        n,
                        ttl_ms: TTL_MS,
                        conns: CONNS,
                        depth: DEPTH,
                    },
                )
                .await?;
                let s = ctx.admin.command_stat(command).await?;
                if s.calls != n as u64 {
                    return Err(BenchError::Setup(format!(
                        "cmdstat_{command} counted {} calls for {n} {name}s of {}",
                        s.calls,
                        lock.imp().name()
                    )));
                }
                record(&mut rows, &lock, name, command, s.calls, s.per_call());
            }
        }
    }
    for r in &mut rows {
        r.usec_per_call = median(&r.rounds);
        progress(&format!(
            "cpu {} {} ({}): {:.3} usec/call",
            r.imp.name(),
            r.op,
            r.command,
            r.usec_per_call
        ));
    }
    Ok(rows)
}

fn record(
    rows: &mut Vec<CpuRow>,
    lock: &Lock,
    op: &'static str,
    command: &'static str,
    calls: u64,
    per_call: f64,
) {
    match rows.iter_mut().find(|r| r.imp == lock.imp() && r.op == op) {
        Some(r) => r.rounds.push(per_call),
        None => rows.push(CpuRow {
            imp: lock.imp(),
            op,
            command,
            calls,
            usec_per_call: per_call,
            rounds: vec![per_call],
        }),
    }
}
