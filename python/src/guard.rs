//! The boundary between Python and metaloop's Rust code: work that runs without the GIL, and
//! panics, which become `metaloop.Error` instead of ending the Python process.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::errors::Error;

/// A value that crosses `Python::allow_threads`, which wants `Send`. The closure runs on the
/// calling thread and returns before `allow_threads` does, so nothing moves between threads:
/// the Trainer (whose communicator is not `Send`) stays on the thread that owns it.
struct OnThisThread<T>(T);

// SAFETY: `allow_threads` runs the closure on the current thread (pyo3 0.24: it releases the GIL
// around a plain call); the value is neither sent to nor shared with another thread.
unsafe impl<T> Send for OnThisThread<T> {}

impl<T> OnThisThread<T> {
    /// The value (a method, so that closures capture the whole wrapper, not its field).
    fn into_inner(self) -> T {
        self.0
    }
}

/// Runs `f` with the GIL released; a panic inside becomes `metaloop.Error`.
pub fn without_gil<R>(py: Python<'_>, f: impl FnOnce() -> R) -> PyResult<R> {
    let job = OnThisThread(f);
    let out = py.allow_threads(move || {
        let f = job.into_inner();
        OnThisThread(catch_unwind(AssertUnwindSafe(f)))
    });
    out.into_inner().map_err(panicked)
}

/// Runs `f` (with the GIL held); a panic inside becomes `metaloop.Error`.
pub fn guarded<R>(f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panicked(p)))
}

/// `metaloop.Error` for a panic's payload.
fn panicked(payload: Box<dyn Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    Error::new_err(format!("a bug in metaloop (a Rust panic): {message}"))
}

/// Panics with `message` inside [`without_gil`]: the test of this boundary
/// (python/tests/test_trainer_errors.py), since no input of metaloop's is known to panic.
#[pyfunction]
pub fn _panic_for_test(py: Python<'_>, message: String) -> PyResult<()> {
    without_gil(py, || panic!("{message}"))
}
