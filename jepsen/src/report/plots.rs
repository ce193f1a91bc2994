//! The run's SVG plots, drawn with plotters into strings: latency of every
//! client op, and throughput per second, both with the fault windows shaded.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{Faults, NANOS_PER_MILLI, NANOS_PER_SECOND, latency_ns};
use crate::history::{OpType, Pair};

const SIZE: (u32, u32) = (1000, 380);
/// More points than this make the page slow; ok ops are thinned to fit.
const MAX_POINTS: usize = 20_000;
/// Fault labels longer than this are cut; the fault table has them whole.
const LABEL_CHARS: usize = 60;
const OUTCOMES: [(OpType, RGBColor, &str); 3] = [
    (OpType::Ok, RGBColor(0x1f, 0x77, 0xd4), "ok"),
    (OpType::Fail, RGBColor(0xd6, 0x33, 0x6c), "fail"),
    (OpType::Info, RGBColor(0xf0, 0x8c, 0x00), "info"),
];

fn fault_colour(kind: &str) -> RGBColor {
    match kind {
        "partition" => RGBColor(0x80, 0x40, 0xc0),
        "kill" => RGBColor(0xd0, 0x20, 0x20),
        "pause" => RGBColor(0xe0, 0xa0, 0x00),
        "loss" => RGBColor(0x00, 0x90, 0x90),
        "member" => RGBColor(0x8b, 0x5a, 0x2b),
        "clock" => RGBColor(0x70, 0x80, 0x00),
        "corrupt" => RGBColor(0xe0, 0x40, 0xa0),
        "compact" => RGBColor(0x20, 0x30, 0x90),
        "defrag" => RGBColor(0x10, 0x70, 0x30),
        _ => RGBColor(0x60, 0x60, 0x60),
    }
}

/// Plotters names the SVG namespace; inline SVG in HTML needs no namespace,
/// and the page then holds no address at all.
fn inline(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// Shades each fault window with its label at the top, and draws each admin
/// action as a vertical line.
fn shade<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    faults: &Faults,
    (y_low, y_high): (f64, f64),
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let seconds = |ns: u64| ns as f64 / NANOS_PER_SECOND;
    chart.draw_series(faults.windows.iter().map(|w| {
        let colour = fault_colour(&w.kind);
        Rectangle::new(
            [(seconds(w.start), y_low), (seconds(w.end), y_high)],
            colour.mix(0.15).filled(),
        )
    }))?;
    // Labels are staggered so that neighbouring windows' labels stay apart.
    chart.draw_series(faults.windows.iter().enumerate().map(|(i, w)| {
        let label = match w.label.char_indices().nth(LABEL_CHARS) {
            Some((cut, _)) => format!("{}…", &w.label[..cut]),
            None => w.label.clone(),
        };
        let style = ("sans-serif", 11).into_font().color(&fault_colour(&w.kind));
        EmptyElement::at((seconds(w.start), y_high))
            + Text::new(label, (3, 3 + 12 * (i % 4) as i32), style)
    }))?;
    for action in &faults.actions {
        let x = seconds(action.at);
        let colour = fault_colour(&action.kind);
        chart.draw_series(LineSeries::new([(x, y_low), (x, y_high)], colour))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y_low))
                + Text::new(
                    action.kind.clone(),
                    (2, -14),
                    ("sans-serif", 10).into_font().color(&colour),
                ),
        ))?;
    }
    Ok(())
}

/// Latency (log scale, ms) against invocation time (s), a point per
/// completed client op, coloured by outcome.
pub(super) fn latency_svg(pairs: &[Pair], faults: &Faults, span_s: f64) -> anyhow::Result<String> {
    let points: Vec<(f64, f64, OpType)> = pairs
        .iter()
        .filter_map(|pair| {
            let latency = latency_ns(pair)?;
            Some((
                pair.invoke.time as f64 / NANOS_PER_SECOND,
                (latency as f64 / NANOS_PER_MILLI).max(0.001),
                pair.outcome(),
            ))
        })
        .collect();
    let ok_count = points.iter().filter(|p| p.2 == OpType::Ok).count();
    let ok_stride = ok_count.div_ceil(MAX_POINTS).max(1);
    let (low, high) = points.iter().fold((f64::MAX, f64::MIN), |(low, high), p| {
        (low.min(p.1), high.max(p.1))
    });
    let (low, high) = if points.is_empty() {
        (0.1, 1000.0)
    } else {
        (low / 1.5, high * 1.5)
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let caption = if ok_stride > 1 {
            format!("latency per op (every {ok_stride}th ok op)")
        } else {
            "latency per op".to_string()
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span_s.max(1.0), (low..high).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("latency (ms)")
            .draw()?;
        shade(&mut chart, faults, (low, high))?;
        for (outcome, colour, name) in OUTCOMES {
            let stride = if outcome == OpType::Ok { ok_stride } else { 1 };
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.2 == outcome)
                        .step_by(stride)
                        .map(|p| Circle::new((p.0, p.1), 2, colour.filled())),
                )?
                .label(name)
                .legend(move |(x, y)| Circle::new((x, y), 3, colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(inline(svg))
}

/// Completions per second by outcome; ops never completed are left out.
pub(super) fn throughput_svg(
    pairs: &[Pair],
    faults: &Faults,
    span_s: f64,
) -> anyhow::Result<String> {
    let seconds = (span_s.ceil() as usize).max(1);
    let mut per_second = vec![[0u32; 3]; seconds];
    for pair in pairs.iter().filter(|p| latency_ns(p).is_some()) {
        let second = ((pair.complete.time as f64 / NANOS_PER_SECOND) as usize).min(seconds - 1);
        if let Some(slot) = OUTCOMES.iter().position(|o| o.0 == pair.outcome()) {
            per_second[second][slot] += 1;
        }
    }
    let high = per_second
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("completions per second", ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span_s.max(1.0), 0.0..high)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("ops/s")
            .draw()?;
        shade(&mut chart, faults, (0.0, high))?;
        for (slot, (_, colour, name)) in OUTCOMES.into_iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    per_second
                        .iter()
                        .enumerate()
                        .map(|(second, counts)| (second as f64 + 0.5, counts[slot] as f64)),
                    colour.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 15, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(inline(svg))
}
