//! `ballast-bench chart`: the Ballast / etcd ratios that `compare.sh`
//! computes, drawn as two bar charts side by side (throughput, p99 latency)
//! with the parity line at 1.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;

#[derive(Args, Debug)]
pub struct ChartArgs {
    /// Lines of `label<TAB>throughput ratio<TAB>p99 latency ratio`; a ratio
    /// that is not a number is left out.
    #[arg(long)]
    input: PathBuf,
    /// Where the SVG goes.
    #[arg(long)]
    output: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "Ballast / etcd 3.4, same machine, same run")]
    title: String,
}

struct Row {
    label: String,
    throughput: Option<f64>,
    p99: Option<f64>,
}

fn parse(text: &str) -> anyhow::Result<Vec<Row>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let label = fields.next().context("empty line")?.to_string();
            let mut ratio = || fields.next().and_then(|f| f.trim().parse::<f64>().ok());
            Ok(Row {
                label,
                throughput: ratio(),
                p99: ratio(),
            })
        })
        .collect()
}

/// One panel: a horizontal bar per row, with a line at parity.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    values: &[Option<f64>],
    color: RGBColor,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let max = values.iter().flatten().fold(1.0f64, |max, v| max.max(*v)) * 1.15;
    let rows = labels.len() as i32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(120)
        .build_cartesian_2d(0f64..max, (0..rows).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(labels.len())
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("Ballast / etcd")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .style(color.filled())
                .margin(4)
                .data(
                    values
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| v.map(|v| (i as i32, v))),
                ),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            [
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(rows)),
            ],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub fn draw(args: &ChartArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let rows = parse(&text)?;
    anyhow::ensure!(!rows.is_empty(), "{} has no rows", args.input.display());
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let height = 80 + 26 * rows.len() as u32;
    let root = SVGBackend::new(&args.output, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(&args.title, ("sans-serif", 20))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(500);
    let throughput: Vec<Option<f64>> = rows.iter().map(|r| r.throughput).collect();
    let p99: Vec<Option<f64>> = rows.iter().map(|r| r.p99).collect();
    panel(
        &left,
        "throughput (higher is better)",
        &labels,
        &throughput,
        BLUE,
    )?;
    panel(&right, "p99 latency (lower is better)", &labels, &p99, RED)?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_missing_ratios_out() {
        let rows = parse("put-1\t0.72\t0.77\nwatch-fanout-1000\t0.72\t-\n\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].label, "put-1");
        assert_eq!((rows[0].throughput, rows[0].p99), (Some(0.72), Some(0.77)));
        assert_eq!((rows[1].throughput, rows[1].p99), (Some(0.72), None));
    }

    #[test]
    fn draws_an_svg_with_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("ratios.tsv");
        let output = dir.path().join("chart.svg");
        std::fs::write(&input, "put-1\t0.72\t0.77\nrange-s-100\t2.74\t0.22\n").unwrap();
        draw(&ChartArgs {
            input,
            output: output.clone(),
            title: "t".into(),
        })
        .unwrap();
        let svg = std::fs::read_to_string(output).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("put-1") && svg.contains("range-s-100"));
    }
}
