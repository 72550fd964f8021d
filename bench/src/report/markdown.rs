//! The Markdown report: a header naming the machine, the targets with
//! verdicts, then one table per scenario.

use std::fmt::Write as _;

use crate::locks::Impl;
use crate::report::Results;

/// A number for a table: thousands separated above 1000, fewer decimals
/// the larger it is.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", a);
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Thousands as `123k`.
fn short_k(v: f64) -> String {
    format!("{:.0}k", v / 1000.0)
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
    scale(&mut s, r);
    watchdog(&mut s, r);
    s
}

fn header(s: &mut String, r: &Results, chart: &str) {
    let m = &r.meta;
    let mode = match m.mode {
        Some(crate::cli::Mode::Quick) => "quick",
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
    let _ = writeln!(
        s,
        "#### Targets\n\n| # | target | measured | verdict |\n|---|---|---|---|"
    );
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
    let mut head = "| pipeline depth |".to_string();
    let mut rule = "|---|".to_string();
    for i in &impls {
        let _ = write!(head, " {} |", i.label());
        rule.push_str("---|");
    }
    head.push_str(" fencelock ÷ SET NX | fencelock ÷ Redisson |");
    rule.push_str("---|---|");
    let _ = writeln!(s, "{head}\n{rule}");
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
                    let lo = x.rounds.iter().copied().fold(f64::MAX, f64::min);
                    let hi = x.rounds.iter().copied().fold(f64::MIN, f64::max);
                    format!(
                        " ({}–{}; server CPU {:.0}%)",
                        short_k(lo),
                        short_k(hi),
                        x.server_cpu_pct
                    )
                })
                .unwrap_or_default();
            let _ = write!(line, " {}{cpu} |", opt(get(i)));
        }
        let ratio = |b| match crate::report::targets::round_ratios(r, b, d) {
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
    let impls = impls_in(&r.cpu, |x| x.imp);
    let _ = writeln!(
        s,
        "#### 2. Server CPU per command (`INFO commandstats` usec ÷ calls, µs; {} keys per phase, median of {})\n",
        num(r.plan.cpu_keys as f64),
        r.plan.cpu_rounds
    );
    let mut head = "| operation |".to_string();
    let mut rule = "|---|".to_string();
    for i in &impls {
        let _ = write!(head, " {} |", i.label());
        rule.push_str("---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for op in ["acquire", "release", "renew"] {
        let mut line = format!("| {op} |");
        for &i in &impls {
            match r.cpu.iter().find(|x| x.imp == i && x.op == op) {
                Some(x) => {
                    let _ = write!(line, " {:.3} (`{}`) |", x.usec_per_call, x.command);
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
        let _ = writeln!(
            s,
            "| clients | hold ms | implementation | hand-offs/s | p50 µs | p99 µs | max µs | p99 to another client µs | back to releaser | wasted per acquisition | overtakes | longest wait ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
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
            "FIFO check ({} waiters start one by one, 20 ms apart, behind a holder):\n\n| implementation | grant order | inversions | FIFO |\n|---|---|---|---|",
            r.plan.fifo_waiters
        );
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
    let _ = writeln!(
        s,
        "| leases | implementation | p50 ms | p99 ms | max ms | removed | not removed | load time s |\n|---|---|---|---|---|---|---|---|"
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

fn scale(s: &mut String, r: &Results) {
    if r.scale.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "#### 5–6. Memory per lock, acquire latency vs live locks, RDB (16-byte keys, 36-byte owners)\n"
    );
    let _ = writeln!(
        s,
        "| implementation | live locks | bytes per lock | acquire p50 µs | p99 µs | server µs/call | SAVE ms | load ms | RDB MB |\n|---|---|---|---|---|---|---|---|---|"
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
    let _ = writeln!(
        s,
        "| implementation | locks | ttl ms | renewals/s (target) | server CPU % | idle CPU % | µs/call | CPU µs per renewal |\n|---|---|---|---|---|---|---|---|"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1_234_567.4), "1,234,567");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(-2500.0), "-2,500");
        assert_eq!(num(f64::NAN), "–");
    }
}
