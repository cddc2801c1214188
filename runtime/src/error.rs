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
    /// A parameter name that the model does not have.
    #[error("unknown parameter `{name}` (the model has: {known})")]
    UnknownParam { name: String, known: String },
    /// A hyperparameter name that the optimizer does not have.
    #[error("{optimizer}: unknown hyperparameter `{name}` (allowed: {allowed})")]
    UnknownHparam {
        optimizer: &'static str,
        name: String,
        allowed: String,
    },
    /// An optimizer state holding a buffer that the optimizer does not keep (a misspelt or
    /// foreign name, e.g. from another optimizer's checkpoint).
    #[error("{optimizer}: unknown state buffer `{name}` (allowed: {allowed})")]
    OptState {
        optimizer: &'static str,
        name: String,
        allowed: String,
    },
    /// A hyperparameter override whose shape is none of `[]`, `[1]`, `[G]` or `[P]`.
    #[error("hyperparameter `{name}`: shape {got:?} is none of [], [1], [{groups}] (one per parameter) or [{numel}] (one per element)")]
    HparamShape {
        name: String,
        got: Vec<i64>,
        groups: i64,
        numel: i64,
    },
    /// A time index past the steps taken so far.
    #[error("params_at({requested}): only times 0..={latest} exist")]
    TimeOutOfRange { requested: usize, latest: usize },
    /// History asked for while `track_higher_grads(false)` keeps only the latest parameters.
    #[error("params_at({requested}): parameter history is not kept with track_higher_grads(false); only the latest time {latest} exists")]
    HistoryNotTracked { requested: usize, latest: usize },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A safetensors file that is malformed or does not fit the model.
    #[error("{path}: {message}")]
    Safetensors {
        path: std::path::PathBuf,
        message: String,
    },
    /// A starting-weights file (`nn::load_starting_weights`) that does not fit the model: the
    /// tensor and what is wrong with it. Bad user input, not a bug.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    StartingWeights {
        path: std::path::PathBuf,
        tensor: String,
        reason: String,
    },
    /// A communication (MPI or NCCL) call failed or was misused.
    #[error("comm: {0}")]
    Comm(String),
    /// A parameter layout that cannot be built: a duplicate name or a negative dimension.
    #[error("layout: {0}")]
    Layout(String),
    /// NCCL cannot run on this rank: no library, no CUDA driver, or no such device.
    #[error("NCCL not available: {0}")]
    NcclUnavailable(String),
    /// libtorch refused to report a device statistic or to set a device-wide switch
    /// (runtime::device_memory, runtime::precision).
    #[error("device: {0}")]
    Device(String),
    /// A fused optimizer kernel could not run (runtime::kernels): the shim's or the kernel's
    /// message, with the optimizer's name.
    #[error("fused {optimizer} step: {message}")]
    Kernel {
        optimizer: &'static str,
        message: String,
    },
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
