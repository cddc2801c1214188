//! `metaloop.Trainer`: the engine's Trainer from Python. `fit` with a run directory runs the
//! launcher's own training path (`metaloop train`'s run directory); `step`, `evaluate` and
//! `state_dict` are the engine's. The GIL is released while Rust works; Ctrl-C stops a fit at
//! the end of the current iteration (after its checkpoint, with a run directory) and raises
//! `KeyboardInterrupt`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use metaloop_engine::data::Split;
use metaloop_engine::fit::FitEnd;
use metaloop_engine::{Error as EngineError, Trainer as EngineTrainer};
use metaloop_launcher::errors::Interrupted;
use metaloop_launcher::progress::Terminal;
use metaloop_launcher::signals::StopSource;
use metaloop_launcher::train::train_in;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use tch::Tensor;

use crate::config::Config;
use crate::errors::{bad, from_anyhow, from_engine, Error, OrPy};
use crate::guard::{guarded, without_gil};
use crate::tasks::PyTasks;

/// POSIX's SIGINT: what a stop from Python's signal check counts as.
const SIGINT: i32 = 2;

/// The exception a Python task callable raised, kept for the Trainer to raise in its place.
type Failure = Option<Arc<Mutex<Option<PyErr>>>>;

/// Meta-trains the model of a config, on metaloop's engine.
#[pyclass(unsendable, module = "metaloop._native", name = "Trainer")]
pub struct Trainer {
    inner: Option<EngineTrainer>,
    failure: Failure,
}

#[pymethods]
impl Trainer {
    /// The Trainer of `config`; `tasks`, when given, is a callable
    /// `sample(split, iteration, index) -> (x_support, y_support, x_query, y_query)`.
    #[new]
    #[pyo3(signature = (config, tasks = None))]
    fn new(py: Python<'_>, config: &Config, tasks: Option<Py<PyAny>>) -> PyResult<Self> {
        guarded(|| {
            let cfg = config.cfg.clone();
            let source = match tasks {
                Some(t) => Some(PyTasks::probe(py, t, &cfg)?),
                None => None,
            };
            let failure = source.as_ref().map(PyTasks::failure);
            let built = without_gil(py, move || {
                let builder = EngineTrainer::builder(&cfg);
                match source {
                    Some(s) => builder.tasks(s).build(),
                    None => builder.build(),
                }
            })?;
            let inner = built.map_err(|e| fail(&failure, &e))?;
            Ok(Trainer {
                inner: Some(inner),
                failure,
            })
        })
    }

    /// Meta-trains to `outer.iterations`. With `run_dir`, writes the run directory that
    /// `metaloop train` writes (config, metrics, checkpoints, model, report, plots) and returns
    /// `{"run_dir": ..., "test": ...}`; without, returns None.
    #[pyo3(signature = (run_dir = None, progress = true))]
    fn fit(
        &mut self,
        py: Python<'_>,
        run_dir: Option<PathBuf>,
        progress: bool,
    ) -> PyResult<PyObject> {
        guarded(|| {
            let failure = self.failure.clone();
            let t = self.trainer()?;
            let stop = PyStop::default();
            let Some(dir) = run_dir else {
                return fit_here(py, t, &stop, progress, &failure);
            };
            let done = without_gil(py, || train_in(t, &dir, &stop, progress))?;
            match done {
                Ok(f) => {
                    let out = PyDict::new(py);
                    out.set_item("run_dir", f.run_dir.display().to_string())?;
                    out.set_item("test", json(py, &f.test)?)?;
                    Ok(out.into_any().unbind())
                }
                Err(e) => match e.downcast_ref::<Interrupted>() {
                    Some(i) => Err(stop.interrupt(py, i.to_string())),
                    None => Err(taken(&failure).unwrap_or_else(|| from_anyhow(e))),
                },
            }
        })
    }

    /// One meta-iteration; its metrics as a dict.
    fn step(&mut self, py: Python<'_>) -> PyResult<PyObject> {
        guarded(|| {
            let failure = self.failure.clone();
            let t = self.trainer()?;
            let m = without_gil(py, || t.step())?.map_err(|e| fail(&failure, &e))?;
            json(py, &m)
        })
    }

    /// Meta-tests (or validates) on `tasks` tasks of `split` ("train", "val" or "test"): a dict
    /// with the keys of report.json's `test`.
    #[pyo3(signature = (split = "test", tasks = 600))]
    fn evaluate(&mut self, py: Python<'_>, split: &str, tasks: usize) -> PyResult<PyObject> {
        guarded(|| {
            let split = match split {
                "train" => Split::Train,
                "val" => Split::Val,
                "test" => Split::Test,
                _ => {
                    return Err(bad(format!(
                        "split: must be one of \"train\", \"val\", \"test\", got \"{split}\""
                    )))
                }
            };
            if tasks == 0 {
                return Err(bad("tasks: must be >= 1, got 0"));
            }
            let failure = self.failure.clone();
            let t = self.trainer()?;
            let r =
                without_gil(py, || t.evaluate(split, tasks))?.map_err(|e| fail(&failure, &e))?;
            json(py, &r)
        })
    }

    /// θ0 as `{name: torch.Tensor}` (copies) under PyTorch's state_dict names.
    fn state_dict(&mut self, py: Python<'_>) -> PyResult<PyObject> {
        guarded(|| {
            let t = self.trainer()?;
            let out = PyDict::new(py);
            for (name, value) in t.model_params().iter() {
                out.set_item(name, PyTensor(value.detach().copy()))?;
            }
            Ok(out.into_any().unbind())
        })
    }

    /// metaloop's forward of θ0 on `x` (`[B, ...]`, one task's examples), without gradients and
    /// without dropout; BatchNorm normalises with the batch's statistics, as in training.
    fn forward(&mut self, py: Python<'_>, x: PyTensor) -> PyResult<PyTensor> {
        guarded(|| {
            let t = self.trainer()?;
            let x = x.0.shallow_clone();
            let out = without_gil(py, || -> metaloop_runtime::Result<Tensor> {
                let _no_grad = tch::no_grad_guard();
                let params = t.model_params();
                let x = x.f_to_device(t.device())?.f_to_kind(params.kind())?;
                t.model().forward(params, &x, false)
            })?;
            Ok(PyTensor(out.or_py()?))
        })
    }

    /// The outer iterations done.
    #[getter]
    fn iteration(&mut self) -> PyResult<u64> {
        Ok(self.trainer()?.iteration())
    }

    /// The Trainer's config.
    #[getter]
    fn config(&mut self) -> PyResult<Config> {
        Ok(Config {
            cfg: self.trainer()?.config().clone(),
        })
    }
}

impl Trainer {
    fn trainer(&mut self) -> PyResult<&mut EngineTrainer> {
        self.inner
            .as_mut()
            .ok_or_else(|| Error::new_err("this Trainer was dropped"))
    }
}

impl Drop for Trainer {
    /// Drops the engine's Trainer without the GIL: its prefetch thread may be waiting for the
    /// GIL to call a Python task source, and dropping joins that thread.
    fn drop(&mut self) {
        if let Some(t) = self.inner.take() {
            Python::with_gil(|py| {
                let _ = without_gil(py, move || drop(t));
            });
        }
    }
}

/// `Trainer::fit` without a run directory, with the launcher's progress display.
fn fit_here(
    py: Python<'_>,
    t: &mut EngineTrainer,
    stop: &PyStop,
    progress: bool,
    failure: &Failure,
) -> PyResult<PyObject> {
    let total = t.config().outer.iterations;
    let cadence = (total, t.iteration(), t.config().log.every);
    let max_skips = t.config().outer.max_nonfinite_skips;
    let end = without_gil(py, || {
        let mut terminal = Terminal::new(progress, cadence, max_skips, stop);
        let end = t.fit(None, &mut terminal);
        terminal.finish();
        end
    })?;
    match end.map_err(|e| fail(failure, &e))? {
        FitEnd::Finished => Ok(py.None()),
        FitEnd::Stopped { iteration, .. } => Err(stop.interrupt(
            py,
            format!("stopped after iteration {iteration} of {total}"),
        )),
    }
}

/// The Python task source's exception, if it raised one (taken: raised once).
fn taken(failure: &Failure) -> Option<PyErr> {
    failure
        .as_ref()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// The exception for an engine error: the task callable's own, when it raised one.
fn fail(failure: &Failure, e: &EngineError) -> PyErr {
    taken(failure).unwrap_or_else(|| from_engine(e))
}

/// `value` as a Python dict (through JSON).
fn json(py: Python<'_>, value: &impl serde::Serialize) -> PyResult<PyObject> {
    let text = serde_json::to_string(value).map_err(|e| Error::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// Stop requests from Python: its signal handlers run (`PyErr_CheckSignals`) between
/// iterations; one that raises (Ctrl-C's `KeyboardInterrupt`) asks the fit loop to stop.
#[derive(Default)]
struct PyStop {
    raised: Mutex<Option<PyErr>>,
}

impl StopSource for PyStop {
    fn received(&self) -> Option<i32> {
        let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.is_none() {
            *raised = Python::with_gil(|py| py.check_signals().err());
        }
        raised.as_ref().map(|_| SIGINT)
    }
}

impl PyStop {
    /// The exception that ends a stopped fit: `KeyboardInterrupt(message)` for Ctrl-C, or what
    /// another signal handler raised.
    fn interrupt(&self, py: Python<'_>, message: String) -> PyErr {
        match self.raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) if !e.is_instance_of::<PyKeyboardInterrupt>(py) => e,
            _ => PyKeyboardInterrupt::new_err(message),
        }
    }
}
