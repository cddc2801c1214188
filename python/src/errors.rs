//! Rust errors as Python exceptions: bad input raises `ValueError`, files `OSError`, anything
//! else `metaloop.Error` with the Rust error's message.

use metaloop_runtime::Error as RtError;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    metaloop,
    Error,
    PyRuntimeError,
    "An error of metaloop's runtime (libtorch, a kernel, communication)."
);

/// The Python exception for a runtime error.
pub fn to_py(e: RtError) -> PyErr {
    let message = e.to_string();
    match e {
        RtError::Io { .. } => PyOSError::new_err(message),
        RtError::Shape { .. }
        | RtError::Kind { .. }
        | RtError::UnknownParam { .. }
        | RtError::UnknownHparam { .. }
        | RtError::OptState { .. }
        | RtError::HparamShape { .. }
        | RtError::TimeOutOfRange { .. }
        | RtError::HistoryNotTracked { .. }
        | RtError::Layout(_)
        | RtError::Safetensors { .. }
        | RtError::StartingWeights { .. } => PyValueError::new_err(message),
        _ => Error::new_err(message),
    }
}

/// `ValueError(message)`: bad input found by the bindings themselves.
pub fn bad(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// Maps a runtime result to a Python one.
pub trait OrPy<T> {
    fn or_py(self) -> Result<T, PyErr>;
}

impl<T> OrPy<T> for Result<T, RtError> {
    fn or_py(self) -> Result<T, PyErr> {
        self.map_err(to_py)
    }
}

impl<T> OrPy<T> for Result<T, tch::TchError> {
    fn or_py(self) -> Result<T, PyErr> {
        self.map_err(|e| to_py(RtError::Torch(e)))
    }
}
