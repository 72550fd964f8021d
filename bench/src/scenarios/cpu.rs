//! Scenario 2: server CPU per command, from `INFO commandstats`.
//!
//! For each implementation: acquire `cpu_keys` fresh keys, renew them all,
//! release them all — each phase after `CONFIG RESETSTAT`, so the one
//! command that carries it (`lock.acquire`, `set`, `evalsha`, ...) is alone
//! in its stats. The cost is `usec / calls` (Redis's own clock around the
//! command; for `EVALSHA` it includes the commands the script calls). The
//! median of `cpu_rounds` rounds.
//!
//! The module is measured twice per round: as the others, and with
//! exactly-once retries — `LOCK.ACQUIRE key owner ttl ID request-id` and
//! `LOCK.RELEASE key owner ID request-id`, a fresh 36-byte id per operation
//! (the renewals between them carry none: `LOCK.RENEW` has no `ID`). The two
//! run back to back in every round, their order alternating from round to
//! round, so each round's with-÷-without ratio is taken under the same
//! background load; the target is judged on the median of those ratios.

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::locks::{Impl, Lock, Op};
use crate::scenarios::{apply_all, progress, Bulk, Ctx};
use crate::stats::median;

/// One implementation (the module: with or without request ids), one
/// operation.
#[derive(Clone, Debug, Serialize)]
pub struct CpuRow {
    /// Which implementation.
    pub imp: Impl,
    /// True for the module's `... ID request-id` variant.
    pub request_ids: bool,
    /// `acquire`, `renew` or `release`.
    pub op: &'static str,
    /// The command in `INFO commandstats` that carried it.
    pub command: &'static str,
    /// Calls seen per round (each must be `cpu_keys`).
    pub calls: u64,
    /// Median microseconds per call.
    pub usec_per_call: f64,
    /// Every round's value, in round order (the rows of one run line up
    /// round by round).
    pub rounds: Vec<f64>,
}

impl CpuRow {
    /// The name of what was measured, for tables.
    pub fn label(&self) -> String {
        variant_label(self.imp, self.request_ids)
    }
}

/// `fencelock`, `fencelock + ID`, `SET NX PX + Lua`, ...
pub fn variant_label(imp: Impl, request_ids: bool) -> String {
    match request_ids {
        true => format!("{} + ID", imp.label()),
        false => imp.label().to_string(),
    }
}

const TTL_MS: u64 = 60_000;
const CONNS: usize = 8;
const DEPTH: usize = 32;

/// What is measured in round `round`: every selected implementation, and
/// next to the module the module with request ids — after it in even
/// rounds, before it in odd ones.
fn variants(locks: &[Lock], round: usize) -> Vec<Lock> {
    let mut out = Vec::with_capacity(locks.len() + 1);
    for lock in locks {
        match lock.with_request_ids() {
            Some(with_ids) if round % 2 == 1 => out.extend([with_ids, lock.clone()]),
            Some(with_ids) => out.extend([lock.clone(), with_ids]),
            None => out.push(lock.clone()),
        }
    }
    out
}

/// Runs every round × implementation × phase.
pub async fn run(ctx: &mut Ctx) -> Result<Vec<CpuRow>> {
    let n = ctx.plan.cpu_keys;
    let mut rows: Vec<CpuRow> = Vec::new();
    for round in 0..ctx.plan.cpu_rounds {
        for lock in variants(&ctx.locks, round) {
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
                        variant_label(lock.imp(), lock.sends_request_ids())
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
            r.label(),
            r.op,
            r.command,
            r.usec_per_call
        ));
    }
    for op in ["acquire", "release"] {
        if let Some((ratio, lo, hi)) = id_ratios(&rows, op) {
            progress(&format!(
                "cpu {op} with ID ÷ without: {ratio:.3}× (rounds {lo:.3}–{hi:.3}×)"
            ));
        }
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
    let ids = lock.sends_request_ids();
    match rows
        .iter_mut()
        .find(|r| r.imp == lock.imp() && r.request_ids == ids && r.op == op)
    {
        Some(r) => r.rounds.push(per_call),
        None => rows.push(CpuRow {
            imp: lock.imp(),
            request_ids: ids,
            op,
            command,
            calls,
            usec_per_call: per_call,
            rounds: vec![per_call],
        }),
    }
}

/// The row of `imp` (with or without request ids) for `op`.
pub fn row<'a>(rows: &'a [CpuRow], imp: Impl, request_ids: bool, op: &str) -> Option<&'a CpuRow> {
    rows.iter()
        .find(|x| x.imp == imp && x.request_ids == request_ids && x.op == op)
}

/// The module's `op` with `ID request-id` ÷ without, round by round (the
/// two ran back to back in each round): (median, lowest, highest); `None`
/// without both rows.
pub fn id_ratios(rows: &[CpuRow], op: &str) -> Option<(f64, f64, f64)> {
    let with = row(rows, Impl::Module, true, op)?;
    let without = row(rows, Impl::Module, false, op)?;
    let ratios: Vec<f64> = with
        .rounds
        .iter()
        .zip(&without.rounds)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let (lo, hi) = crate::stats::range(&ratios);
    Some((median(&ratios), lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_row(imp: Impl, request_ids: bool, op: &'static str, rounds: &[f64]) -> CpuRow {
        CpuRow {
            imp,
            request_ids,
            op,
            command: "lock.acquire",
            calls: 1000,
            usec_per_call: median(rounds),
            rounds: rounds.to_vec(),
        }
    }

    #[test]
    fn id_ratios_are_the_median_of_per_round_ratios() {
        // Round 2 is slow for both: its ratio is 1.0, not 2.0.
        let rows = [
            cpu_row(Impl::Module, false, "acquire", &[2.0, 4.0, 2.0]),
            cpu_row(Impl::Module, true, "acquire", &[2.2, 4.0, 2.4]),
        ];
        let (m, lo, hi) = id_ratios(&rows, "acquire").unwrap_or_default();
        assert!((m - 1.1).abs() < 1e-9, "{m}");
        assert!((lo - 1.0).abs() < 1e-9 && (hi - 1.2).abs() < 1e-9);
        assert!(id_ratios(&rows, "release").is_none());
        assert!(id_ratios(&rows[..1], "acquire").is_none());
    }

    #[test]
    fn the_id_variant_runs_next_to_the_module_in_alternating_order() {
        let plain = |imp| Lock::for_tests(imp);
        let locks = [plain(Impl::Module), plain(Impl::SetNx)];
        let shape = |round| {
            variants(&locks, round)
                .iter()
                .map(|l| (l.imp(), l.sends_request_ids()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shape(0),
            [
                (Impl::Module, false),
                (Impl::Module, true),
                (Impl::SetNx, false)
            ]
        );
        assert_eq!(
            shape(1),
            [
                (Impl::Module, true),
                (Impl::Module, false),
                (Impl::SetNx, false)
            ]
        );
        let baselines = [plain(Impl::SetNx), plain(Impl::Redisson)];
        assert_eq!(variants(&baselines, 0).len(), 2);
    }
}
