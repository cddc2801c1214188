//! `metaloop plot`: PNG learning curves from a run's `metrics.jsonl`, drawn with plotters.
//!
//! One figure, `plots/learning_curves.png`, with a panel per available series: the meta-loss
//! (training query loss after adaptation) with validation before/after adaptation, the query
//! accuracy (classification), and the learned inner hyperparameters. Text is drawn with the
//! DejaVu Sans font embedded in the binary, so no system font is needed. Reads metrics, writes
//! PNGs, prints nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Deserialize;

use crate::errors::bad;

/// DejaVu Sans (Bitstream Vera license, see launcher/assets/DejaVuSans-LICENSE.txt).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

// Non-finite values (a skipped step's loss, a NaN meta-test) are logged as null: every number
// read here may be missing, and the curves leave such points out.
#[derive(Deserialize)]
struct MeanCi {
    mean: Option<f64>,
}

#[derive(Deserialize)]
struct Val {
    metric: String,
    loss_before: MeanCi,
    loss_after: MeanCi,
    accuracy_after: Option<MeanCi>,
}

#[derive(Deserialize)]
struct Line {
    iteration: u64,
    meta_loss: Option<f64>,
    query_accuracy: Option<f64>,
    #[serde(default)]
    hparams: BTreeMap<String, Option<f64>>,
    val: Option<Val>,
}

pub(crate) type Series = Vec<(f64, f64)>;

pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) log_y: bool,
    pub(crate) series: Vec<(String, Series)>,
}

pub(crate) fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow::anyhow!("the embedded DejaVu Sans font cannot be read"));
    });
    result
}

/// Reads `run_dir/metrics.jsonl` and writes the learning curves under `run_dir/plots/`.
/// Returns the paths of the PNG files written.
pub fn write(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let metrics = run_dir.join(metaloop_engine::rundir::METRICS);
    let text = std::fs::read_to_string(&metrics).map_err(|e| {
        bad(format!(
            "{}: {}",
            metrics.display(),
            crate::errors::io_words(&e)
        ))
    })?;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(raw) {
            Ok(l) => lines.push(l),
            // A torn last line (a killed run) is skipped; anything else is an error.
            Err(_) if i + 1 == text.lines().count() => {}
            Err(e) => return Err(bad(format!("{} line {}: {e}", metrics.display(), i + 1))),
        }
    }
    if lines.is_empty() {
        return Err(bad(format!("{}: no metrics logged yet", metrics.display())));
    }
    let panels = panels(&lines);
    let dir = run_dir.join(metaloop_engine::rundir::PLOTS);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let path = dir.join("learning_curves.png");
    draw(&path, &panels).with_context(|| format!("{}: cannot draw the plot", path.display()))?;
    Ok(vec![path])
}

fn panels(lines: &[Line]) -> Vec<Panel> {
    let regression = lines.iter().all(|l| l.query_accuracy.is_none());
    let vals: Vec<(&Line, &Val)> = lines
        .iter()
        .filter_map(|l| l.val.as_ref().map(|v| (l, v)))
        .collect();
    let mut out = vec![loss_panel(lines, &vals, regression)];
    if !regression {
        out.push(accuracy_panel(lines, &vals));
    }
    out.extend(hparams_panel(lines));
    out
}

/// The x coordinate of a line: its outer iteration.
fn x_of(l: &Line) -> f64 {
    l.iteration as f64
}

/// The training meta-loss, with the validation losses before and after adaptation.
fn loss_panel(lines: &[Line], vals: &[(&Line, &Val)], regression: bool) -> Panel {
    let loss_name = if regression { "MSE" } else { "cross-entropy" };
    let mut loss = Panel {
        title: "Meta-loss (query loss after adaptation)".into(),
        y_label: loss_name.into(),
        log_y: lines.iter().all(|l| l.meta_loss.is_none_or(|v| v > 0.0)),
        series: vec![(
            "train meta-batch".into(),
            lines
                .iter()
                .filter_map(|l| l.meta_loss.map(|v| (x_of(l), v)))
                .collect(),
        )],
    };
    if !vals.is_empty() {
        let positive = |m: &MeanCi| m.mean.is_none_or(|v| v > 0.0);
        loss.log_y &= vals
            .iter()
            .all(|(_, v)| positive(&v.loss_before) && positive(&v.loss_after));
        loss.series.push((
            "validation, before adaptation".into(),
            vals.iter()
                .filter_map(|(l, v)| v.loss_before.mean.map(|m| (x_of(l), m)))
                .collect(),
        ));
        loss.series.push((
            "validation, after adaptation".into(),
            vals.iter()
                .filter_map(|(l, v)| v.loss_after.mean.map(|m| (x_of(l), m)))
                .collect(),
        ));
    }
    loss
}

/// The training query accuracy, with the validation accuracy after adaptation.
fn accuracy_panel(lines: &[Line], vals: &[(&Line, &Val)]) -> Panel {
    let mut acc = Panel {
        title: "Query accuracy after adaptation".into(),
        y_label: "accuracy".into(),
        log_y: false,
        series: vec![(
            "train meta-batch".into(),
            lines
                .iter()
                .filter_map(|l| l.query_accuracy.map(|a| (x_of(l), a)))
                .collect(),
        )],
    };
    let val_acc: Series = vals
        .iter()
        .filter(|(_, v)| v.metric == "accuracy")
        .filter_map(|(l, v)| Some((x_of(l), v.accuracy_after.as_ref()?.mean?)))
        .collect();
    if !val_acc.is_empty() {
        acc.series.push(("validation".into(), val_acc));
    }
    acc
}

/// The learned inner hyperparameters, when the run logs any.
fn hparams_panel(lines: &[Line]) -> Option<Panel> {
    let mut names: Vec<&String> = lines.iter().flat_map(|l| l.hparams.keys()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    Some(Panel {
        title: "Learned inner hyperparameters (mean)".into(),
        y_label: "value".into(),
        log_y: false,
        series: names
            .iter()
            .map(|n| {
                (
                    (*n).clone(),
                    lines
                        .iter()
                        .filter_map(|l| Some((x_of(l), (*l.hparams.get(*n)?)?)))
                        .collect(),
                )
            })
            .collect(),
    })
}

fn range(series: &[(String, Series)], log: bool) -> ((f64, f64), (f64, f64)) {
    let pts = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|(_, y)| y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if log {
        ((x0, x1), (y0 / 1.1, y1 * 1.1))
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-9 + y1.abs() * 1e-3);
        ((x0, x1), (y0 - pad, y1 + pad))
    }
}

/// An axis label with about three significant digits.
fn tick(y: f64) -> String {
    let a = y.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1000.0).contains(&a) {
        format!("{y:.2e}")
    } else if a >= 100.0 {
        format!("{y:.0}")
    } else if a >= 10.0 {
        format!("{y:.1}")
    } else if a >= 1.0 {
        format!("{y:.2}")
    } else {
        format!("{y:.3}")
    }
}

/// Draws the legend of `chart`'s labelled series at `position`: `size`-point text in a black
/// frame on translucent white.
pub(crate) fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", size))
        .draw()?;
    Ok(())
}

pub(crate) fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font()?;
    let height = 360 * panels.len() as u32;
    let dims = (960, height);
    let mut rgb = canvas(dims);
    let root = BitMapBackend::with_buffer(&mut rgb, dims).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (panel, area) in panels.iter().zip(areas) {
        // A log axis only when the values span more than a decade: plotters labels a log axis
        // at powers of ten, which a narrower range would leave without labels.
        let ((_, _), (ly0, ly1)) = range(&panel.series, false);
        let log_y = panel.log_y && ly0 > 0.0 && ly1 / ly0 > 10.0;
        let ((x0, x1), (y0, y1)) = range(&panel.series, log_y);
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(&panel.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        macro_rules! plot_on {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc("outer iteration")
                    .x_label_formatter(&|x| format!("{x:.0}"))
                    .y_label_formatter(&|y| tick(*y))
                    .y_desc(panel.y_label.as_str())
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .draw()?;
                for (i, (name, series)) in panel.series.iter().enumerate() {
                    let color = colors[i % colors.len()];
                    let pts = series.iter().copied().filter(|(_, y)| y.is_finite());
                    chart
                        .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                }
                draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;
            }};
        }
        if log_y {
            plot_on!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?);
        } else {
            plot_on!(builder.build_cartesian_2d(x0..x1, y0..y1)?);
        }
    }
    root.present()?;
    drop(root);
    write_png(path, dims, rgb)
}

/// A black RGB picture of `dims` for `BitMapBackend::with_buffer` (the plots fill it first).
pub(crate) fn canvas((w, h): (u32, u32)) -> Vec<u8> {
    vec![0; w as usize * h as usize * 3]
}

/// Encodes the RGB picture `rgb` of `dims` as PNG and writes it to `path` atomically: a full
/// disk leaves the previous file or none, never a truncated PNG.
pub(crate) fn write_png(path: &Path, (w, h): (u32, u32), rgb: Vec<u8>) -> Result<()> {
    let picture = image::RgbImage::from_raw(w, h, rgb)
        .with_context(|| format!("{}: a plot buffer of the wrong size", path.display()))?;
    let mut png = Vec::new();
    picture.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    metaloop_engine::atomic::write_atomic(path, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_steps_logged_as_null_are_left_out_of_the_plot() {
        let dir = std::env::temp_dir().join(format!("metaloop-plot-nulls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lines = [
            r#"{"iteration":1,"meta_loss":null,"query_accuracy":null,"hparams":{"lr":null},"skipped":true}"#,
            r#"{"iteration":2,"meta_loss":0.5,"query_accuracy":0.25,"hparams":{"lr":0.1},"skipped":false,"val":{"metric":"accuracy","loss_before":{"mean":null},"loss_after":{"mean":1.0},"accuracy_after":{"mean":null}}}"#,
            r#"{"iteration":3,"meta_loss":null,"query_accuracy":null,"hparams":{},"skipped":true}"#,
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        let written = write(&dir).unwrap();
        assert_eq!(written, vec![dir.join("plots/learning_curves.png")]);
        assert!(std::fs::metadata(&written[0]).unwrap().len() > 0);
        // Only nulls: still a plot (of empty curves), not an error.
        std::fs::write(dir.join("metrics.jsonl"), format!("{}\n", lines[0])).unwrap();
        assert!(write(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
