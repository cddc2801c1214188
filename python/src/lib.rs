//! `metaloop._native`: metaloop's runtime for Python. The Python package (metaloop/) builds on it:
//! `innerloop_ctx` (higher's API) runs its differentiable optimizer steps here, on
//! `metaloop_runtime::InnerLoop`, with tensors shared with PyTorch (no copies: pyo3-tch); `Config`
//! and `Trainer` are the launcher's config reader and the engine's Trainer.

mod config;
mod errors;
mod guard;
mod inner;
mod model;
mod optim;
mod tasks;
mod trainer;

use pyo3::prelude::*;

/// The libtorch version this extension was built against (torch-sys's).
const TORCH_VERSION: &str = "2.11.0";

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<errors::Error>())?;
    m.add("TORCH_VERSION", TORCH_VERSION)?;
    m.add_class::<inner::InnerLoop>()?;
    m.add_class::<config::Config>()?;
    m.add_class::<trainer::Trainer>()?;
    m.add_function(wrap_pyfunction!(guard::_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(model::native_layout, m)?)?;
    Ok(())
}
