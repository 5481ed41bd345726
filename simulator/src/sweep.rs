//! Series of runs over ring sizes and (k, b) configurations, written as
//! JSON, CSV and a line plot.

use crate::report::Report;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The CSV columns, one row per run.
pub const CSV_HEADER: &str = "mode,nodes,k,bits,lookups,mean_hops,p50_hops,p95_hops,p99_hops,max_hops,success_rate,mean_table_size,elapsed_s";

/// Renders reports as CSV.
pub fn to_csv(reports: &[Report]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in reports {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.4},{},{},{},{},{:.6},{:.1},{:.3}",
            r.mode,
            r.nodes,
            r.k,
            r.bits,
            r.lookups,
            r.mean_hops,
            r.p50_hops,
            r.p95_hops,
            r.p99_hops,
            r.max_hops,
            r.success_rate,
            r.mean_table_size,
            r.elapsed_s
        );
    }
    s
}

/// Renders reports as an aligned text table.
pub fn to_table(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>9} {:>4} {:>3} {:>9} {:>5} {:>5} {:>5} {:>5} {:>9} {:>10} {:>8}",
        "nodes", "k", "b", "mean", "p50", "p95", "p99", "max", "success", "table", "secs"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:>9} {:>4} {:>3} {:>9.3} {:>5} {:>5} {:>5} {:>5} {:>9.5} {:>10.1} {:>8.2}",
            r.nodes,
            r.k,
            r.bits,
            r.mean_hops,
            r.p50_hops,
            r.p95_hops,
            r.p99_hops,
            r.max_hops,
            r.success_rate,
            r.mean_table_size,
            r.elapsed_s
        );
    }
    s
}

/// Writes `STEM.json`, `STEM.csv` and `STEM.svg`; returns the paths.
pub fn write_outputs(stem: &Path, reports: &[Report]) -> Result<Vec<PathBuf>, String> {
    let with = |ext: &str| {
        let mut p = stem.as_os_str().to_owned();
        p.push(".");
        p.push(ext);
        PathBuf::from(p)
    };
    let json = with("json");
    let csv = with("csv");
    let svg = with("svg");
    let body = serde_json::to_string_pretty(reports).map_err(|e| e.to_string())?;
    std::fs::write(&json, body).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    std::fs::write(&csv, to_csv(reports))
        .map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
    crate::plot::sweep(&svg, reports).map_err(|e| e.to_string())?;
    Ok(vec![json, csv, svg])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::HopCounts;

    #[test]
    fn csv_has_header_and_one_row_per_run() {
        let mut h = HopCounts::default();
        h.record(3);
        let rs = vec![
            Report::new("static", 1000, 1, 20, 1, 1).with_hops(&h),
            Report::new("static", 10000, 1, 20, 4, 1).with_hops(&h),
        ];
        let csv = to_csv(&rs);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[2].starts_with("static,10000,20,4,1,3.0000,3,3,3,3,"));
        let cols = CSV_HEADER.split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols));
    }

    #[test]
    fn writes_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = HopCounts::default();
        h.record(2);
        let rs = vec![Report::new("static", 100, 1, 20, 1, 1).with_hops(&h)];
        let out = write_outputs(&dir.path().join("series"), &rs).unwrap();
        assert_eq!(out.len(), 3);
        for p in out {
            assert!(p.exists(), "{}", p.display());
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("series.json")).unwrap())
                .unwrap();
        assert_eq!(json[0]["nodes"], 100);
    }
}
