//! The runtime's error type: every fallible runtime call returns `Result<T, Error>`.

use thiserror::Error;

/// What can go wrong in the runtime. Variants name the operation and the values involved.
#[derive(Debug, Error)]
pub enum Error {
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A tensor had a shape other than the one the operation expects.
    #[error("{op}: expected shape {expected}, got {got:?}")]
    Shape {
        op: &'static str,
        expected: String,
        got: Vec<i64>,
    },
    /// A tensor had an element kind the operation does not support.
    #[error("{op}: unsupported dtype {kind:?} (expected {expected})")]
    Kind {
        op: &'static str,
        kind: tch::Kind,
        expected: &'static str,
    },
    /// A communication (MPI or NCCL) call failed or was misused.
    #[error("comm: {0}")]
    Comm(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
