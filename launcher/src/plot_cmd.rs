//! `metaloop plot RUN`: the learning curves and, for a finished run, the adaptation figure
//! (sinusoid) or the predictions grid (image classification).

use std::path::Path;

use anyhow::Result;

use crate::{plot, plot_adaptation, plot_predictions};

/// Writes the plots of `run_dir` and prints each path.
pub fn run(run_dir: &Path) -> Result<()> {
    let finished = run_dir.join(metaloop_engine::rundir::MODEL).is_file();
    // Loads a classification run's dataset before anything is drawn: a missing one
    // leaves the plots as they were.
    let predictions = if finished {
        plot_predictions::for_run(run_dir)?
    } else {
        None
    };
    for p in plot::write(run_dir)? {
        println!("{}", p.display());
    }
    if finished {
        if let Some(p) = plot_adaptation::write_for_run(run_dir)? {
            println!("{}", p.display());
        }
    }
    if let Some(grid) = predictions {
        println!("{}", plot_predictions::write_in(run_dir, &grid)?.display());
    }
    Ok(())
}
