//! The text a run prints: the meta-test summary, the best model's line, and the files a
//! finished `train` leaves.

use std::path::PathBuf;

use metaloop_engine::rundir;
use metaloop_engine::selection::{Best, ACCURACY_AFTER};
use metaloop_engine::train::EvalReport;

/// What a finished `train` leaves for the caller to print.
pub struct Finished {
    pub run_dir: PathBuf,
    pub test: EvalReport,
    pub best: Option<Best>,
    pub plots: Vec<PathBuf>,
}

/// "MSE before adaptation 2.871 ± 0.210, after 0.412 ± 0.031 (mean ± 95% CI over 600 tasks,
/// 10 support points, 1 inner step)"; for classification the accuracies, with "5-way 1-shot".
pub fn summary(r: &EvalReport) -> String {
    match (&r.accuracy_before, &r.accuracy_after) {
        (Some(b), Some(a)) => format!(
            "accuracy before adaptation {:.2}% ± {:.2}%, after {:.2}% ± {:.2}% (query loss {:.3} → {:.3}; mean ± 95% CI over {} tasks, {}-way {}-shot, {} inner steps)",
            100.0 * b.mean,
            100.0 * b.ci95,
            100.0 * a.mean,
            100.0 * a.ci95,
            r.loss_before.mean,
            r.loss_after.mean,
            r.tasks,
            r.ways.unwrap_or(0),
            r.shots,
            r.inner_steps
        ),
        _ => format!(
            "MSE before adaptation {:.3} ± {:.3}, after {:.3} ± {:.3} (mean ± 95% CI over {} tasks, {} support points, {} inner step{})",
            r.loss_before.mean,
            r.loss_before.ci95,
            r.loss_after.mean,
            r.loss_after.ci95,
            r.tasks,
            r.shots,
            r.inner_steps,
            if r.inner_steps == 1 { "" } else { "s" }
        ),
    }
}

/// "best model: iteration 40 (validation accuracy after adaptation 61.20% ± 1.90% over 100 tasks)".
pub fn best_line(b: &Best) -> String {
    let value = if b.metric == ACCURACY_AFTER {
        format!(
            "accuracy after adaptation {:.2}% ± {:.2}%",
            100.0 * b.value,
            100.0 * b.ci95
        )
    } else {
        format!("loss after adaptation {:.4} ± {:.4}", b.value, b.ci95)
    };
    format!(
        "best model: iteration {} (validation {value} over {} tasks)",
        b.iteration, b.tasks
    )
}

/// Prints what a finished run measured and where its files are.
pub fn print_finished(f: &Finished) {
    println!("meta-test: {}", summary(&f.test));
    if let Some(b) = &f.best {
        println!("{}: {}", rundir::BEST_MODEL, best_line(b));
    }
    println!("run directory: {}", f.run_dir.display());
    for p in &f.plots {
        println!("plot: {}", p.display());
    }
}
