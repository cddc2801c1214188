//! metaloop-runtime: the differentiable inner-loop core of metaloop.
//!
//! It holds parameters in flat tensors, runs functional layers on them, takes differentiable
//! optimizer steps, and exchanges meta-gradients between ranks (`comm`). It knows nothing of
//! datasets, configs, files of a run or the command line; it never prints.

#[macro_use]
mod inner_core;
pub mod adjoint;
pub mod comm;
pub mod device_memory;
mod error;
pub mod files;
pub mod host_memory;
mod inner;
pub mod kernels;
pub mod nn;
pub mod optim;
mod params;
pub mod precision;
mod setters;

pub use error::{Error, Result};
pub use inner::{GradCallback, InnerLoop, InnerLoopBuilder, StepOptions};
pub use params::{Layout, ParamSpec, Params};
pub use tch::{Device, Kind, Tensor};
