//! The collective watchdog. A collective that does not finish means that some rank is gone,
//! stopped or stuck; waiting on would burn the job's allocation until the cluster's time limit.
//!
//! Each MPI collective marks itself in flight ([`watch`]). Once a timeout is set
//! ([`set_collective_timeout`]), a thread looks at the collective in flight a few times per
//! timeout (at least once a second) and, when one has outlasted the timeout, reports which one
//! and at which iteration ([`set_iteration`]) through the program's callback (this crate never
//! prints), then ends the whole job with the `abort` its caller passes (`MPI_Abort`). `Nccl`
//! waits for its kernels by polling and applies the same timeout itself (see `comm::nccl`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The timeout in milliseconds; 0: off.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);
/// The iteration the program is at, for the report; `u64::MAX`: not known.
static ITERATION: AtomicU64 = AtomicU64::new(u64::MAX);
/// How the program wants a timeout reported.
static REPORT: Mutex<Option<fn(&str)>> = Mutex::new(None);
/// The collective in flight on this process and when it started.
static IN_FLIGHT: Mutex<Option<(&'static str, Instant)>> = Mutex::new(None);
static THREAD: Once = Once::new();

/// The exit code of a job ended by the watchdog.
pub const TIMEOUT_EXIT_CODE: i32 = 1;

/// Ends the job when a collective takes longer than `timeout` (`None` or zero: never), after
/// passing `report` one line that names the collective, the iteration and the timeout.
pub fn set_collective_timeout(timeout: Option<Duration>, report: fn(&str)) {
    let ms = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    if let Ok(mut r) = REPORT.lock() {
        *r = Some(report);
    }
    TIMEOUT_MS.store(ms, Ordering::SeqCst);
}

/// Tells the watchdog which iteration the program is at (named in its report).
pub fn set_iteration(iteration: u64) {
    ITERATION.store(iteration, Ordering::SeqCst);
}

/// The timeout, if one is set.
pub(super) fn timeout() -> Option<Duration> {
    match TIMEOUT_MS.load(Ordering::SeqCst) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// "all_reduce_sum at iteration 12 has not finished after 600 s": the configured timeout (the
/// time actually waited, which polling under load can round up, only when none is set).
pub(super) fn describe(op: &str, waited: Duration) -> String {
    let waited = timeout().unwrap_or(waited);
    let at = match ITERATION.load(Ordering::SeqCst) {
        u64::MAX => String::new(),
        it => format!(" at iteration {it}"),
    };
    format!(
        "collective {op}{at} has not finished after {:.0} s (collective timeout); ending the job",
        waited.as_secs_f64()
    )
}

/// Passes `message` to the program's report callback, if any.
pub(super) fn report(message: &str) {
    let callback = REPORT.lock().ok().and_then(|r| *r);
    if let Some(report) = callback {
        report(message);
    }
}

/// A collective in flight, from [`watch`] until dropped.
pub(super) struct Watch;

/// Marks the collective `op` in flight until the returned guard is dropped. The first call
/// starts the watchdog thread, which ends the job with `abort` when a collective is late.
pub(super) fn watch(op: &'static str, abort: fn(i32)) -> Watch {
    if timeout().is_some() {
        THREAD.call_once(|| {
            // Without the thread there is only no watchdog, which is what a failed spawn can give.
            let _ = std::thread::Builder::new()
                .name("metaloop-watchdog".into())
                .spawn(move || run(abort));
        });
    }
    if let Ok(mut f) = IN_FLIGHT.lock() {
        *f = Some((op, Instant::now()));
    }
    Watch
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut f) = IN_FLIGHT.lock() {
            *f = None;
        }
    }
}

/// The watchdog thread's loop.
fn run(abort: fn(i32)) {
    loop {
        let period = timeout().map_or(Duration::from_secs(1), |t| {
            (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        });
        std::thread::sleep(period);
        let Some(limit) = timeout() else { continue };
        let late = IN_FLIGHT
            .lock()
            .ok()
            .and_then(|f| *f)
            .filter(|(_, since)| since.elapsed() > limit);
        if let Some((op, since)) = late {
            report(&describe(op, since.elapsed()));
            abort(TIMEOUT_EXIT_CODE);
        }
    }
}
