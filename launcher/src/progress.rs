//! The launcher's view of the fit loop on a terminal: the progress bar, warnings, validation
//! lines, and the stop signals it polls. When stderr is not a terminal (a batch job's log),
//! indicatif hides its bar; a plain progress line every `log.every` iterations replaces it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use metaloop_engine::fit::Observer;
use metaloop_engine::train::{EvalReport, StepMetrics};

use crate::report::summary;
use crate::signals::StopSource;

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

/// "12:03:04": a duration as hours, minutes and seconds.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The plain progress line of a batch log: iteration/total, meta-loss, accuracy, tasks/s, ETA.
pub fn plain_line(m: &StepMetrics, total: u64, tasks_per_s: f64, eta: Duration) -> String {
    let acc = m
        .query_accuracy
        .map(|a| format!(", accuracy {:.1}%", 100.0 * a))
        .unwrap_or_default();
    format!(
        "iteration {}/{total}: meta-loss {:.4}{acc}, {tasks_per_s:.1} tasks/s, ETA {}",
        m.iteration,
        m.meta_loss,
        clock(eta)
    )
}

/// Plain progress lines for a stderr that is not a terminal.
struct Plain {
    every: u64,
    start: u64,
    started: Instant,
}

impl Plain {
    /// The line of iteration `m.iteration`, if it is one to print.
    fn line(&self, m: &StepMetrics, total: u64, tasks_per_s: f64) -> Option<String> {
        let it = m.iteration;
        if !(it.is_multiple_of(self.every) || it == total) {
            return None;
        }
        let done = it.saturating_sub(self.start).max(1) as f64;
        let left = total.saturating_sub(it) as f64;
        let eta = self.started.elapsed().mul_f64(left / done);
        Some(plain_line(m, total, tasks_per_s, eta))
    }
}

/// The fit loop's observer: rank 0 shows progress and validations; every rank polls the stop
/// signals.
pub struct Terminal<'a> {
    bar: ProgressBar,
    /// Plain lines instead of the bar (rank 0, stderr not a terminal).
    plain: Option<Plain>,
    total: u64,
    rank0: bool,
    stop: &'a dyn StopSource,
    /// `outer.max_nonfinite_skips`, named in the warning of a skipped step.
    max_skips: u32,
}

impl<'a> Terminal<'a> {
    /// The observer of a run of `total` iterations that starts after iteration `start`; without
    /// a terminal, it prints a line every `every` iterations.
    pub fn new(
        rank0: bool,
        (total, start, every): (u64, u64, u64),
        max_skips: u32,
        stop: &'a dyn StopSource,
    ) -> Self {
        let plain = (rank0 && !std::io::stderr().is_terminal()).then(|| Plain {
            every: every.max(1),
            start,
            started: Instant::now(),
        });
        let bar = if rank0 && plain.is_none() {
            bar(total, start)
        } else {
            ProgressBar::hidden()
        };
        Terminal {
            bar,
            plain,
            total,
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
        if let Some(line) = self
            .plain
            .as_ref()
            .and_then(|p| p.line(m, self.total, tasks_per_s))
        {
            eprintln!("{line}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(iteration: u64, accuracy: Option<f64>) -> StepMetrics {
        StepMetrics {
            iteration,
            meta_loss: 0.5,
            query_accuracy: accuracy,
            grad_norm: 1.0,
            tasks: 4,
            seconds: 0.1,
            hparams: Vec::new(),
            skipped: false,
            nonfinite_tasks: Vec::new(),
            outer_lr: 1e-3,
            clipped: None,
            clips: None,
            inner_clips: 0,
            inner_clip_norm: None,
        }
    }

    #[test]
    fn a_plain_line_shows_progress_accuracy_speed_and_eta() {
        let line = plain_line(
            &metrics(40, Some(0.625)),
            1000,
            12.34,
            Duration::from_secs(3725),
        );
        assert_eq!(
            line,
            "iteration 40/1000: meta-loss 0.5000, accuracy 62.5%, 12.3 tasks/s, ETA 1:02:05"
        );
        let line = plain_line(&metrics(2, None), 6, 3.0, Duration::ZERO);
        assert_eq!(
            line,
            "iteration 2/6: meta-loss 0.5000, 3.0 tasks/s, ETA 0:00:00"
        );
    }

    #[test]
    fn plain_lines_come_every_log_every_iterations_and_at_the_end() {
        let plain = Plain {
            every: 20,
            start: 0,
            started: Instant::now(),
        };
        let printed: Vec<u64> = (1..=50)
            .filter(|&i| plain.line(&metrics(i, None), 50, 1.0).is_some())
            .collect();
        assert_eq!(printed, [20, 40, 50]);
    }
}
