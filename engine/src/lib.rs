//! metaloop-engine: MAML-family algorithms, tasks and datasets, the meta-training loop.
//!
//! It builds on the runtime's InnerLoop and never parses command-line arguments or prints to
//! the terminal: the launcher does both.

pub mod adaptation;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod rundir;
pub mod tensorboard;
pub mod train;
pub mod workers;

pub use error::{Error, Result};
