//! Stop requests during meta-training: SIGTERM (Slurm preemption, `kill`, mpirun ending a job) and
//! SIGINT (Ctrl-C).
//!
//! While the training loop runs, a signal only sets a flag. The loop asks [`StopSignals::agreed`]
//! before each iteration and once after the last; the ranks all-reduce their flags there, so all
//! of them stop after the same iteration even when the signal reached only some. The loop then
//! writes the checkpoint of that iteration (rank 0), waits for every rank, and the command exits
//! with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a process killed by the
//! signal would, so that shells, Slurm and `set -e` scripts see an unfinished run.
//!
//! A second signal while the run is stopping, or a signal outside the training loop (after
//! [`StopSignals::exit_at_once`]: the meta-test, the report), exits at once with the same code:
//! checkpoints and run files are written atomically, so whatever was complete stays usable.
//!
//! This module installs handlers and reads flags; it never prints or writes files.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use metaloop_engine::train::Trainer;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The flags that the SIGTERM and SIGINT handlers set.
pub struct StopSignals {
    /// Set by the first signal.
    requested: Arc<AtomicBool>,
    /// The number of the latest signal (0: none).
    which: Arc<AtomicUsize>,
    /// When set, a signal ends the process at once.
    at_once: Arc<AtomicBool>,
}

impl StopSignals {
    /// Installs the handlers of SIGTERM and SIGINT: from now on they request a stop instead of
    /// ending the process.
    pub fn install() -> Result<StopSignals> {
        let stop = StopSignals {
            requested: Arc::new(AtomicBool::new(false)),
            which: Arc::new(AtomicUsize::new(0)),
            at_once: Arc::new(AtomicBool::new(false)),
        };
        for signal in [SIGTERM, SIGINT] {
            use signal_hook::flag;
            // signal-hook runs a signal's actions in the order they were registered: the two
            // exits look at the flags as they were before this signal.
            flag::register_conditional_shutdown(signal, 128 + signal, stop.at_once.clone())?;
            flag::register_conditional_shutdown(signal, 128 + signal, stop.requested.clone())?;
            flag::register(signal, stop.requested.clone())?;
            flag::register_usize(signal, stop.which.clone(), signal as usize)?;
        }
        Ok(stop)
    }

    /// The signal received on this process, if any (not yet agreed with the other ranks).
    pub fn received(&self) -> Option<i32> {
        if self.requested.load(Ordering::SeqCst) {
            Some(self.which.load(Ordering::SeqCst) as i32)
        } else {
            None
        }
    }

    /// Whether any rank received a stop signal: collective (every rank must call it at the same
    /// point of the loop). `Some(signal)` on every rank alike; the signal is this rank's own, or
    /// SIGTERM on a rank that received none (mpirun and Slurm pass SIGTERM on).
    pub fn agreed(&self, trainer: &Trainer) -> Result<Option<i32>> {
        // Called before every iteration: the collective watchdog names it in its report.
        metaloop_runtime::comm::set_iteration(trainer.iteration());
        let mine = self.received();
        Ok(trainer
            .any_rank(mine.is_some())?
            .then(|| mine.unwrap_or(SIGTERM)))
    }

    /// From now on a signal ends the process at once (exit code 128 + signal): for the phases
    /// after training, whose inputs the last checkpoint already holds.
    pub fn exit_at_once(&self) {
        self.at_once.store(true, Ordering::SeqCst);
    }
}

/// The name of a stop signal.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// A run stopped by a signal after writing its checkpoint: the command exits with
/// `128 + signal`, and rank 0 prints `message`.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub message: String,
    /// Only rank 0 prints.
    pub print: bool,
}

impl Interrupted {
    /// 143 for SIGTERM, 130 for SIGINT.
    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.signal).unwrap_or(1)
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        let stop = |signal| Interrupted {
            signal,
            message: String::new(),
            print: true,
        };
        assert_eq!(stop(SIGTERM).exit_code(), 143);
        assert_eq!(stop(SIGINT).exit_code(), 130);
        assert_eq!((name(SIGTERM), name(SIGINT)), ("SIGTERM", "SIGINT"));
    }

    #[test]
    fn a_signal_sets_the_flag_instead_of_ending_the_process() {
        let stop = StopSignals::install().unwrap();
        assert_eq!(stop.received(), None);
        // Only one signal: a second one would end this test process (with 143), by design.
        signal_hook::low_level::raise(SIGTERM).unwrap();
        assert_eq!(stop.received(), Some(SIGTERM));
    }
}
