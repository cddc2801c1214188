//! `plots/predictions.png` of a classification run: what adaptation changes on a few meta-test
//! tasks.
//!
//! One block per task (two by default, computed by `metaloop_engine::predictions`): a row of
//! support images, one per class, labelled with the class index, then the shown query images
//! (two per class; row j holds query j of every class, under its class's support image), each
//! captioned "true y · before p → after q" with the softmax probabilities of p and q below it.
//! A prediction is green when right and red when wrong; a query's frame shows whether the adapted
//! model got it right. More than [`MAX_COLUMNS`] classes wrap onto further rows. Reads the run's
//! `config.toml`, `model.safetensors` and the meta-test split of its dataset; writes the PNG,
//! prints nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use metaloop_engine::config::TaskKind;
use metaloop_engine::predictions::{
    Guess, Picture, PredictionSpec, QueryPrediction, TaskPredictions,
};
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::errors::bad;

/// The figure's file name under `plots/`.
pub const FILE: &str = "predictions.png";

/// Classes per row: more wrap onto the next row.
pub const MAX_COLUMNS: usize = 8;
/// Pixels: the side of an image's box (images are scaled to fit, nearest neighbour), a cell's
/// width, the height of a support cell and of a query cell, a task's header, a section label,
/// the margin around the figure and the gap between tasks.
const IMAGE: i32 = 84;
const CELL_W: i32 = 200;
const SUPPORT_H: i32 = IMAGE + 30;
const QUERY_H: i32 = IMAGE + 50;
const HEADER: i32 = 32;
const LABEL: i32 = 22;
const MARGIN: i32 = 16;
const GAP: i32 = 16;

const RIGHT: RGBColor = RGBColor(0, 140, 0);
const WRONG: RGBColor = RGBColor(210, 0, 0);
const TEXT: RGBColor = RGBColor(40, 40, 40);

/// Writes `run_dir/plots/predictions.png` from a trainer that holds a run's final θ0 and learned
/// inner hyperparameters (the end of `metaloop train`) and returns its path; `None` for
/// regression.
pub fn write_for_trainer(trainer: &Trainer, run_dir: &Path) -> Result<Option<PathBuf>> {
    if trainer.config().task.kind == TaskKind::Sinusoid {
        return Ok(None);
    }
    let grid = trainer.predictions(&PredictionSpec::figure())?;
    write_in(run_dir, &grid).map(Some)
}

/// The figure's predictions for a finished classification run (`metaloop plot RUN`): the
/// trainer rebuilt from its `config.toml` (its dataset loaded), θ0 and the learned inner
/// hyperparameters read from `model.safetensors` (by `metaloop_engine::model_file`). `None` for
/// a sinusoid run.
/// Nothing is written, so a missing dataset fails before any plot is drawn.
pub fn for_run(run_dir: &Path) -> Result<Option<Vec<TaskPredictions>>> {
    let cfg = crate::config::load(&run_dir.join(metaloop_engine::rundir::CONFIG), &[])?;
    if cfg.task.kind == TaskKind::Sinusoid {
        return Ok(None);
    }
    let weights = run_dir.join(metaloop_engine::rundir::MODEL);
    if !weights.is_file() {
        return Err(bad(format!("{}: no such file", weights.display())));
    }
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).map_err(crate::errors::setup_error)?;
    trainer
        .load_model(&weights)
        .map_err(crate::errors::setup_error)?;
    Ok(Some(trainer.predictions(&PredictionSpec::figure())?))
}

/// Draws `grid` into `run_dir/plots/predictions.png` and returns its path.
pub fn write_in(run_dir: &Path, grid: &[TaskPredictions]) -> Result<PathBuf> {
    let path = run_dir.join(metaloop_engine::rundir::PLOTS).join(FILE);
    write(&path, grid)?;
    Ok(path)
}

/// Draws `grid` into the PNG `path` (its folder is created).
pub fn write(path: &Path, grid: &[TaskPredictions]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    draw(path, grid).with_context(|| format!("{}: cannot draw the plot", path.display()))
}

/// The figure's size in pixels for `grid`.
pub fn size(grid: &[TaskPredictions]) -> (u32, u32) {
    let columns = grid.iter().map(columns).max().unwrap_or(1);
    let blocks: i32 = grid.iter().map(block_height).sum();
    let gaps = GAP * (grid.len().max(1) as i32 - 1);
    let width = 2 * MARGIN + CELL_W * columns as i32;
    (
        width as u32,
        (2 * MARGIN + blocks + gaps).max(2 * MARGIN) as u32,
    )
}

/// The classes of a task (labels are `0..ways`).
fn ways(t: &TaskPredictions) -> usize {
    t.support.iter().map(|(_, l)| l + 1).max().unwrap_or(0)
}

fn columns(t: &TaskPredictions) -> usize {
    ways(t).clamp(1, MAX_COLUMNS)
}

/// Rows one image per class takes.
fn rows_per_set(t: &TaskPredictions) -> i32 {
    ways(t).div_ceil(columns(t)).max(1) as i32
}

/// Shown queries per class.
fn queries_per_class(t: &TaskPredictions) -> usize {
    t.queries.len().div_ceil(ways(t).max(1))
}

fn block_height(t: &TaskPredictions) -> i32 {
    let rows = rows_per_set(t);
    HEADER + LABEL + SUPPORT_H * rows + LABEL + QUERY_H * rows * queries_per_class(t) as i32
}

fn draw(path: &Path, grid: &[TaskPredictions]) -> Result<()> {
    crate::plot::register_font()?;
    let dims = size(grid);
    let mut rgb = crate::plot::canvas(dims);
    let root = BitMapBackend::with_buffer(&mut rgb, dims).into_drawing_area();
    root.fill(&WHITE)?;
    let mut top = MARGIN;
    for t in grid {
        draw_task(&root, t, top)?;
        top += block_height(t) + GAP;
    }
    root.present()?;
    drop(root);
    crate::plot::write_png(path, dims, rgb)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// One task's block, its top edge at `top`: the header, the support row(s), the query rows.
fn draw_task(root: &Area<'_>, t: &TaskPredictions, top: i32) -> Result<()> {
    let ways = ways(t);
    let shots = t.support.len() / ways.max(1);
    let right = |after: bool| {
        let guess = |q: &QueryPrediction| if after { q.after } else { q.before };
        t.queries
            .iter()
            .filter(|q| guess(q).class == q.label)
            .count()
    };
    let (n, steps) = (t.queries.len(), t.inner_steps);
    let header = format!(
        "meta-test task {}: {ways}-way {shots}-shot, {steps} inner step{}; shown queries right: {}/{n} before, {}/{n} after adaptation",
        t.task,
        if steps == 1 { "" } else { "s" },
        right(false),
        right(true),
    );
    text(root, &header, (MARGIN, top + 6), 16, &BLACK)?;
    let y = top + HEADER;
    text(
        root,
        "support set (first image of each class)",
        (MARGIN, y + 3),
        13,
        &TEXT,
    )?;
    for c in 0..ways {
        let Some((picture, _)) = t.support.iter().find(|(_, l)| *l == c) else {
            continue;
        };
        let (x, cy) = cell(t, c, y + LABEL, SUPPORT_H);
        let frame = RGBColor(160, 160, 160);
        let at = image(root, picture, (x + (CELL_W - IMAGE) / 2, cy + 4), &frame)?;
        segments(
            root,
            &[(format!("class {c}"), TEXT)],
            (x + CELL_W / 2, at + 6),
        )?;
    }
    let y = y + LABEL + SUPPORT_H * rows_per_set(t);
    let label =
        "queries: true class · prediction before → after adaptation (softmax probability below)";
    text(root, label, (MARGIN, y + 3), 13, &TEXT)?;
    let mut seen = vec![0usize; ways];
    for q in &t.queries {
        let Some(j) = seen.get_mut(q.label) else {
            continue;
        };
        // Row j holds query j of every class.
        let rows_top = y + LABEL + QUERY_H * rows_per_set(t) * *j as i32;
        *j += 1;
        draw_query(root, q, cell(t, q.label, rows_top, QUERY_H))?;
    }
    Ok(())
}

/// The top-left corner of class `c`'s cell in a set of rows starting at `top`, cells `height`
/// high (classes beyond the columns wrap onto the next row).
fn cell(t: &TaskPredictions, c: usize, top: i32, height: i32) -> (i32, i32) {
    let cols = columns(t);
    let x = MARGIN + CELL_W * (c % cols) as i32;
    (x, top + height * (c / cols) as i32)
}

/// A query's image, framed in the colour of the adapted prediction, and its two caption lines.
fn draw_query(root: &Area<'_>, q: &QueryPrediction, (x, y): (i32, i32)) -> Result<()> {
    let colour = |g: Guess| if g.class == q.label { RIGHT } else { WRONG };
    let bottom = image(
        root,
        &q.image,
        (x + (CELL_W - IMAGE) / 2, y + 4),
        &colour(q.after),
    )?;
    let centre = x + CELL_W / 2;
    segments(
        root,
        &[
            (format!("true {} · ", q.label), TEXT),
            (format!("before {}", q.before.class), colour(q.before)),
            (" → ".into(), TEXT),
            (format!("after {}", q.after.class), colour(q.after)),
        ],
        (centre, bottom + 6),
    )?;
    segments(
        root,
        &[
            (format!("p {:.2}", q.before.probability), colour(q.before)),
            (" → ".into(), TEXT),
            (format!("{:.2}", q.after.probability), colour(q.after)),
        ],
        (centre, bottom + 24),
    )?;
    Ok(())
}

/// Draws `picture` scaled (nearest neighbour) into the `IMAGE`-sided box at `(x, y)`, centred,
/// with a frame in `frame`; returns the y just below the box.
fn image(root: &Area<'_>, picture: &Picture, (x, y): (i32, i32), frame: &RGBColor) -> Result<i32> {
    let side = picture.width.max(picture.height).max(1) as f64;
    let scale = f64::from(IMAGE) / side;
    let (w, h) = (
        (picture.width as f64 * scale).round() as i32,
        (picture.height as f64 * scale).round() as i32,
    );
    let (x0, y0) = (x + (IMAGE - w) / 2, y + (IMAGE - h) / 2);
    // The frame first: the image covers whatever of its stroke falls inside.
    let style = ShapeStyle {
        color: frame.to_rgba(),
        filled: false,
        stroke_width: 3,
    };
    let corners = [(x0 - 2, y0 - 2), (x0 + w + 1, y0 + h + 1)];
    root.draw(&Rectangle::new(corners, style))?;
    for v in 0..h {
        let sy = ((f64::from(v) / scale) as usize).min(picture.height - 1);
        for u in 0..w {
            let sx = ((f64::from(u) / scale) as usize).min(picture.width - 1);
            let [r, g, b] = picture.rgb8(sx, sy);
            root.draw_pixel((x0 + u, y0 + v), &RGBColor(r, g, b))?;
        }
    }
    Ok(y + IMAGE)
}

/// Left-aligned text with its top-left corner at `at`.
fn text(root: &Area<'_>, s: &str, at: (i32, i32), size: u32, colour: &RGBColor) -> Result<()> {
    let style = ("sans-serif", size).into_font().color(colour);
    root.draw(&Text::new(s.to_string(), at, style))?;
    Ok(())
}

/// Pieces of text in their own colours on one line, centred on `centre_x`, top at `y`.
fn segments(
    root: &Area<'_>,
    pieces: &[(String, RGBColor)],
    (centre_x, y): (i32, i32),
) -> Result<()> {
    let font = ("sans-serif", 13).into_font().color(&TEXT);
    let widths = pieces
        .iter()
        .map(|(s, _)| Ok(root.estimate_text_size(s, &font)?.0 as i32))
        .collect::<Result<Vec<i32>>>()?;
    let mut x = centre_x - widths.iter().sum::<i32>() / 2;
    for ((s, colour), w) in pieces.iter().zip(widths) {
        root.draw(&Text::new(s.clone(), (x, y), font.color(colour)))?;
        x += w;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side`×`side` picture of one colour.
    fn plain(side: usize, channels: usize, value: [f32; 3]) -> Picture {
        Picture {
            height: side,
            width: side,
            channels,
            pixels: (0..side * side)
                .flat_map(|_| value[..channels].to_vec())
                .collect(),
        }
    }

    /// A task of `ways` classes with two queries each: class 0's first query wrong after
    /// adaptation, every other one right; before adaptation every query is class 0.
    fn task(ways: usize, side: usize, channels: usize) -> TaskPredictions {
        let guess = |class| Guess {
            class,
            probability: 0.5,
        };
        TaskPredictions {
            task: 0,
            inner_steps: 5,
            support: (0..ways)
                .map(|c| (plain(side, channels, [0.0, 0.0, 1.0]), c))
                .collect(),
            queries: (0..2 * ways)
                .map(|i| QueryPrediction {
                    image: plain(side, channels, [0.5, 0.5, 0.5]),
                    label: i / 2,
                    before: guess(0),
                    after: guess(if i == 0 { 1 } else { i / 2 }),
                })
                .collect(),
        }
    }

    #[test]
    fn writes_a_png_with_a_block_per_task_and_coloured_frames() {
        let grid = [task(5, 28, 3), task(5, 84, 1)];
        let dir = std::env::temp_dir().join(format!("metaloop-pred-png-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = write_in(&dir, &grid).unwrap();
        assert_eq!(path, dir.join("plots").join(FILE));
        let img = image::open(&path).unwrap().to_rgb8();
        // 5 columns of 200 px; per task a header, a support row and two query rows.
        assert_eq!(
            size(&grid),
            (
                2 * 16 + 5 * 200,
                2 * 16 + 2 * (32 + 22 + 114 + 22 + 2 * 134) + 16
            )
        );
        assert_eq!((img.width(), img.height()), size(&grid));
        let count = |rgb: [u8; 3]| img.pixels().filter(|p| p.0 == rgb).count();
        // The first task's five blue support images, 28 px scaled by 3; the second task's are
        // gray (one channel): black. Twenty mid-gray query images of 84×84 px.
        assert_eq!(count([0, 0, 255]), 5 * 84 * 84);
        assert!(count([0, 0, 0]) >= 5 * 84 * 84);
        assert!(count([128, 128, 128]) >= 20 * 84 * 84);
        // Frames: the first query row starts below the header, the label, the support row and
        // the label (y = 16 + 32 + 22 + 114 + 22); an image's box is centred in its 200 px
        // cell, 4 px below the cell's top. Class 0's first query is wrong after adaptation (red
        // frame), class 1's right (green).
        let (x, y) = (16 + (200 - 84) / 2, 16 + 32 + 22 + 114 + 22 + 4);
        assert_eq!(img.get_pixel(x - 2, y + 40).0, [210, 0, 0]);
        assert_eq!(img.get_pixel(x + 200 - 2, y + 40).0, [0, 140, 0]);
        assert_eq!(img.get_pixel(x + 200 + 40, y + 40).0, [128, 128, 128]);
        // Captions in both colours.
        let (red, green) = (count([210, 0, 0]), count([0, 140, 0]));
        assert!(
            red > 2 * 4 * 84 && green > 18 * 4 * 84,
            "red {red}, green {green}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn more_classes_than_columns_wrap() {
        let grid = [task(20, 28, 1)];
        let rows = 20usize.div_ceil(MAX_COLUMNS) as u32;
        assert_eq!(
            size(&grid),
            (
                2 * 16 + MAX_COLUMNS as u32 * 200,
                2 * 16 + 32 + 22 + rows * 114 + 22 + 2 * rows * 134
            )
        );
    }
}
