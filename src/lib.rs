//! metaloop: distributed, differentiable inner-loop meta-learning on libtorch.
//!
//! This facade re-exports the runtime (`metaloop::runtime`) and the engine (`metaloop::engine`).

pub use metaloop_engine as engine;
pub use metaloop_runtime as runtime;
