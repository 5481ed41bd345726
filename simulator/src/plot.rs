//! SVG charts of simulation results (plotters, SVG backend: no fonts or
//! native libraries needed).

use crate::report::Report;
use plotters::prelude::*;
use std::path::Path;

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write plot {path}: {reason}")]
pub struct PlotError {
    path: String,
    reason: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes the hop-count histogram of one run as a bar chart.
pub fn hop_histogram(path: &Path, r: &Report) -> Result<(), PlotError> {
    let total: u64 = r.hop_histogram.iter().sum();
    let max_hop = r.hop_histogram.len().max(1) as u32;
    let shares: Vec<(u32, f64)> = r
        .hop_histogram
        .iter()
        .enumerate()
        .map(|(h, c)| (h as u32, 100.0 * *c as f64 / total.max(1) as f64))
        .collect();
    let top = shares.iter().map(|s| s.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let title = format!(
        "{} mode, {} nodes, k={}, b={}: mean {:.2} hops, p99 {}",
        r.mode, r.nodes, r.k, r.bits, r.mean_hops, r.p99_hops
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0u32..max_hop).into_segmented(), 0f64..top)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("hops")
        .y_desc("% of routes")
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(path, e))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.6).filled())
                .margin(4)
                .data(shares.iter().map(|(h, s)| (*h, *s))),
        )
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// Writes mean and p99 hops against ring size, one pair of lines per
/// (k, b) configuration, with a logarithmic size axis.
pub fn sweep(path: &Path, reports: &[Report]) -> Result<(), PlotError> {
    let mut configs: Vec<(usize, u8)> = reports.iter().map(|r| (r.k, r.bits)).collect();
    configs.sort_unstable();
    configs.dedup();
    let min_n = reports.iter().map(|r| r.nodes).min().unwrap_or(1).max(1) as f64;
    let max_n = reports.iter().map(|r| r.nodes).max().unwrap_or(10).max(2) as f64;
    let max_hops = reports
        .iter()
        .map(|r| r.p99_hops as f64)
        .fold(1.0, f64::max)
        + 1.0;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mode = reports.first().map(|r| r.mode).unwrap_or("static");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("hops against ring size ({mode} mode)"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(50)
        .build_cartesian_2d((min_n * 0.8..max_n * 1.25).log_scale(), 0f64..max_hops)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc("hops")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(path, e))?;
    for (i, (k, b)) in configs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts: Vec<&Report> = reports
            .iter()
            .filter(|r| r.k == *k && r.bits == *b)
            .collect();
        pts.sort_by_key(|r| r.nodes);
        let mean: Vec<(f64, f64)> = pts.iter().map(|r| (r.nodes as f64, r.mean_hops)).collect();
        let p99: Vec<(f64, f64)> = pts
            .iter()
            .map(|r| (r.nodes as f64, r.p99_hops as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(mean.clone(), color.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(format!("k={k} b={b} mean"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(mean.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| err(path, e))?;
        let dashed = color.mix(0.7);
        chart
            .draw_series(DashedLineSeries::new(p99, 6, 4, dashed.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(format!("k={k} b={b} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], dashed.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::HopCounts;

    fn report(nodes: u64, bits: u8, mean: u32) -> Report {
        let mut h = HopCounts::default();
        for x in [mean - 1, mean, mean, mean + 1] {
            h.record(x);
        }
        Report::new("static", nodes, 4, 20, bits, 1).with_hops(&h)
    }

    #[test]
    fn writes_valid_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let hist = dir.path().join("h.svg");
        hop_histogram(&hist, &report(1000, 4, 2)).unwrap();
        let text = std::fs::read_to_string(&hist).unwrap();
        assert!(text.starts_with("<svg") && text.contains("</svg>"));
        assert!(text.contains("hops"));
        let sw = dir.path().join("s.svg");
        let rs = vec![
            report(1000, 1, 3),
            report(10000, 1, 4),
            report(1000, 4, 2),
            report(10000, 4, 2),
        ];
        sweep(&sw, &rs).unwrap();
        let text = std::fs::read_to_string(&sw).unwrap();
        assert!(text.contains("k=20 b=1 mean") && text.contains("k=20 b=4 p99"));
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let r = report(10, 1, 2);
        let e = hop_histogram(Path::new("/nonexistent-dir/x.svg"), &r).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.svg"));
    }
}
