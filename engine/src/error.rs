//! The engine's error type: every fallible engine call returns `Result<T, Error>`.
//!
//! Variants name the file, key or setting involved and what was expected, so a failure explains
//! itself without a debugger. Nothing here panics or prints.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong in the engine.
#[derive(Debug, Error)]
pub enum Error {
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error raised by the runtime (parameters, inner loop, communication).
    #[error("{0}")]
    Runtime(#[from] metaloop_runtime::Error),

    // training
    /// A configuration value out of range: the dotted key and what is allowed.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// A resume state that does not fit the model or the run.
    #[error("resume state: {0}")]
    State(String),
    /// Too many outer steps in a row had a NaN or Inf in the meta-gradient or an inner loop.
    #[error("iteration {iteration}: {skips} outer steps in a row skipped for non-finite values (outer.max_nonfinite_skips); last tasks involved: {tasks:?}")]
    NonFinite {
        iteration: u64,
        skips: u32,
        tasks: Vec<usize>,
    },
    /// The meta-parameters differ between ranks: the ranks no longer train the same model.
    #[error("iteration {iteration}: meta-parameters differ across ranks (checksum of rank 0: {expected:e}; ranks that differ: {ranks:?})")]
    RankMismatch {
        iteration: u64,
        expected: f64,
        ranks: Vec<usize>,
    },
    /// A device that is not there (e.g. `cuda` on a machine without CUDA).
    #[error("run.device: {0}")]
    Device(String),

    // data
    /// A dataset directory (or its zip) that is not there.
    #[error("{dataset}: {path}: no such directory{hint}")]
    MissingDirectory {
        dataset: &'static str,
        path: PathBuf,
        /// Extra words such as " (nor images_background.zip beside it)"; empty if none.
        hint: String,
    },
    /// A file the dataset layout requires (e.g. miniImageNet's `train.csv`) that is not there.
    #[error("{dataset}: {path}: no such file")]
    MissingFile {
        dataset: &'static str,
        path: PathBuf,
    },
    /// A folder that must hold images or class folders but holds none.
    #[error("{what} folder {path} is empty (expected {expected})")]
    EmptyFolder {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    /// A file or zip entry that could not be read or decoded as an image.
    #[error("{path}: unreadable image: {reason}")]
    UnreadableImage { path: String, reason: String },
    /// An image whose size the dataset does not allow.
    #[error("{path}: {width}×{height} image, expected {expected}")]
    ImageSize {
        path: String,
        width: u32,
        height: u32,
        expected: String,
    },
    /// A CSV file whose first line is not the expected header.
    #[error("{dataset}: {path}: header is {found:?}, expected {expected:?}")]
    CsvHeader {
        dataset: &'static str,
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// A CSV row that is not `filename,label`.
    #[error("{dataset}: {path} line {line}: {found:?} is not `filename,label`")]
    CsvRow {
        dataset: &'static str,
        path: PathBuf,
        line: usize,
        found: String,
    },
    /// A CSV row naming an image that is not on disk.
    #[error("{dataset}: {csv} line {line} names {file}, which does not exist")]
    CsvMissingImage {
        dataset: &'static str,
        csv: PathBuf,
        line: usize,
        file: String,
    },
    /// A Python pickle (CIFAR-100, tieredImageNet) that cannot be read or does not hold what the
    /// dataset layout says.
    #[error("{path}: {reason}")]
    Pickle { path: PathBuf, reason: String },
    /// A zip archive that cannot be opened or read.
    #[error("{path}: zip archive: {reason}")]
    Zip { path: PathBuf, reason: String },
    /// A file or directory that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The on-disk decode cache could not be written or read back.
    #[error("decode cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
    /// A dataset too small for the split it was asked to make (e.g. fewer characters than the
    /// meta-training split needs).
    #[error("{dataset}: {reason}")]
    DatasetSplit {
        dataset: &'static str,
        reason: String,
    },
    /// A split the dataset was not given (e.g. a folder dataset without a `val` folder).
    #[error("{dataset}: no {split} split")]
    NoSplit {
        dataset: &'static str,
        split: crate::data::Split,
    },
    /// A CSV row whose file name is a path rather than a plain name inside `images/`.
    #[error("{dataset}: {path} line {line}: {file:?} is not a plain file name inside images/")]
    CsvPath {
        dataset: &'static str,
        path: PathBuf,
        line: usize,
        file: String,
    },
    /// An episode asks for more classes than the split has.
    #[error("{dataset}: the {split} split has {classes} classes, an episode needs {ways} (ways)")]
    TooFewClasses {
        dataset: &'static str,
        split: crate::data::Split,
        classes: usize,
        ways: usize,
    },
    /// An episode asks for more images of a class than the class has.
    #[error(
        "{dataset}: class {class} has {images} images, an episode needs {needed} (shots + queries)"
    )]
    TooFewImages {
        dataset: &'static str,
        class: String,
        images: usize,
        needed: usize,
    },
    /// An episode or task setting out of range (zero ways, zero points, ...).
    #[error("{what}: {reason}")]
    InvalidSetting { what: &'static str, reason: String },
    /// The prefetch thread stopped (it panicked, or its source failed earlier).
    #[error("prefetch: {0}")]
    Prefetch(String),

    // run directory and checkpoints
    /// A checkpoint that cannot be used: truncated, corrupt, or not matching its manifest.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A checkpoint directory that holds checkpoints, none of them usable.
    #[error("{dir}: no usable checkpoint: {reasons}")]
    NoUsableCheckpoint { dir: PathBuf, reasons: String },
    /// A run directory that already exists where a new run would be created.
    #[error("{path}: run directory already exists (continue it with --resume, or choose another run.name)")]
    RunDirExists { path: PathBuf },
    /// A run directory whose parent (`run.out_dir`) names a file, not a folder.
    #[error("{path}: is a file; run.out_dir must name a folder (or a path to make one)")]
    OutDirNotDirectory { path: PathBuf },
    /// A run directory that is not one, or a file of it that cannot be written.
    #[error("{path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    /// A run directory that another process (a train, resume or eval) is using.
    #[error(
        "{path}: run directory in use by {holder} (wait for it to end, or choose another run.name)"
    )]
    RunDirBusy { path: PathBuf, holder: String },
}

impl Error {
    /// True when the error comes from the user's input (config, device choice, datasets,
    /// checkpoints, run directory) and the command should exit with code 2; false for failures
    /// of the machine or of the training itself (exit code 1). Every variant is listed: a new
    /// one must be placed on one side.
    pub fn is_user_input(&self) -> bool {
        use Error::*;
        match self {
            Config(_)
            | Device(_)
            | State(_)
            | MissingDirectory { .. }
            | MissingFile { .. }
            | EmptyFolder { .. }
            | UnreadableImage { .. }
            | ImageSize { .. }
            | CsvHeader { .. }
            | CsvRow { .. }
            | CsvMissingImage { .. }
            | CsvPath { .. }
            | Zip { .. }
            | DatasetSplit { .. }
            | NoSplit { .. }
            | TooFewClasses { .. }
            | TooFewImages { .. }
            | InvalidSetting { .. }
            | Checkpoint { .. }
            | NoUsableCheckpoint { .. }
            | RunDirExists { .. }
            | RunDirBusy { .. }
            | OutDirNotDirectory { .. }
            | Pickle { .. }
            | Runtime(metaloop_runtime::Error::StartingWeights { .. }) => true,
            Torch(_)
            | Runtime(_)
            | NonFinite { .. }
            | RankMismatch { .. }
            | Io { .. }
            | Cache { .. }
            | Prefetch(_)
            | RunDir { .. } => false,
        }
    }
}

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
