//! The Markdown report: a header naming the machine, the targets with
//! verdicts, then one table per scenario.

use std::fmt::Write as _;

use crate::locks::{rw_label, sem_label, Impl};
use crate::plan::Mode;
use crate::report::format::{num, short};
use crate::report::results::Results;
use crate::report::targets::round_ratios;
use crate::scenarios::cpu::{id_ratios, row as cpu_row, variant_label};
use crate::stats::range;

/// A table's header row and rule.
fn head<S: AsRef<str>>(s: &mut String, columns: &[S]) {
    for c in columns {
        let _ = write!(s, "| {} ", c.as_ref());
    }
    s.push_str("|\n");
    s.push_str(&"|---".repeat(columns.len()));
    s.push_str("|\n");
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

/// Renders the report; `chart` is the chart's path relative to where the
/// Markdown will live.
pub fn render(r: &Results, chart: &str) -> String {
    let mut s = String::new();
    header(&mut s, r, chart);
    targets(&mut s, r);
    throughput(&mut s, r);
    cpu(&mut s, r);
    handoff(&mut s, r);
    expiry(&mut s, r);
    burst(&mut s, r);
    scale(&mut s, r);
    watchdog(&mut s, r);
    rwlock(&mut s, r);
    semaphore(&mut s, r);
    s
}

fn header(s: &mut String, r: &Results, chart: &str) {
    let m = &r.meta;
    let mode = match m.mode {
        Some(Mode::Quick) => "quick",
        _ => "full",
    };
    let placement = if m.pinned {
        "redis-server pinned to the first CPU, the load generator (one thread) to the last"
    } else {
        "not pinned"
    };
    let _ = writeln!(
        s,
        "Latest run: {}, `--{mode}`, {} cores ({}), Redis {}, {placement}; load average {} at start and {} at the end; {:.0} s in all.\n",
        m.date_utc,
        m.cores,
        m.cpu_model,
        m.redis_version,
        m.load_avg_start,
        m.load_avg_end,
        m.elapsed_s
    );
    if !r.throughput.is_empty() || !r.handoff.is_empty() {
        let _ = writeln!(
            s,
            "![Throughput and hand-off latency, fencelock vs baselines]({chart})\n"
        );
    }
}

fn targets(s: &mut String, r: &Results) {
    if r.targets.is_empty() {
        return;
    }
    s.push_str("#### Targets\n\n");
    head(s, &["#", "target", "measured", "verdict"]);
    for t in &r.targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "reported",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {verdict} |",
            t.scenario, t.target, t.measured
        );
    }
    s.push('\n');
}

fn impls_in<T>(rows: &[T], imp: impl Fn(&T) -> Impl) -> Vec<Impl> {
    Impl::ALL
        .into_iter()
        .filter(|i| rows.iter().any(|r| imp(r) == *i))
        .collect()
}

fn throughput(s: &mut String, r: &Results) {
    if r.throughput.is_empty() {
        return;
    }
    let impls = impls_in(&r.throughput, |x| x.imp);
    let conns = r.throughput.first().map(|x| x.connections).unwrap_or(0);
    let _ = writeln!(
        s,
        "#### 1. Uncontended acquire+release cycles per second ({conns} connections, distinct keys; median of {} interleaved runs of {} s, range in brackets; ratios are medians of per-run ratios)\n",
        r.plan.tp_rounds, r.plan.tp_seconds
    );
    let mut columns = vec!["pipeline depth"];
    columns.extend(impls.iter().map(|i| i.label()));
    columns.extend(["fencelock ÷ SET NX", "fencelock ÷ Redisson"]);
    head(s, &columns);
    for &d in &r.plan.tp_depths {
        let get = |imp| {
            r.throughput
                .iter()
                .find(|x| x.imp == imp && x.depth == d)
                .map(|x| x.cycles_per_sec)
        };
        let mut line = format!("| {d} |");
        for &i in &impls {
            let cpu = r
                .throughput
                .iter()
                .find(|x| x.imp == i && x.depth == d)
                .map(|x| {
                    let (lo, hi) = range(&x.rounds);
                    format!(
                        " ({}–{}; server CPU {:.0}%)",
                        short(lo),
                        short(hi),
                        x.server_cpu_pct
                    )
                })
                .unwrap_or_default();
            let _ = write!(line, " {}{cpu} |", opt(get(i)));
        }
        let ratio = |b| match round_ratios(r, b, d) {
            Some((m, lo, hi)) => format!("{m:.2}× ({lo:.2}–{hi:.2})"),
            None => "–".into(),
        };
        let _ = writeln!(
            line,
            " {} | {} |",
            ratio(Impl::SetNx),
            ratio(Impl::Redisson)
        );
        s.push_str(&line);
    }
    s.push('\n');
}

fn cpu(s: &mut String, r: &Results) {
    if r.cpu.is_empty() {
        return;
    }
    // Report order: each implementation, the module's request-id variant
    // right after the module.
    let mut columns: Vec<(Impl, bool)> = Vec::new();
    for i in impls_in(&r.cpu, |x| x.imp) {
        for ids in [false, true] {
            if r.cpu.iter().any(|x| x.imp == i && x.request_ids == ids) {
                columns.push((i, ids));
            }
        }
    }
    let with_ids =
        columns.contains(&(Impl::Module, true)) && columns.contains(&(Impl::Module, false));
    let _ = writeln!(
        s,
        "#### 2. Server CPU per command (`INFO commandstats` usec ÷ calls, µs; {} keys per phase, median of {}{})\n",
        num(r.plan.cpu_keys as f64),
        r.plan.cpu_rounds,
        if with_ids {
            "; + ID: acquire and release with `ID request-id`, a fresh 36-byte id each (renew has none: it renews a lock taken with one), back to back with the module without; the ratio is the median of per-round ratios, range in brackets"
        } else {
            ""
        }
    );
    let mut head_row = vec!["operation".to_string()];
    head_row.extend(columns.iter().map(|&(i, ids)| variant_label(i, ids)));
    if with_ids {
        head_row.push("+ ID ÷ without".into());
    }
    head(s, &head_row);
    for op in ["acquire", "release", "renew"] {
        let mut line = format!("| {op} |");
        for &(i, ids) in &columns {
            match cpu_row(&r.cpu, i, ids, op) {
                Some(x) => {
                    let _ = write!(line, " {:.3} (`{}`) |", x.usec_per_call, x.command);
                }
                None => line.push_str(" – |"),
            }
        }
        if with_ids {
            match id_ratios(&r.cpu, op) {
                Some((m, lo, hi)) => {
                    let _ = write!(line, " {m:.3}× ({lo:.3}–{hi:.3}) |");
                }
                None => line.push_str(" – |"),
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');
}

fn handoff(s: &mut String, r: &Results) {
    if !r.handoff.is_empty() {
        let _ = writeln!(
            s,
            "#### 3. Contended hand-off on one key ({} s per run; latency = release sent → next holder answered)\n",
            r.plan.ho_seconds
        );
        head(
            s,
            &[
                "clients",
                "hold ms",
                "implementation",
                "hand-offs/s",
                "p50 µs",
                "p99 µs",
                "max µs",
                "p99 to another client µs",
                "back to releaser",
                "wasted per acquisition",
                "overtakes",
                "longest wait ms",
            ],
        );
        for x in &r.handoff {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% | {} | {} | {} |",
                x.clients,
                x.hold_ms,
                x.imp.label(),
                num(x.handoffs_per_sec),
                num(x.latency_us.p50),
                num(x.latency_us.p99),
                num(x.latency_us.max),
                if x.latency_to_other_us.count == 0 {
                    "–".to_string()
                } else {
                    num(x.latency_to_other_us.p99)
                },
                x.self_grants_pct,
                num(x.wasted_per_acquisition),
                x.overtakes,
                num(x.max_wait_ms)
            );
        }
        s.push('\n');
    }
    if !r.fifo.is_empty() {
        let _ = writeln!(
            s,
            "FIFO check ({} waiters start one by one, 20 ms apart, behind a holder):\n",
            r.plan.fifo_waiters
        );
        head(s, &["implementation", "grant order", "inversions", "FIFO"]);
        for f in &r.fifo {
            let order: Vec<String> = f.order.iter().map(usize::to_string).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                f.imp.label(),
                order.join(" "),
                f.inversions,
                if f.in_order { "yes" } else { "no" }
            );
        }
        s.push('\n');
    }
}

fn expiry(s: &mut String, r: &Results) {
    if r.expiry.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### 4. Lease-expiry lateness (removal seen − deadline; deadlines spread over {} s, none renewed)\n",
        r.plan.exp_spread_ms as f64 / 1000.0
    );
    head(
        s,
        &[
            "leases",
            "implementation",
            "p50 ms",
            "p99 ms",
            "max ms",
            "removed",
            "not removed",
            "load time s",
        ],
    );
    for x in &r.expiry {
        let name = match x.imp {
            Impl::Module => "fencelock",
            _ => "plain PX keys",
        };
        let _ = writeln!(
            s,
            "| {} | {name} | {} | {} | {} | {} | {} | {:.1} |",
            num(x.leases as f64),
            num(x.lateness_ms.p50),
            num(x.lateness_ms.p99),
            num(x.lateness_ms.max),
            num(x.removed as f64),
            x.missing + x.early,
            x.load_ms / 1000.0
        );
    }
    s.push('\n');
}

fn burst(s: &mut String, r: &Results) {
    if r.burst.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### 4b. Other clients during a burst of {} leases ending at the same moment (`DBSIZE` probes back to back from the deadline until no key is left)\n",
        num(r.plan.burst_leases as f64)
    );
    head(
        s,
        &[
            "implementation",
            "probe p50 ms",
            "probe p99 ms",
            "probe max ms",
            "probes",
            "drained after ms",
            "left",
        ],
    );
    for x in &r.burst {
        let name = match x.imp {
            Impl::Module => "fencelock",
            _ => "plain PX keys",
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            num(x.probe_ms.p50),
            num(x.probe_ms.p99),
            num(x.probe_ms.max),
            num(x.probe_ms.count as f64),
            num(x.drain_ms),
            x.left
        );
    }
    s.push('\n');
}

fn scale(s: &mut String, r: &Results) {
    if r.scale.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### 5–6. Memory per lock, acquire latency vs live locks, RDB (16-byte keys, 36-byte owners)\n"
    );
    head(
        s,
        &[
            "implementation",
            "live locks",
            "bytes per lock",
            "acquire p50 µs",
            "p99 µs",
            "server µs/call",
            "SAVE ms",
            "load ms",
            "RDB MB",
        ],
    );
    for x in &r.scale {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {} | {:.2} | {} | {} | {} |",
            x.imp.label(),
            num(x.locks as f64),
            x.bytes_per_lock,
            num(x.acquire_latency_us.p50),
            num(x.acquire_latency_us.p99),
            x.acquire_usec_per_call,
            opt(x.save_ms),
            opt(x.load_ms),
            opt(x.rdb_bytes.map(|b| b as f64 / 1_048_576.0))
        );
    }
    s.push('\n');
}

fn watchdog(s: &mut String, r: &Results) {
    if r.watchdog.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### 7. Watchdog load (held locks renewed every ttl/3, {} s)\n",
        r.plan.wd_seconds
    );
    head(
        s,
        &[
            "implementation",
            "locks",
            "ttl ms",
            "renewals/s (target)",
            "server CPU %",
            "idle CPU %",
            "µs/call",
            "CPU µs per renewal",
        ],
    );
    for x in &r.watchdog {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({}) | {:.1} | {:.1} | {:.2} | {:.2} |",
            x.imp.label(),
            num(x.locks as f64),
            x.ttl_ms,
            num(x.renewals_per_sec),
            num(x.target_per_sec),
            x.server_cpu_pct,
            x.idle_cpu_pct,
            x.usec_per_call,
            x.cpu_us_per_renewal
        );
    }
    s.push('\n');
}

fn rwlock(s: &mut String, r: &Results) {
    let Some(first) = r.rwlock.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "#### 8. Read/write lock: {} readers holding continuously (each hold {}–{} ms), a writer every {} ms holding {} ms ({} s; wait = request sent → grant reply)\n",
        first.readers,
        first.read_hold_ms.0,
        first.read_hold_ms.1,
        first.writer_every_ms,
        first.write_hold_ms,
        first.seconds
    );
    head(
        s,
        &[
            "implementation",
            "writer turns (starved)",
            "writer wait p50 ms",
            "p99 ms",
            "max ms",
            "hand-off from the last reader p50 / p99 ms",
            "longest read hold ms",
            "reader grants/s",
            "reader wait p99 ms",
            "barged past the writer",
            "wasted per grant",
            "pub/sub requests per grant",
            "messages per grant",
            "requests per grant",
            "violations",
        ],
    );
    for x in &r.rwlock {
        let grants = (x.reader_grants + x.writer_grants).max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} ({}) | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rw_label(x.imp),
            x.writer_turns,
            x.writer_starved,
            num(x.writer_wait_ms.p50),
            num(x.writer_wait_ms.p99),
            num(x.writer_wait_ms.max),
            num(x.writer_handoff_ms.p50),
            num(x.writer_handoff_ms.p99),
            num(x.longest_read_hold_ms),
            num(x.reader_grants_per_sec),
            num(x.reader_wait_ms.p99),
            x.barged,
            num(x.wasted_per_grant),
            num(x.pubsub_requests as f64 / grants),
            num(x.messages as f64 / grants),
            num(x.requests_per_grant),
            x.violations
        );
    }
    s.push('\n');
}

fn semaphore(s: &mut String, r: &Results) {
    let Some(first) = r.semaphore.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "#### 9. Semaphore: {} clients on {} permits, each holding {} ms ({} s; wait = request sent → grant reply)\n",
        first.clients, first.permits, first.hold_ms, first.seconds
    );
    head(
        s,
        &[
            "implementation",
            "grants/s",
            "wait p50 ms",
            "p99 ms",
            "max ms",
            "wasted per grant",
            "pub/sub requests per grant",
            "messages per grant",
            "requests per grant",
            "out of arrival order",
            "most grants past one wait",
            "most permits held at once",
        ],
    );
    for x in &r.semaphore {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}% | {} | {} |",
            sem_label(x.imp),
            num(x.grants_per_sec),
            num(x.wait_ms.p50),
            num(x.wait_ms.p99),
            num(x.wait_ms.max),
            num(x.wasted_per_grant),
            num(x.pubsub_requests as f64 / x.grants.max(1) as f64),
            num(x.messages_per_grant),
            num(x.requests_per_grant),
            x.out_of_order_pct,
            x.max_overtaken,
            x.max_holders
        );
    }
    s.push('\n');
    if !r.semaphore_fifo.is_empty() {
        let _ = writeln!(
            s,
            "Out of arrival order: granted to a client that began waiting > 1 ms after a wait it passed, > 1 ms before that wait ended (judged client-side: on a loaded machine arrival is blurred by about that much). FIFO check ({} permits taken, {} waiters start one by one, 20 ms apart, one permit comes free, each waiter releases when granted):\n",
            r.plan.sem_permits, r.plan.sem_fifo_waiters
        );
        head(s, &["implementation", "grant order", "inversions", "FIFO"]);
        for f in &r.semaphore_fifo {
            let order: Vec<String> = f.order.iter().map(usize::to_string).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                sem_label(f.imp),
                order.join(" "),
                f.inversions,
                if f.in_order { "yes" } else { "no" }
            );
        }
        s.push('\n');
    }
}
