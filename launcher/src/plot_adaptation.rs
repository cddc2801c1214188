//! `plots/adaptation.png` of a sinusoid run: the MAML paper's Figure 2.
//!
//! One panel per meta-test task (three by default): the true curve, the K support points, and
//! the model's prediction before adaptation and after 1 and 10 inner SGD steps on those points,
//! computed by `metaloop_engine::adaptation`. Reads the run's `config.toml` and
//! `model.safetensors`, writes the PNG, prints nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use metaloop_engine::adaptation::{self, AdaptationCurves, AdaptationSpec};
use metaloop_engine::config::TaskKind;
use metaloop_engine::train::Trainer;
use plotters::prelude::*;

use crate::errors::bad;

/// The figure's file name under `plots/`.
pub const FILE: &str = "adaptation.png";

/// Writes `run_dir/plots/adaptation.png` for a finished sinusoid run (its `config.toml` and
/// `model.safetensors`) and returns its path; `None` when the run is not a sinusoid run.
/// The model file is read by `metaloop_engine::model_file` (through `Trainer::load_model`);
/// learned inner learning rates are used by the inner loop as `adaptation::overrides` says.
/// The inner optimizer is the run's (`algorithm.inner_optimizer`, `inner_lr`, `inner_momentum`).
pub fn write_for_run(run_dir: &Path) -> Result<Option<PathBuf>> {
    let cfg = crate::config::load(&run_dir.join(metaloop_engine::rundir::CONFIG), &[])?;
    if cfg.task.kind != TaskKind::Sinusoid {
        return Ok(None);
    }
    let weights = run_dir.join(metaloop_engine::rundir::MODEL);
    if !weights.is_file() {
        return Err(bad(format!("{}: no such file", weights.display())));
    }
    let mut trainer = Trainer::builder(&cfg)
        .device(tch::Device::Cpu)
        .build()
        .map_err(crate::errors::setup_error)?;
    trainer
        .load_model(&weights)
        .map_err(crate::errors::setup_error)?;
    let overrides = adaptation::overrides(trainer.learned_hparams())?;
    let spec = AdaptationSpec::figure(
        cfg.run.seed,
        cfg.task.shots as usize,
        metaloop_engine::outer_options::build_inner(&cfg.algorithm, false),
    );
    let curves = adaptation::sinusoid(trainer.model(), trainer.model_params(), &spec, &overrides)?;
    let path = run_dir.join(metaloop_engine::rundir::PLOTS).join(FILE);
    write(&path, &curves)?;
    Ok(Some(path))
}

/// Draws `curves` into the PNG `path` (its folder is created).
pub fn write(path: &Path, curves: &[AdaptationCurves]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    draw(path, curves).with_context(|| format!("{}: cannot draw the plot", path.display()))
}

fn draw(path: &Path, curves: &[AdaptationCurves]) -> Result<()> {
    crate::plot::register_font()?;
    let panels = curves.len().max(1);
    let dims = (520 * panels as u32, 440);
    let mut rgb = crate::plot::canvas(dims);
    let root = BitMapBackend::with_buffer(&mut rgb, dims).into_drawing_area();
    root.fill(&WHITE)?;
    let step_colors = [BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (c, area) in curves.iter().zip(root.split_evenly((1, panels))) {
        let (y0, y1) = y_range(c);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "A = {:.2}, phase = {:.2}, K = {}",
                    c.task.amplitude,
                    c.task.phase,
                    c.support.len()
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(-5.0..5.0, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("x")
            .y_desc("y")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        let grid = || c.grid.iter().copied();
        chart
            .draw_series(LineSeries::new(
                grid().zip(c.truth.iter().copied()),
                RED.stroke_width(3),
            ))?
            .label("ground truth")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
        for (i, p) in c.predictions.iter().enumerate() {
            let color = step_colors[i % step_colors.len()];
            let name = match p.steps {
                0 => "pre-update".to_string(),
                1 => "1 grad step".to_string(),
                n => format!("{n} grad steps"),
            };
            let style = if p.steps == 0 {
                color.mix(0.6).stroke_width(2)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(grid().zip(p.y.iter().copied()), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .draw_series(
                c.support
                    .iter()
                    .map(|&(x, y)| TriangleMarker::new((x, y), 7, BLACK.filled())),
            )?
            .label("support points")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
        crate::plot::draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 12)?;
    }
    root.present()?;
    drop(root);
    crate::plot::write_png(path, dims, rgb)
}

/// The y range covering the truth, the support points and the predictions (clamped, so that a
/// diverged prediction does not flatten the rest).
fn y_range(c: &AdaptationCurves) -> (f64, f64) {
    let truth = c.truth.iter().chain(c.support.iter().map(|(_, y)| y));
    let (lo, hi) = truth.fold((f64::MAX, f64::MIN), |(lo, hi), &y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (-1.0, 1.0) };
    let span = (hi - lo).max(1.0);
    let preds = c.predictions.iter().flat_map(|p| p.y.iter());
    let (plo, phi) = preds
        .filter(|y| y.is_finite())
        .fold((lo, hi), |(a, b), &y| (a.min(y), b.max(y)));
    let (lo, hi) = (plo.max(lo - span), phi.min(hi + span));
    let pad = 0.08 * (hi - lo).max(1e-6);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metaloop_runtime::{nn, Params};
    use tch::Kind;

    #[test]
    fn writes_a_png_with_one_panel_per_task() {
        let model = nn::mlp(&[1, 40, 40, 1]);
        let params = Params::init(&model, 3, Kind::Float, tch::Device::Cpu).unwrap();
        let sgd = Box::new(metaloop_runtime::optim::Sgd::new(0.01));
        let spec = AdaptationSpec::figure(5, 10, sgd);
        let curves = adaptation::sinusoid(&model, &params, &spec, &[]).unwrap();
        let dir = std::env::temp_dir().join(format!("metaloop-adapt-png-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("plots").join(FILE);
        write(&path, &curves).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (3 * 520, 440));
        // Not blank: the curves' colours are there.
        let rgb = img.to_rgb8();
        let red = rgb.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        let black = rgb.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(red > 500 && black > 100, "red {red}, black {black}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
