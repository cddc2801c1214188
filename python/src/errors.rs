//! Rust errors as Python exceptions: bad input raises `ValueError`, files `OSError`, anything
//! else `metaloop.Error` with the Rust error's message.

use metaloop_engine::Error as EngineError;
use metaloop_launcher::errors::BadInput;
use metaloop_runtime::Error as RtError;
use pyo3::exceptions::{PyFileExistsError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    metaloop,
    Error,
    PyRuntimeError,
    "An error of metaloop's runtime (libtorch, a kernel, communication)."
);

/// The Python exception for a runtime error.
pub fn to_py(e: RtError) -> PyErr {
    runtime_ref(&e)
}

/// The Python exception for a runtime error, by reference (inside an engine error).
fn runtime_ref(e: &RtError) -> PyErr {
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

/// The Python exception for an engine error: files raise `OSError`, the user's input
/// `ValueError`, the rest `metaloop.Error`.
pub fn from_engine(e: &EngineError) -> PyErr {
    use EngineError::*;
    let message = e.to_string();
    match e {
        Runtime(r) => runtime_ref(r),
        RunDirExists { .. } => PyFileExistsError::new_err(message),
        Io { .. }
        | MissingFile { .. }
        | MissingDirectory { .. }
        | Cache { .. }
        | OutDirNotDirectory { .. } => PyOSError::new_err(message),
        _ if e.is_user_input() => PyValueError::new_err(message),
        _ => Error::new_err(message),
    }
}

/// The Python exception for an error of the launcher's code: its bad input (one line) raises
/// `ValueError`; an engine, runtime or file error as above; the rest `metaloop.Error`.
pub fn from_anyhow(e: anyhow::Error) -> PyErr {
    if let Some(b) = e.downcast_ref::<BadInput>() {
        return PyValueError::new_err(b.0.clone());
    }
    if let Some(engine) = e.downcast_ref::<EngineError>() {
        return from_engine(engine);
    }
    if let Some(rt) = e.downcast_ref::<RtError>() {
        return runtime_ref(rt);
    }
    if e.downcast_ref::<std::io::Error>().is_some() {
        return PyOSError::new_err(format!("{e:#}"));
    }
    Error::new_err(format!("{e:#}"))
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
