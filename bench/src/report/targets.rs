//! The targets, each judged against this run's measurements.

use crate::locks::Impl;
use crate::report::format::num;
use crate::report::results::{Results, TargetResult};
use crate::scenarios::cpu::{id_ratios, row as cpu_row};
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
    burst(r, &mut out);
    memory(r, &mut out);
    scale(r, &mut out);
    watchdog(r, &mut out);
    rwlock(r, &mut out);
    semaphore(r, &mut out);
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
    let get = |imp, ids, op: &str| cpu_row(&r.cpu, imp, ids, op).map(|x| x.usec_per_call);
    if let Some(set) = get(Impl::SetNx, false, "acquire") {
        for op in ["acquire", "release", "renew"] {
            if let Some(m) = get(Impl::Module, false, op) {
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
    // Issue #12: exactly-once retries must be cheap.
    let mut measured = Vec::new();
    let mut met = true;
    for op in ["acquire", "release"] {
        let (Some((ratio, lo, hi)), Some(with), Some(without)) = (
            id_ratios(&r.cpu, op),
            get(Impl::Module, true, op),
            get(Impl::Module, false, op),
        ) else {
            return;
        };
        met &= ratio <= 1.10;
        measured.push(format!(
            "LOCK.{} {ratio:.3}× (rounds {lo:.3}–{hi:.3}×; medians {with:.3} vs {without:.3} usec/call)",
            op.to_uppercase()
        ));
    }
    out.push(t(
        2,
        "ID request-id: LOCK.ACQUIRE and LOCK.RELEASE with ID ≤ 1.10 × without".into(),
        format!("median of per-round ratios: {}", measured.join("; ")),
        Some(met),
    ));
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

fn burst(r: &Results, out: &mut Vec<TargetResult>) {
    let Some(m) = r.burst.iter().find(|x| x.imp == Impl::Module) else {
        return;
    };
    let px = r
        .burst
        .iter()
        .find(|x| x.imp == Impl::SetNx)
        .map(|b| format!("; PX keys: p99 {} ms", num(b.probe_ms.p99)))
        .unwrap_or_default();
    out.push(t(
        4,
        format!(
            "other commands p99 ≤ 5 ms during a burst of {} simultaneous expiries",
            num(r.plan.burst_leases as f64)
        ),
        format!(
            "p99 {} ms (p50 {}, max {}) over {} probes, drained in {} ms, {} left{px}",
            num(m.probe_ms.p99),
            num(m.probe_ms.p50),
            num(m.probe_ms.max),
            m.probe_ms.count,
            num(m.drain_ms),
            m.left
        ),
        Some(m.probe_ms.p99 <= 5.0 && m.left == 0),
    ));
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

fn rwlock(r: &Results, out: &mut Vec<TargetResult>) {
    let get = |imp| r.rwlock.iter().find(|x| x.imp == imp);
    if let Some(m) = get(Impl::Module) {
        let bound = m.longest_read_hold_ms + 1.0;
        out.push(t(
            8,
            "read/write: writer wait p99 ≤ longest read hold + 1 ms (module)".into(),
            format!(
                "p99 {} ms (p50 {}, max {}) vs longest read hold {} ms + 1; hand-off from the last reader p99 {} ms; {} of {} writer turns granted, {} starved, {} reader grants barged past the waiting writer, {} violations",
                num(m.writer_wait_ms.p99),
                num(m.writer_wait_ms.p50),
                num(m.writer_wait_ms.max),
                num(m.longest_read_hold_ms),
                num(m.writer_handoff_ms.p99),
                m.writer_grants,
                m.writer_turns,
                m.writer_starved,
                m.barged,
                m.violations
            ),
            Some(
                m.writer_turns > 0
                    && m.writer_grants == m.writer_turns
                    && m.writer_wait_ms.p99 <= bound
                    && m.violations == 0,
            ),
        ));
    }
    if let Some(b) = get(Impl::Redisson) {
        let bound = b.longest_read_hold_ms + 1.0;
        let starved = b.writer_starved > 0 || b.writer_wait_ms.p99 > bound;
        out.push(t(
            8,
            "read/write: the Redisson-style writer is starved or barged (the contrast the target assumes)".into(),
            format!(
                "writer p99 {} ms, max {} ms vs longest read hold {} ms + 1; {} of {} turns starved (never granted, or let in only when the readers stopped); {} reader grants barged past the waiting writer",
                num(b.writer_wait_ms.p99),
                num(b.writer_wait_ms.max),
                num(b.longest_read_hold_ms),
                b.writer_starved,
                b.writer_turns,
                b.barged
            ),
            Some(starved || b.barged > 0),
        ));
    }
}

fn semaphore(r: &Results, out: &mut Vec<TargetResult>) {
    let Some(m) = r.semaphore.iter().find(|x| x.imp == Impl::Module) else {
        return;
    };
    let safe = m.max_holders <= m.permits;
    out.push(t(
        9,
        format!(
            "semaphore, {} clients on {} permits: zero wasted requests (module)",
            m.clients, m.permits
        ),
        format!(
            "{} wasted, {} timed-out waits in {} grants ({:.2} requests per grant); at most {} of {} permits held at once",
            m.wasted, m.timeouts, m.grants, m.requests_per_grant, m.max_holders, m.permits
        ),
        Some(safe && m.grants > 0 && m.wasted == 0 && m.timeouts == 0),
    ));
    let b = r.semaphore.iter().find(|x| x.imp == Impl::Redisson);
    let base = b
        .map(|b| {
            format!(
                "; Redisson-style: {:.1}%, at most {}",
                b.out_of_order_pct, b.max_overtaken
            )
        })
        .unwrap_or_default();
    let check = |imp| r.semaphore_fifo.iter().find(|f| f.imp == imp);
    if let Some(f) = check(Impl::Module) {
        let base_check = check(Impl::Redisson)
            .map(|b| format!("; Redisson-style: {} inversions", b.inversions))
            .unwrap_or_default();
        out.push(t(
            9,
            "semaphore: FIFO order (module)".into(),
            format!(
                "FIFO check: {} waiters granted in order {:?} ({} inversions{base_check}); contended run, judged client-side (±1 ms): {:.1}% of grants out of arrival order, at most {} passed one wait{base}",
                f.waiters, f.order, f.inversions, m.out_of_order_pct, m.max_overtaken
            ),
            Some(safe && f.in_order),
        ));
    }
    if let Some(b) = b {
        let ratio = m.wait_ms.p99 / b.wait_ms.p99;
        out.push(t(
            9,
            "semaphore: wait p99 ≤ 1/5 × Redisson-style".into(),
            format!(
                "{} vs {} ms = 1/{:.1} (max {} vs {} ms)",
                num(m.wait_ms.p99),
                num(b.wait_ms.p99),
                1.0 / ratio,
                num(m.wait_ms.max),
                num(b.wait_ms.max)
            ),
            Some(safe && ratio <= 0.2),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Mode, Plan};
    use crate::report::results::Meta;
    use crate::scenarios::cpu::CpuRow;
    use crate::scenarios::handoff::FifoRow;
    use crate::scenarios::rwlock::RwRow;
    use crate::scenarios::semaphore::SemRow;
    use crate::stats::Summary;

    fn ms(p99: f64) -> Summary {
        Summary {
            count: 100,
            p50: p99 / 2.0,
            p99,
            max: p99 * 1.5,
            min: 0.1,
        }
    }

    fn rw(imp: Impl, writer_p99: f64, starved: u64, barged: u64) -> RwRow {
        RwRow {
            imp,
            readers: 4,
            read_hold_ms: (1, 5),
            writer_every_ms: 10,
            write_hold_ms: 1,
            seconds: 1.0,
            reader_grants: 500,
            reader_grants_per_sec: 500.0,
            reader_wait_ms: ms(5.0),
            longest_read_hold_ms: 5.5,
            writer_turns: 100,
            writer_grants: 100,
            writer_wait_ms: ms(writer_p99),
            writer_handoff_ms: ms(0.3),
            writer_starved: starved,
            barged,
            wasted: 0,
            pubsub_requests: 0,
            messages: 0,
            wasted_per_grant: 0.0,
            requests_per_grant: 2.0,
            violations: 0,
            timeouts: 0,
        }
    }

    fn sem(imp: Impl, p99: f64, wasted: u64, overtakes: u64) -> SemRow {
        SemRow {
            imp,
            clients: 16,
            permits: 4,
            hold_ms: 1,
            seconds: 1.0,
            grants: 1000,
            grants_per_sec: 1000.0,
            wait_ms: ms(p99),
            wasted,
            pubsub_requests: 0,
            messages: 0,
            wasted_per_grant: wasted as f64 / 1000.0,
            messages_per_grant: 0.0,
            requests_per_grant: 2.0,
            overtakes,
            out_of_order_pct: overtakes as f64 / 10.0,
            max_overtaken: overtakes.min(1),
            max_holders: 4,
            timeouts: 0,
        }
    }

    fn fifo(imp: Impl, order: Vec<usize>) -> FifoRow {
        let inversions = order
            .iter()
            .enumerate()
            .map(|(a, x)| order.iter().skip(a + 1).filter(|y| *y < x).count())
            .sum();
        FifoRow {
            imp,
            waiters: order.len(),
            in_order: inversions == 0,
            order,
            inversions,
        }
    }

    fn verdicts(rw_rows: Vec<RwRow>, sem_rows: Vec<SemRow>) -> Vec<(u8, Option<bool>)> {
        let mut r = Results::new(Meta::default(), Plan::new(Mode::Quick, None));
        // The module's FIFO check in order when its contended run had no
        // grant out of order, reversed otherwise.
        let ordered = sem_rows
            .iter()
            .find(|s| s.imp == Impl::Module)
            .is_some_and(|s| s.overtakes == 0);
        let order = if ordered {
            vec![0, 1, 2]
        } else {
            vec![1, 0, 2]
        };
        r.semaphore_fifo = vec![
            fifo(Impl::Module, order),
            fifo(Impl::Redisson, vec![2, 0, 1]),
        ];
        r.rwlock = rw_rows;
        r.semaphore = sem_rows;
        evaluate(&r).iter().map(|t| (t.scenario, t.met)).collect()
    }

    fn cpu(imp: Impl, request_ids: bool, op: &'static str, rounds: &[f64]) -> CpuRow {
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

    /// The verdict and the text of the request-id target, if there is one.
    fn id_target(rows: Vec<CpuRow>) -> Option<(Option<bool>, String)> {
        let mut r = Results::new(Meta::default(), Plan::new(Mode::Quick, None));
        r.cpu = rows;
        evaluate(&r)
            .into_iter()
            .find(|t| t.target.starts_with("ID request-id"))
            .map(|t| (t.met, t.measured))
    }

    #[test]
    fn the_request_id_verdict_follows_the_per_round_ratios() {
        let rows = |acquire_with: &[f64], release_with: &[f64]| {
            vec![
                cpu(Impl::Module, false, "acquire", &[2.0, 3.0, 2.0]),
                cpu(Impl::Module, true, "acquire", acquire_with),
                cpu(Impl::Module, false, "release", &[1.0, 1.0, 1.5]),
                cpu(Impl::Module, true, "release", release_with),
            ]
        };
        // Per-round ratios 1.05, 1.0, 1.10 and 1.08, 1.09, 1.0: met.
        let (met, text) = id_target(rows(&[2.1, 3.0, 2.2], &[1.08, 1.09, 1.5])).unwrap();
        assert_eq!(met, Some(true), "{text}");
        assert!(text.contains("LOCK.ACQUIRE 1.050×") && text.contains("LOCK.RELEASE 1.080×"));
        // The medians alone (2.2 vs 2.0) would pass; round by round acquire
        // is 1.15, 1.0, 1.15: missed.
        let (met, text) = id_target(rows(&[2.3, 3.0, 2.3], &[1.0, 1.0, 1.5])).unwrap();
        assert_eq!(met, Some(false), "{text}");
        // Release alone over the bound misses it too.
        let (met, _) = id_target(rows(&[2.0, 3.0, 2.0], &[1.2, 1.2, 1.5])).unwrap();
        assert_eq!(met, Some(false));
        // Without the variant (or without the module) there is no verdict.
        assert!(id_target(rows(&[], &[])).is_none());
        assert!(id_target(vec![cpu(Impl::Module, false, "acquire", &[2.0])]).is_none());
    }

    #[test]
    fn the_request_id_rows_do_not_replace_the_module_against_set() {
        let mut r = Results::new(Meta::default(), Plan::new(Mode::Quick, None));
        r.cpu = vec![
            cpu(Impl::Module, true, "acquire", &[9.0]),
            cpu(Impl::Module, false, "acquire", &[2.0]),
            cpu(Impl::SetNx, false, "acquire", &[2.0]),
        ];
        let set = evaluate(&r)
            .into_iter()
            .find(|t| t.target.starts_with("CPU: LOCK.ACQUIRE"))
            .unwrap();
        assert_eq!(set.met, Some(true), "{}", set.measured);
    }

    #[test]
    fn read_write_verdicts_follow_the_figures() {
        // Bound = longest read hold 5.5 ms + 1 ms.
        let ok = vec![
            rw(Impl::Module, 6.4, 0, 0),
            rw(Impl::Redisson, 500.0, 1, 300),
        ];
        assert_eq!(verdicts(ok, vec![]), [(8, Some(true)), (8, Some(true))]);
        let late = vec![rw(Impl::Module, 6.6, 0, 0), rw(Impl::Redisson, 3.0, 0, 0)];
        assert_eq!(verdicts(late, vec![]), [(8, Some(false)), (8, Some(false))]);
        let mut unsafe_lock = rw(Impl::Module, 2.0, 0, 0);
        unsafe_lock.violations = 1;
        assert_eq!(verdicts(vec![unsafe_lock], vec![]), [(8, Some(false))]);
    }

    #[test]
    fn semaphore_verdicts_follow_the_figures() {
        let ok = vec![
            sem(Impl::Module, 4.0, 0, 0),
            sem(Impl::Redisson, 20.0, 9000, 900),
        ];
        let all_met = [(9, Some(true)), (9, Some(true)), (9, Some(true))];
        assert_eq!(verdicts(vec![], ok), all_met);
        let bad = vec![
            sem(Impl::Module, 4.1, 3, 2),
            sem(Impl::Redisson, 20.0, 9000, 900),
        ];
        let all_missed = [(9, Some(false)), (9, Some(false)), (9, Some(false))];
        assert_eq!(verdicts(vec![], bad), all_missed);
        // Without a baseline there is no ratio to judge.
        assert_eq!(
            verdicts(vec![], vec![sem(Impl::Module, 4.0, 0, 0)]).len(),
            2
        );
        // The FIFO verdict is the check's, not the contended run's.
        let mut r = Results::new(Meta::default(), Plan::new(Mode::Quick, None));
        r.semaphore = vec![sem(Impl::Module, 4.0, 0, 5)];
        r.semaphore_fifo = vec![fifo(Impl::Module, vec![0, 1, 2])];
        let fifo_verdict = evaluate(&r)
            .into_iter()
            .find(|t| t.target.contains("FIFO"))
            .and_then(|t| t.met);
        assert_eq!(fifo_verdict, Some(true));
    }
}
