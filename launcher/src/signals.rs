//! Stop requests during meta-training: SIGTERM (Slurm preemption, `kill`, mpirun ending a job) and
//! SIGINT (Ctrl-C).
//!
//! While the training loop runs, a signal only sets a flag. The engine's fit loop polls it
//! ([`StopSignals::received`]) before each iteration and once after the last; the ranks
//! all-reduce their flags there, so all
//! of them stop after the same iteration even when the signal reached only some. The loop then
//! writes the checkpoint of that iteration (rank 0), waits for every rank, and the command exits
//! with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a process killed by the
//! signal would, so that shells, Slurm and `set -e` scripts see an unfinished run.
//!
//! A second signal while the run is stopping, or a signal outside the training loop (after
//! [`StopSignals::exit_at_once`]: the meta-test, the report), exits at once with the same code:
//! checkpoints and run files are written atomically, so whatever was complete stays usable.
//!
//! `launch --max-restarts` uses the same flags to pass a stop on to its mpirun job
//! (launcher::restart).
//!
//! This module installs handlers and reads flags; it never prints or writes files.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Where the fit loop's stop requests come from: the signal handlers of [`StopSignals`] for the
/// command; Python's own signal check for the Python package.
pub trait StopSource {
    /// The signal received on this process, if any (not yet agreed with the other ranks).
    fn received(&self) -> Option<i32>;

    /// From now on a signal ends the process at once, where the source can do that.
    fn exit_at_once(&self) {}
}

impl StopSource for StopSignals {
    fn received(&self) -> Option<i32> {
        StopSignals::received(self)
    }

    fn exit_at_once(&self) {
        StopSignals::exit_at_once(self)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_names() {
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
