//! `InnerLoop`: the runtime's differentiable inner loop for `metaloop.innerloop_ctx`. The Python
//! side hands over the module's parameters (names, shapes, one flat tensor), the optimizer's
//! hyperparameters and state; every step's update runs in `metaloop_runtime::InnerLoop`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use metaloop_runtime::nn::{Module, ParamDef, Scope};
use metaloop_runtime::optim::OptState;
use metaloop_runtime::{Error as RtError, InnerLoop as RtInnerLoop, Layout, Params, StepOptions};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Tensor;

use crate::errors::{bad, OrPy};
use crate::guard::guarded;
use crate::model;

/// The inner loop's model when the forward runs in Python (`torch.func.functional_call`): the
/// runtime then only takes the optimizer steps, which need no model.
#[derive(Debug)]
struct PythonForward;

static PYTHON_FORWARD: PythonForward = PythonForward;

impl Module for PythonForward {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _: &mut Scope<'_>, x: &Tensor) -> metaloop_runtime::Result<Tensor> {
        Err(RtError::Shape {
            op: "InnerLoop::forward",
            expected: "a native model (this one runs its forward in Python)".into(),
            got: x.size(),
        })
    }
}

/// A differentiable inner loop over flat parameters (see the module documentation).
#[pyclass(unsendable, module = "metaloop._native")]
pub struct InnerLoop {
    inner: RtInnerLoop<'static>,
    /// The runtime's module, when the model is built of layers the runtime has.
    native: Option<Box<dyn Module>>,
}

/// Calls the Python `callback` on the flat gradient `g` (taking the GIL); a Python exception is
/// kept in `failure` and the step fails.
fn call_back(
    callback: &PyObject,
    g: &Tensor,
    failure: &RefCell<Option<PyErr>>,
) -> metaloop_runtime::Result<Tensor> {
    let out = Python::with_gil(|py| {
        callback
            .call1(py, (PyTensor(g.shallow_clone()),))
            .and_then(|o| o.extract::<PyTensor>(py))
    });
    out.map(|t| t.0).map_err(|e| {
        *failure.borrow_mut() = Some(e);
        RtError::Shape {
            op: "grad_callback",
            expected: "a list of gradients shaped like the parameters".into(),
            got: g.size(),
        }
    })
}

/// The starting optimizer state: torch's step count and buffers by torch's names.
type StartState = Option<(i64, Vec<(String, PyTensor)>)>;

#[pymethods]
impl InnerLoop {
    /// `names`/`shapes`: the parameters in order; `flat`: their values, `[P]`; `optimizer`:
    /// torch.optim's class name with `hparams` (constants) and `options`; `overrides`: tensors
    /// `[]` or `[P]` per hyperparameter; `frozen`: parameters no step updates; `state`: the
    /// optimizer's state to start from; `model`: the JSON description of a native model.
    #[new]
    #[pyo3(signature = (names, shapes, flat, optimizer, hparams, options, overrides, frozen, state, copy_initial_weights, track_higher_grads, model=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        names: Vec<String>,
        shapes: Vec<Vec<i64>>,
        flat: PyTensor,
        optimizer: &str,
        hparams: HashMap<String, f64>,
        options: HashMap<String, bool>,
        overrides: Vec<(String, PyTensor)>,
        frozen: Vec<String>,
        state: StartState,
        copy_initial_weights: bool,
        track_higher_grads: bool,
        model: Option<&str>,
    ) -> PyResult<Self> {
        guarded(|| {
            if names.len() != shapes.len() {
                return Err(bad("names and shapes differ in length"));
            }
            let defs = names.iter().zip(&shapes).map(|(n, s)| {
                ParamDef::new(n.clone(), s, metaloop_runtime::nn::Init::Constant(0.0))
            });
            let layout = Arc::new(Layout::new(defs).or_py()?);
            let params = Params::from_flat(layout, flat.0).or_py()?;
            let native = model.map(model::build).transpose()?;
            if let Some(m) = &native {
                model::check_layout(m.as_ref(), &names, &shapes)?;
            }
            let opt = crate::optim::build(optimizer, &hparams, &options)?;
            let mut builder = RtInnerLoop::with_boxed(&PYTHON_FORWARD, &params, opt)
                .copy_initial_weights(copy_initial_weights)
                .track_higher_grads(track_higher_grads)
                .freeze(&frozen);
            for (name, value) in &overrides {
                builder = builder.override_hparam(name, &value.0);
            }
            if let Some((step, buffers)) = state {
                let buffers = buffers.into_iter().map(|(n, t)| (n, t.0)).collect();
                builder = builder.initial_state(OptState::new(step, buffers));
            }
            Ok(InnerLoop {
                inner: builder.build().or_py()?,
                native,
            })
        })
    }

    /// True when the forward runs natively (the runtime's layers).
    #[getter]
    fn native(&self) -> bool {
        self.native.is_some()
    }

    /// Steps taken so far.
    #[getter]
    fn time(&self) -> usize {
        self.inner.time()
    }

    /// The flat parameters at `time` (the latest when None).
    #[pyo3(signature = (time=None))]
    fn params(&self, time: Option<usize>) -> PyResult<PyTensor> {
        guarded(|| {
            let params = match time {
                None => self.inner.params(),
                Some(t) => self.inner.params_at(t).or_py()?,
            };
            Ok(PyTensor(params.flat().shallow_clone()))
        })
    }

    /// The native model at the latest parameters; `seed` draws dropout masks in training.
    #[pyo3(signature = (x, train, seed=None))]
    fn forward(&self, x: PyTensor, train: bool, seed: Option<u64>) -> PyResult<PyTensor> {
        guarded(|| {
            let model = self
                .native
                .as_ref()
                .ok_or_else(|| bad("this model runs its forward in Python"))?;
            let params = self.inner.params();
            let seeds = seed.map(|s| vec![s]);
            let y = match &seeds {
                Some(seeds) => model.forward_seeded(params, &x.0, train, None, seeds),
                None => model.forward(params, &x.0, train),
            };
            Ok(PyTensor(y.or_py()?))
        })
    }

    /// One differentiable step on `loss`, with `overrides` in force from this step on and
    /// `grad_callback` (flat gradient to flat gradient) applied before the update. The GIL is
    /// released: PyTorch's autograd engine runs the step's gradient.
    #[pyo3(signature = (loss, overrides, grad_callback=None))]
    fn step(
        &mut self,
        py: Python<'_>,
        loss: PyTensor,
        overrides: Vec<(String, PyTensor)>,
        grad_callback: Option<PyObject>,
    ) -> PyResult<()> {
        guarded(|| {
            let inner = &mut self.inner;
            let (result, failure) = py.allow_threads(move || {
                let failure: RefCell<Option<PyErr>> = RefCell::new(None);
                let mut options = StepOptions::new();
                for (name, value) in &overrides {
                    options = options.override_hparam(name, &value.0);
                }
                if let Some(callback) = &grad_callback {
                    options = options.try_grad_callback(|g| call_back(callback, g, &failure));
                }
                let result = inner.step_with(&loss.0, options);
                (result, failure.into_inner())
            });
            match failure {
                Some(e) => Err(e),
                None => result.or_py(),
            }
        })
    }

    /// The optimizer state after the latest step: `(step, [(buffer name, tensor), ...])`.
    fn state(&self) -> (i64, Vec<(String, PyTensor)>) {
        let state = self.inner.optimizer_state();
        let buffers = state
            .tensors()
            .map(|(n, t)| (n.to_string(), PyTensor(t.shallow_clone())))
            .collect();
        (state.step(), buffers)
    }
}
