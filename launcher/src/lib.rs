//! The `metaloop` command's modules, as a library: the binary (main.rs) parses arguments and
//! dispatches here, and the Python package (python/) trains through the same code path
//! ([`train::train_in`]), so that a run directory written from Python is the one `metaloop train`
//! writes.

pub mod bench;
pub mod communicator;
pub mod compare;
pub mod config;
pub mod data_cmd;
pub mod errors;
pub mod eval;
pub mod launch;
pub mod plot;
pub mod plot_adaptation;
pub mod plot_cmd;
pub mod plot_predictions;
pub mod progress;
pub mod provenance;
pub mod report;
pub mod restart;
pub mod signals;
pub mod start;
pub mod train;
