//! The targets, each judged against this run's measurements.

use crate::locks::Impl;
use crate::report::format::num;
use crate::report::results::{Results, TargetResult};
use crate::stats::{median, range};

fn t(scenario: u8, target: String, measured: String, met: Option<bool>) -> TargetResult {
    TargetResult {
        scenario,
        target,
        measured,
        met,
    }
}

/// Judges every target for which this run has the numbers.
pub fn evaluate(r: &Results) -> Vec<TargetResult> {
    let mut out = Vec::new();
    throughput(r, &mut out);
    cpu(r, &mut out);
    handoff(r, &mut out);
    expiry(r, &mut out);
    memory(r, &mut out);
    scale(r, &mut out);
    watchdog(r, &mut out);
    out
}

/// Module ÷ `other` throughput at pipeline `depth`, round by round (the
/// implementations take turns within a round, so a round's ratio is
/// measured under the same background load): (median, lowest, highest).
pub fn round_ratios(r: &Results, other: Impl, depth: usize) -> Option<(f64, f64, f64)> {
    let rounds = |imp| {
        r.throughput
            .iter()
            .find(|x| x.imp == imp && x.depth == depth)
            .map(|x| x.rounds.clone())
    };
    let (m, b) = (rounds(Impl::Module)?, rounds(other)?);
    let ratios: Vec<f64> = m
        .iter()
        .zip(&b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(m, b)| m / b)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let (lo, hi) = range(&ratios);
    Some((median(&ratios), lo, hi))
}

fn throughput(r: &Results, out: &mut Vec<TargetResult>) {
    let depths: Vec<usize> = r.plan.tp_depths.clone();
    for d in depths {
        let get = |imp| {
            r.throughput
                .iter()
                .find(|x| x.imp == imp && x.depth == d)
                .map(|x| x.cycles_per_sec)
        };
        let Some(m) = get(Impl::Module) else { continue };
        for (imp, factor) in [(Impl::SetNx, 0.9), (Impl::Redisson, 2.5)] {
            if let (Some(b), Some((ratio, lo, hi))) = (get(imp), round_ratios(r, imp, d)) {
                out.push(t(
                    1,
                    format!("throughput, depth {d}: module ≥ {factor} × {}", imp.label()),
                    format!(
                        "{:.2}× (median of per-round ratios; rounds {lo:.2}–{hi:.2}×); medians {} vs {} cycles/s",
                        ratio,
                        num(m),
                        num(b)
                    ),
                    Some(ratio >= factor),
                ));
            }
        }
    }
}

fn cpu(r: &Results, out: &mut Vec<TargetResult>) {
    let get = |imp, op: &str| {
        r.cpu
            .iter()
            .find(|x| x.imp == imp && x.op == op)
            .map(|x| x.usec_per_call)
    };
    let Some(set) = get(Impl::SetNx, "acquire") else {
        return;
    };
    for op in ["acquire", "release", "renew"] {
        if let Some(m) = get(Impl::Module, op) {
            let ratio = m / set;
            out.push(t(
                2,
                format!("CPU: LOCK.{} ≤ 1.2 × SET NX PX", op.to_uppercase()),
                format!("{m:.3} vs {set:.3} usec/call = {ratio:.2}×"),
                Some(ratio <= 1.2),
            ));
        }
    }
}

fn handoff(r: &Results, out: &mut Vec<TargetResult>) {
    for m in r.handoff.iter().filter(|x| x.imp == Impl::Module) {
        if let Some(b) = r
            .handoff
            .iter()
            .find(|x| x.imp == Impl::Redisson && x.clients == m.clients && x.hold_ms == m.hold_ms)
        {
            let ratio = m.latency_us.p99 / b.latency_us.p99;
            out.push(t(
                3,
                format!(
                    "hand-off p99, {} clients, hold {} ms: module ≤ 1/10 × Redisson-style",
                    m.clients, m.hold_ms
                ),
                format!(
                    "{} vs {} µs = 1/{:.1}",
                    num(m.latency_us.p99),
                    num(b.latency_us.p99),
                    1.0 / ratio
                ),
                Some(ratio <= 0.1),
            ));
        }
    }
    let module: Vec<_> = r.handoff.iter().filter(|x| x.imp == Impl::Module).collect();
    if !module.is_empty() {
        let wasted: u64 = module.iter().map(|x| x.wasted).sum();
        let timeouts: u64 = module.iter().map(|x| x.timeouts).sum();
        let grants: u64 = module.iter().map(|x| x.grants).sum();
        out.push(t(
            3,
            "hand-off: zero wasted requests (module)".into(),
            format!("{wasted} wasted, {timeouts} timed-out waits in {grants} grants"),
            Some(wasted == 0 && timeouts == 0),
        ));
    }
    if let Some(f) = r.fifo.iter().find(|x| x.imp == Impl::Module) {
        let overtakes: u64 = module.iter().map(|x| x.overtakes).sum();
        out.push(t(
            3,
            "hand-off: FIFO order (module)".into(),
            format!(
                "FIFO check: {} waiters granted in order {:?} ({} inversions); contended runs: {overtakes} overtakes",
                f.waiters, f.order, f.inversions
            ),
            Some(f.in_order),
        ));
    }
}

fn expiry(r: &Results, out: &mut Vec<TargetResult>) {
    let largest = r.plan.exp_sizes.iter().copied().max().unwrap_or(0);
    let m = r
        .expiry
        .iter()
        .find(|x| x.imp == Impl::Module && x.leases == largest);
    if let Some(m) = m {
        let px = r
            .expiry
            .iter()
            .find(|x| x.imp == Impl::SetNx && x.leases == largest)
            .map(|b| format!("; PX keys: p99 {} ms", num(b.lateness_ms.p99)))
            .unwrap_or_default();
        out.push(t(
            4,
            format!(
                "expiry lateness p99 ≤ 5 ms at {} leases",
                num(largest as f64)
            ),
            format!(
                "p99 {} ms (p50 {}, max {}), {} not removed, {} early{px}",
                num(m.lateness_ms.p99),
                num(m.lateness_ms.p50),
                num(m.lateness_ms.max),
                m.missing,
                m.early
            ),
            Some(m.lateness_ms.p99 <= 5.0 && m.missing == 0 && m.early == 0),
        ));
    }
}

fn memory(r: &Results, out: &mut Vec<TargetResult>) {
    let largest = r.plan.scale_sizes.iter().copied().max().unwrap_or(0);
    let get = |imp| {
        r.scale
            .iter()
            .find(|x| x.imp == imp && x.locks == largest)
            .map(|x| x.bytes_per_lock)
    };
    if let (Some(m), Some(b)) = (get(Impl::Module), get(Impl::SetNx)) {
        let ratio = m / b;
        out.push(t(
            5,
            format!(
                "memory per lock at {} locks ≤ 1.1 × SET NX PX string",
                num(largest as f64)
            ),
            format!("{m:.1} vs {b:.1} bytes = {ratio:.2}×"),
            Some(ratio <= 1.1),
        ));
    }
}

fn scale(r: &Results, out: &mut Vec<TargetResult>) {
    let sizes = &r.plan.scale_sizes;
    let (Some(&small), Some(&large)) = (sizes.iter().min(), sizes.iter().max()) else {
        return;
    };
    let get = |imp, n| r.scale.iter().find(|x| x.imp == imp && x.locks == n);
    if let (Some(s), Some(l)) = (get(Impl::Module, small), get(Impl::Module, large)) {
        let (a, b) = (&s.acquire_latency_us, &l.acquire_latency_us);
        let growth = l.acquire_usec_per_call - s.acquire_usec_per_call;
        // A big keyspace costs every command cache misses in Redis's own
        // dict; what must not grow is the module's part on top of that.
        let set_growth = match (get(Impl::SetNx, small), get(Impl::SetNx, large)) {
            (Some(x), Some(y)) => Some(y.acquire_usec_per_call - x.acquire_usec_per_call),
            _ => None,
        };
        let allowed = set_growth.map_or(0.5, |g| g.max(0.0) + 0.25);
        let set_text = set_growth
            .map(|g| format!(" (SET NX PX: {g:+.2})"))
            .unwrap_or_default();
        out.push(t(
            6,
            format!(
                "acquire latency flat from {} to {} live locks (round-trip p50 within 1.5×; server cost grows no more than SET NX PX's + 0.25 µs)",
                num(small as f64),
                num(large as f64)
            ),
            format!(
                "p50 {} → {} µs, p99 {} → {} µs; server {:.2} → {:.2} usec/call, {growth:+.2}{set_text}",
                num(a.p50),
                num(b.p50),
                num(a.p99),
                num(b.p99),
                s.acquire_usec_per_call,
                l.acquire_usec_per_call
            ),
            Some(b.p50 <= 1.5 * a.p50 && growth <= allowed),
        ));
        if let (Some(save), Some(load)) = (l.save_ms, l.load_ms) {
            out.push(t(
                6,
                format!(
                    "RDB save and load of {} locks (reported)",
                    num(large as f64)
                ),
                format!("SAVE {} ms, load {} ms", num(save), num(load)),
                None,
            ));
        }
    }
}

fn watchdog(r: &Results, out: &mut Vec<TargetResult>) {
    if let Some(m) = r.watchdog.iter().find(|x| x.imp == Impl::Module) {
        let base = r
            .watchdog
            .iter()
            .find(|x| x.imp == Impl::SetNx)
            .map(|b| format!("; SET NX PX + Lua: {:.1}% CPU", b.server_cpu_pct))
            .unwrap_or_default();
        out.push(t(
            7,
            format!(
                "watchdog: {} locks renewed every {} ms keep up (≥ 95% of {}/s)",
                num(m.locks as f64),
                m.interval_ms,
                num(m.target_per_sec)
            ),
            format!(
                "{}/s, server CPU {:.1}% of a core, {:.2} CPU µs per renewal{base}",
                num(m.renewals_per_sec),
                m.server_cpu_pct,
                m.cpu_us_per_renewal
            ),
            Some(m.renewals_per_sec >= 0.95 * m.target_per_sec && m.failed == 0),
        ));
    }
}
