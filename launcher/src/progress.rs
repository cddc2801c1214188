//! The launcher's view of the fit loop on a terminal: the progress bar, warnings, validation
//! lines, and the stop signals it polls.

use indicatif::{ProgressBar, ProgressStyle};
use metaloop_engine::fit::Observer;
use metaloop_engine::train::{EvalReport, StepMetrics};

use crate::report::summary;
use crate::signals::StopSignals;

/// Prints a warning on stderr.
pub fn warn(message: &str) {
    eprintln!("metaloop: warning: {message}");
}

/// The warning of an outer step skipped for non-finite values.
fn skip_message(m: &StepMetrics, max_skips: u32) -> String {
    format!(
        "iteration {}: non-finite meta-gradient or loss (tasks {:?}): outer step skipped ({max_skips} in a row stop the run: outer.max_nonfinite_skips)",
        m.iteration, m.nonfinite_tasks
    )
}

/// The progress bar: iterations, meta-loss, tasks/s, elapsed and ETA. Hidden when stderr is not
/// a terminal.
fn bar(total: u64, start: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// The fit loop's observer: rank 0 shows progress and validations; every rank polls the stop
/// signals.
pub struct Terminal<'a> {
    bar: ProgressBar,
    rank0: bool,
    stop: &'a StopSignals,
    /// `outer.max_nonfinite_skips`, named in the warning of a skipped step.
    max_skips: u32,
}

impl<'a> Terminal<'a> {
    /// The observer of a run of `total` iterations that starts after iteration `start`.
    pub fn new(rank0: bool, total: u64, start: u64, max_skips: u32, stop: &'a StopSignals) -> Self {
        let bar = if rank0 {
            bar(total, start)
        } else {
            ProgressBar::hidden()
        };
        Terminal {
            bar,
            rank0,
            stop,
            max_skips,
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Terminal<'_> {
    fn stop_requested(&mut self) -> Option<i32> {
        self.stop.received()
    }

    fn step(&mut self, m: &StepMetrics, tasks_per_s: f64) {
        if m.skipped && self.rank0 {
            self.bar.suspend(|| warn(&skip_message(m, self.max_skips)));
        }
        self.bar.set_position(m.iteration);
        let acc = m
            .query_accuracy
            .map(|a| format!("  acc {:.1}%", 100.0 * a))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "meta-loss {:.4}{acc}  {tasks_per_s:.0} tasks/s",
            m.meta_loss
        ));
    }

    fn validated(&mut self, iteration: u64, report: &EvalReport) {
        if self.rank0 {
            self.bar
                .suspend(|| println!("iteration {iteration}: validation {}", summary(report)));
        }
    }

    fn warning(&mut self, message: &str) {
        self.bar.suspend(|| warn(message));
    }
}
