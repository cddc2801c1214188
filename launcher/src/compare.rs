//! `metaloop compare RUN...`: runs side by side.
//!
//! A table of the config keys whose values differ between the runs (from each run's resolved
//! `config.toml`) and of their meta-test results with 95% confidence intervals (`report.json`;
//! "-" for a run without one yet), and one PNG overlaying their learning curves from
//! `metrics.jsonl`: the training meta-loss and, where logged, the validation loss after
//! adaptation. Null values (skipped iterations) and a torn last line are left out. Reads run
//! directories, writes the PNG; `main` prints what [`compare`] returns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::config::dotted;
use crate::errors::{bad, io_words};
use crate::plot::{Panel, Series};

/// What `compare` found: the table (text) and the plot written.
pub struct Comparison {
    pub table: String,
    pub plot: PathBuf,
}

struct Run {
    name: String,
    config: BTreeMap<String, String>,
    test: Option<Value>,
    meta_loss: Series,
    val_after: Series,
}

/// Compares the run directories `runs` and writes the overlay plot to `out`.
pub fn compare(runs: &[PathBuf], out: &Path) -> Result<Comparison> {
    if runs.len() < 2 {
        return Err(bad(format!(
            "compare: needs at least two run directories, got {}",
            runs.len()
        )));
    }
    let runs: Vec<Run> = runs.iter().map(|r| read_run(r)).collect::<Result<_>>()?;
    let table = table(&runs);
    let panels = panels(&runs);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| bad(format!("{}: {}", dir.display(), io_words(&e))))?;
    }
    crate::plot::draw(out, &panels)
        .map_err(|e| anyhow::anyhow!("{}: cannot draw the plot: {e:#}", out.display()))?;
    Ok(Comparison {
        table,
        plot: out.to_path_buf(),
    })
}

fn read_run(dir: &Path) -> Result<Run> {
    let config_path = dir.join(metaloop_engine::rundir::CONFIG);
    if !config_path.is_file() {
        return Err(bad(format!(
            "{}: not a run directory (no {})",
            dir.display(),
            metaloop_engine::rundir::CONFIG
        )));
    }
    let cfg = crate::config::load(&config_path, &[])?;
    let mut config = BTreeMap::new();
    flatten(&serde_json::to_value(&cfg)?, "", &mut config);
    let report_path = dir.join(metaloop_engine::rundir::REPORT);
    let test = match std::fs::read_to_string(&report_path) {
        Ok(text) => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| bad(format!("{}: {e}", report_path.display())))?;
            v.get("test").cloned()
        }
        Err(_) => None,
    };
    let metrics_path = dir.join(metaloop_engine::rundir::METRICS);
    let text = std::fs::read_to_string(&metrics_path)
        .map_err(|e| bad(format!("{}: {}", metrics_path.display(), io_words(&e))))?;
    let (mut meta_loss, mut val_after) = (Series::new(), Series::new());
    for line in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(x) = line.get("iteration").and_then(Value::as_f64) else {
            continue;
        };
        if let Some(y) = line.get("meta_loss").and_then(Value::as_f64) {
            meta_loss.push((x, y));
        }
        let val = line.pointer("/val/loss_after/mean").and_then(Value::as_f64);
        if let Some(y) = val {
            val_after.push((x, y));
        }
    }
    Ok(Run {
        name: dir.display().to_string(),
        config,
        test,
        meta_loss,
        val_after,
    })
}

/// Dotted keys and their values as TOML would write them.
fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                flatten(child, &dotted(prefix, k), out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// "0.565 ± 0.050" from `{mean, ci95}`.
fn mean_ci(v: Option<&Value>) -> String {
    let get = |k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_f64);
    match (get("mean"), get("ci95")) {
        (Some(m), Some(c)) => format!("{m:.4} ± {c:.4}"),
        _ => "-".into(),
    }
}

fn table(runs: &[Run]) -> String {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let first = runs[0].config.get(*k);
            runs.iter().any(|r| r.config.get(*k) != first)
        })
        .collect();
    let mut header = vec!["run".to_string()];
    header.extend(differing.iter().map(|k| k.to_string()));
    header.extend(["metric", "loss before", "loss after", "accuracy after"].map(String::from));
    let mut rows = vec![header];
    for r in runs {
        let mut row = vec![r.name.clone()];
        row.extend(
            differing
                .iter()
                .map(|k| r.config.get(*k).cloned().unwrap_or_else(|| "-".into())),
        );
        let test = r.test.as_ref();
        let metric = test.and_then(|t| t.get("metric")).and_then(Value::as_str);
        row.push(metric.unwrap_or("-").to_string());
        for k in ["loss_before", "loss_after", "accuracy_after"] {
            row.push(mean_ci(test.and_then(|t| t.get(k))));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    if differing.is_empty() {
        text.push_str("(the runs' configs are identical)\n");
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text.push_str("(meta-test: mean ± 95% confidence interval over the test tasks)\n");
    text
}

fn panels(runs: &[Run]) -> Vec<Panel> {
    let mut out = vec![panel(
        runs,
        "Training meta-loss (query loss after adaptation)",
        "meta-loss",
        |r| &r.meta_loss,
    )];
    if runs.iter().any(|r| !r.val_after.is_empty()) {
        out.push(panel(
            runs,
            "Validation loss after adaptation",
            "loss",
            |r| &r.val_after,
        ));
    }
    out
}

/// One panel with the series `series` of every run, on a log scale when all its values are > 0.
fn panel(runs: &[Run], title: &str, y_label: &str, series: impl Fn(&Run) -> &Series) -> Panel {
    Panel {
        title: title.into(),
        y_label: y_label.into(),
        log_y: runs.iter().all(|r| series(r).iter().all(|(_, y)| *y > 0.0)),
        series: runs
            .iter()
            .map(|r| (r.name.clone(), series(r).clone()))
            .collect(),
    }
}
