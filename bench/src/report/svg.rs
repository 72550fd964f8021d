//! The chart, written by hand as SVG text (no plotting crate): uncontended
//! throughput (linear scale) and p99 hand-off latency (log scale), module
//! vs baselines, grouped by configuration.

use std::fmt::Write as _;

use crate::locks::Impl;
use crate::report::Results;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 250.0;

fn color(imp: Impl) -> &'static str {
    match imp {
        Impl::Module => "#1f6fb4",
        Impl::SetNx => "#f29b2a",
        Impl::Redisson => "#c8413a",
    }
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Compact value label: 950, 1.2k, 34k, 1.5M.
fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k) at or
/// above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// One group of bars: its label and one value per implementation.
struct Group {
    label: String,
    values: Vec<(Impl, Option<f64>)>,
}

/// Draws one panel of grouped bars with its top at `top`.
fn panel(svg: &mut String, top: f64, title: &str, unit: &str, groups: &[Group], log: bool) {
    let plot_top = top + 30.0;
    let plot_bottom = plot_top + PANEL_H;
    let plot_w = WIDTH - LEFT - RIGHT;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">{}</text>"#,
        top + 14.0,
        esc(title)
    );
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().filter_map(|(_, v)| *v))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if values.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}" class="label">not measured in this run</text>"#,
            plot_top + 20.0
        );
        return;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let (lo, hi) = if log {
        let lo = 10f64.powf(min.log10().floor());
        let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    } else {
        (0.0, nice_ceiling(max * 1.1))
    };
    let y_of = |v: f64| -> f64 {
        let f = if log {
            (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10())
        } else {
            v / hi
        };
        plot_bottom - f.clamp(0.0, 1.0) * PANEL_H
    };
    // Grid and axis labels.
    let ticks: Vec<f64> = if log {
        let mut t = Vec::new();
        let mut v = lo;
        while v <= hi * 1.0001 {
            t.push(v);
            v *= 10.0;
        }
        t
    } else {
        (0..=5).map(|i| hi * f64::from(i) / 5.0).collect()
    };
    for v in ticks {
        let y = y_of(v);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" class="tick" transform="rotate(-90 18 {:.1})" text-anchor="middle">{}</text>"#,
        (plot_top + plot_bottom) / 2.0,
        (plot_top + plot_bottom) / 2.0,
        esc(unit)
    );
    let gw = plot_w / groups.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64;
        let k = g.values.len().max(1) as f64;
        let bw = gw * 0.8 / k;
        for (bi, (imp, v)) in g.values.iter().enumerate() {
            let x = gx + gw * 0.1 + bw * bi as f64;
            match v {
                Some(v) if v.is_finite() && *v > 0.0 => {
                    let y = y_of(*v);
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" class="value" text-anchor="middle">{}</text>"#,
                        bw - 2.0,
                        plot_bottom - y,
                        color(*imp),
                        esc(imp.label()),
                        short(*v),
                        x + (bw - 2.0) / 2.0,
                        y - 3.0,
                        short(*v)
                    );
                }
                _ => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" class="value" text-anchor="middle">n/a</text>"#,
                        x + bw / 2.0,
                        plot_bottom - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text>"#,
            gx + gw / 2.0,
            plot_bottom + 16.0,
            esc(&g.label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{plot_bottom:.1}" x2="{:.1}" y2="{plot_bottom:.1}" class="axis"/>"#,
        WIDTH - RIGHT
    );
}

/// The whole chart.
pub fn render(r: &Results) -> String {
    let impls: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(|i| {
            r.throughput.iter().any(|x| x.imp == *i) || r.handoff.iter().any(|x| x.imp == *i)
        })
        .collect();
    let tp: Vec<Group> = r
        .plan
        .tp_depths
        .iter()
        .map(|&d| Group {
            label: format!("pipeline depth {d}"),
            values: impls
                .iter()
                .map(|&i| {
                    (
                        i,
                        r.throughput
                            .iter()
                            .find(|x| x.imp == i && x.depth == d)
                            .map(|x| x.cycles_per_sec),
                    )
                })
                .collect(),
        })
        .collect();
    let mut ho = Vec::new();
    for &c in &r.plan.ho_clients {
        for &h in &r.plan.ho_hold_ms {
            ho.push(Group {
                label: format!("{c} clients, hold {h} ms"),
                values: impls
                    .iter()
                    .map(|&i| {
                        let v = r
                            .handoff
                            .iter()
                            .find(|x| x.imp == i && x.clients == c && x.hold_ms == h)
                            .map(|x| x.latency_us.p99);
                        (i, v)
                    })
                    .collect(),
            });
        }
    }
    let height = 2.0 * (PANEL_H + 90.0) + 70.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">"#
    );
    svg.push_str(
        "<style>.title{font-size:15px;font-weight:bold}.label{font-size:12px}.tick{font-size:11px;fill:#444}\
.value{font-size:10px;fill:#222}.grid{stroke:#ddd;stroke-width:1}.axis{stroke:#333;stroke-width:1}</style>\n",
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let m = &r.meta;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" class="label">fencelock benchmark — {} — {} cores — Redis {}</text>"#,
        esc(&m.date_utc),
        m.cores,
        esc(&m.redis_version)
    );
    for (n, i) in impls.iter().enumerate() {
        let x = WIDTH - RIGHT - 170.0 * (impls.len() - n) as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="36" width="12" height="12" fill="{}"/><text x="{:.1}" y="46" class="label">{}</text>"#,
            color(*i),
            x + 17.0,
            esc(i.label())
        );
    }
    panel(
        &mut svg,
        60.0,
        "Uncontended acquire+release cycles per second (higher is better)",
        "cycles/s",
        &tp,
        false,
    );
    panel(
        &mut svg,
        60.0 + PANEL_H + 90.0,
        "Hand-off latency p99, release sent → next holder answered (lower is better, log scale)",
        "µs",
        &ho,
        true,
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.7), 0.8);
        assert_eq!(nice_ceiling(1.6), 2.0);
        assert_eq!(nice_ceiling(3.5), 4.0);
        assert_eq!(nice_ceiling(538_000.0), 600_000.0);
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(950.0), "950");
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(34_567.0), "35k");
        assert_eq!(short(1_500_000.0), "1.5M");
    }
}
