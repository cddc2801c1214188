//! metaloop-engine: MAML-family algorithms, tasks and datasets, the Trainer and its fit loop.
//!
//! It builds on the runtime's InnerLoop and never parses command-line arguments or prints to
//! the terminal: the launcher does both.
//!
//! Training a config without the command line:
//!
//! ```no_run
//! use metaloop_engine::{config::TrainConfig, data::Split, train::Trainer};
//! # fn main() -> metaloop_engine::Result<()> {
//! let mut cfg = TrainConfig::default(); // sinusoid regression, second-order MAML
//! cfg.outer.iterations = 1000;
//! let mut trainer = Trainer::builder(&cfg).build()?;
//! trainer.fit(None, &mut ())?; // Some(&mut run_dir) logs and checkpoints
//! let report = trainer.evaluate(Split::Test, 600)?;
//! # let _ = report;
//! # Ok(())
//! # }
//! ```

pub mod adaptation;
pub mod algorithms;
pub mod atomic;
pub mod bench;
pub mod budget;
pub mod checkpoint;
mod chunks;
pub mod config;
mod config_hash;
pub mod data;
mod error;
pub mod evaluate;
pub mod exact;
mod feed;
pub mod fit;
mod host;
pub mod loss;
pub mod memory;
pub mod meta_params;
pub mod model_file;
mod net;
mod outer;
pub mod outer_options;
pub mod plan;
mod planner;
pub mod predictions;
mod protocol;
pub mod ranks;
mod reduce;
pub mod report;
pub mod resume;
pub mod rundir;
pub mod running;
mod schedule;
pub mod selection;
pub mod setup;
mod tensor_file;
pub mod tensorboard;
pub mod train;
pub mod workers;

pub use error::{Error, Result};
pub use fit::{FitEnd, Observer};
pub use train::{Trainer, TrainerBuilder};
