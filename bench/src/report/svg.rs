//! The chart (plotters, SVG backend; no font library: text is laid out by
//! estimate and drawn by the viewer): uncontended throughput (linear scale)
//! and p99 hand-off latency (log scale), module vs baselines, grouped by
//! configuration.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::locks::Impl;
use crate::report::format::short;
use crate::report::results::Results;
use crate::stats::range;

const WIDTH: u32 = 960;
const PANEL_H: u32 = 340;
const HEADER_H: u32 = 50;
const FONT: &str = "sans-serif";

fn color(imp: Impl) -> RGBColor {
    match imp {
        Impl::Module => RGBColor(0x1f, 0x6f, 0xb4),
        Impl::SetNx => RGBColor(0xf2, 0x9b, 0x2a),
        Impl::Redisson => RGBColor(0xc8, 0x41, 0x3a),
    }
}

/// One group of bars: its label and one value per implementation.
struct Group {
    label: String,
    values: Vec<(Impl, Option<f64>)>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn<T> = Result<T, DrawingAreaErrorKind<std::io::Error>>;

/// Draws one panel of grouped bars.
fn panel(area: &Area, title: &str, unit: &str, groups: &[Group], log: bool) -> Drawn<()> {
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().filter_map(|(_, v)| *v))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let n = groups.len().max(1);
    let x = 0.0..n as f64;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 18).into_font().style(FontStyle::Bold))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60);
    if values.is_empty() {
        let chart = builder.build_cartesian_2d(x, 0.0..1.0)?;
        chart.plotting_area().draw(&Text::new(
            "not measured in this run",
            (0.05 * n as f64, 0.5),
            (FONT, 14),
        ))?;
        return Ok(());
    }
    let (min, max) = range(&values);
    if log {
        let lo = 10f64.powf(min.log10().floor());
        let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
        let chart = builder.build_cartesian_2d(x, (lo..hi).log_scale())?;
        bars(chart, unit, groups, lo)
    } else {
        let chart = builder.build_cartesian_2d(x, 0.0..max * 1.15)?;
        bars(chart, unit, groups, 0.0)
    }
}

/// The mesh, the bars with their values and the group labels under the
/// axis (group i spans x in [i, i + 1]).
fn bars<'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    unit: &str,
    groups: &[Group],
    floor: f64,
) -> Drawn<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .y_label_formatter(&|v| short(*v))
        .y_desc(unit)
        .label_style((FONT, 13))
        .draw()?;
    let under_axis = (FONT, 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    chart.draw_series(groups.iter().enumerate().map(|(gi, g)| {
        EmptyElement::at((gi as f64 + 0.5, floor))
            + Text::new(g.label.clone(), (0, 6), under_axis.clone())
    }))?;
    for imp in Impl::ALL {
        for (gi, g) in groups.iter().enumerate() {
            let k = g.values.len().max(1) as f64;
            let Some(bi) = g.values.iter().position(|(i, _)| *i == imp) else {
                continue;
            };
            let x0 = gi as f64 + 0.1 + 0.8 * bi as f64 / k;
            let x1 = x0 + 0.8 / k - 0.01;
            let (x0, x1) = (x0.min(x1), x1.max(x0));
            match g.values.get(bi).and_then(|(_, v)| *v) {
                Some(v) if v.is_finite() && v > 0.0 => {
                    chart.draw_series([Rectangle::new(
                        [(x0, floor), (x1, v)],
                        color(imp).filled(),
                    )])?;
                    chart.draw_series([Text::new(
                        short(v),
                        ((x0 + x1) / 2.0, v),
                        (FONT, 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )])?;
                }
                _ => {
                    chart.draw_series([Text::new(
                        "n/a",
                        ((x0 + x1) / 2.0, floor),
                        (FONT, 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )])?;
                }
            }
        }
    }
    Ok(())
}

impl Group {
    /// A group labelled `label` with `value(imp)` for each of `impls`.
    fn of(label: String, impls: &[Impl], value: impl Fn(Impl) -> Option<f64>) -> Group {
        let values = impls.iter().map(|&i| (i, value(i))).collect();
        Group { label, values }
    }
}

/// The groups of the throughput panel: one per pipeline depth.
fn throughput_groups(r: &Results, impls: &[Impl]) -> Vec<Group> {
    let rows = &r.throughput;
    r.plan
        .tp_depths
        .iter()
        .map(|&d| {
            Group::of(format!("pipeline depth {d}"), impls, |i| {
                let row = rows.iter().find(|x| x.imp == i && x.depth == d);
                row.map(|x| x.cycles_per_sec)
            })
        })
        .collect()
}

/// The groups of the hand-off panel: one per client count and hold time.
fn handoff_groups(r: &Results, impls: &[Impl]) -> Vec<Group> {
    let rows = &r.handoff;
    let mut groups = Vec::new();
    for &c in &r.plan.ho_clients {
        for &h in &r.plan.ho_hold_ms {
            groups.push(Group::of(format!("{c} clients, hold {h} ms"), impls, |i| {
                let row = rows
                    .iter()
                    .find(|x| x.imp == i && x.clients == c && x.hold_ms == h);
                row.map(|x| x.latency_us.p99)
            }));
        }
    }
    groups
}

fn draw(root: &Area, r: &Results) -> Drawn<()> {
    let impls: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(|i| {
            r.throughput.iter().any(|x| x.imp == *i) || r.handoff.iter().any(|x| x.imp == *i)
        })
        .collect();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER_H);
    let m = &r.meta;
    header.draw(&Text::new(
        format!(
            "fencelock benchmark — {} — {} cores — Redis {}",
            m.date_utc, m.cores, m.redis_version
        ),
        (90, 8),
        (FONT, 14),
    ))?;
    for (n, &imp) in impls.iter().enumerate() {
        let x = WIDTH as i32 - 20 - 170 * (impls.len() - n) as i32;
        header.draw(&Rectangle::new(
            [(x, 30), (x + 12, 42)],
            color(imp).filled(),
        ))?;
        header.draw(&Text::new(imp.label(), (x + 17, 30), (FONT, 14)))?;
    }
    let (top, bottom) = body.split_vertically(PANEL_H);
    panel(
        &top,
        "Uncontended acquire+release cycles per second (higher is better)",
        "cycles/s",
        &throughput_groups(r, &impls),
        false,
    )?;
    panel(
        &bottom,
        "Hand-off latency p99, release sent → next holder answered (lower is better, log scale)",
        "µs",
        &handoff_groups(r, &impls),
        true,
    )?;
    root.present()
}

/// The whole chart as SVG text.
pub fn render(r: &Results) -> String {
    let mut svg = String::new();
    let drawn = {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, HEADER_H + 2 * PANEL_H)).into_drawing_area();
        draw(&root, r)
    };
    match drawn {
        Ok(()) => svg,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"40\"><text x=\"10\" y=\"20\">chart failed: {}</text></svg>\n",
            e.to_string().replace('&', "&amp;").replace('<', "&lt;")
        ),
    }
}
