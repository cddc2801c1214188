//! Tasks from Python: a callable `sample(split, iteration, index) -> (x_support, y_support,
//! x_query, y_query)` as the engine's `TaskSource`. The Trainer stacks its tasks into meta-batches
//! as it stacks its own; its prefetch thread calls the callable with the GIL held.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use metaloop_engine::config::{TaskKind, TrainConfig};
use metaloop_engine::data::{Episode, MetaBatch, Split, TaskSource};
use metaloop_engine::Error as EngineError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Device;

use crate::errors::bad;

/// A Python callable as a task source. Its tasks must be a pure function of (split, iteration,
/// index), as every task source's are.
pub struct PyTasks {
    sample: Py<PyAny>,
    input_shape: Vec<i64>,
    outputs: usize,
    /// The exception the callable raised, kept for the Trainer to raise in its place.
    failure: Arc<Mutex<Option<PyErr>>>,
}

impl PyTasks {
    /// Wraps `sample`, calling it once (train, iteration 0, task 0) to learn the input shape and
    /// to check it against `cfg` (`task.image_size` for images).
    pub fn probe(py: Python<'_>, sample: Py<PyAny>, cfg: &TrainConfig) -> PyResult<PyTasks> {
        if !sample.bind(py).is_callable() {
            return Err(bad(
                "tasks: expected a callable sample(split, iteration, index)",
            ));
        }
        let first = call(py, &sample, Split::Train, 0, 0)?;
        let shape = first.support_x.size();
        if shape.len() < 2 {
            return Err(bad(format!(
                "tasks: x_support must be [examples, features...], got shape {shape:?}"
            )));
        }
        let input_shape = shape[1..].to_vec();
        let regression = cfg.task.kind == TaskKind::Sinusoid;
        if !regression && input_shape.len() == 3 && input_shape[1] != cfg.task.image_size {
            return Err(bad(format!(
                "task.image_size: the task callable's images are {}×{}: must be {}, got {}",
                input_shape[1], input_shape[2], input_shape[1], cfg.task.image_size
            )));
        }
        let outputs = if regression {
            first.support_y.size().last().copied().unwrap_or(1) as usize
        } else {
            cfg.task.ways as usize
        };
        Ok(PyTasks {
            sample,
            input_shape,
            outputs,
            failure: Arc::default(),
        })
    }

    /// Where the exception of a failed call is kept.
    pub fn failure(&self) -> Arc<Mutex<Option<PyErr>>> {
        self.failure.clone()
    }
}

/// One task from the callable, detached, on the CPU.
fn call(
    py: Python<'_>,
    sample: &Py<PyAny>,
    split: Split,
    iteration: u64,
    index: usize,
) -> PyResult<Episode> {
    let out = sample.call1(py, (split.name(), iteration, index))?;
    let (sx, sy, qx, qy): (PyTensor, PyTensor, PyTensor, PyTensor) =
        out.extract(py).map_err(|_| {
            bad("tasks: the callable must return (x_support, y_support, x_query, y_query), four torch tensors")
        })?;
    let cpu = |t: PyTensor| t.0.detach().to_device(Device::Cpu);
    Ok(Episode {
        support_x: cpu(sx),
        support_y: cpu(sy),
        query_x: cpu(qx),
        query_y: cpu(qy),
    })
}

impl TaskSource for PyTasks {
    fn meta_batch(
        &self,
        _seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> metaloop_engine::Result<MetaBatch> {
        let episodes = Python::with_gil(|py| {
            tasks
                .clone()
                .map(|i| call(py, &self.sample, split, iteration, i))
                .collect::<PyResult<Vec<_>>>()
        });
        match episodes {
            Ok(e) => MetaBatch::stack(&e, iteration, tasks),
            Err(err) => {
                let message = format!("the task callable failed: {err}");
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                Err(EngineError::State(message))
            }
        }
    }

    fn input_shape(&self) -> Vec<i64> {
        self.input_shape.clone()
    }

    fn num_outputs(&self) -> usize {
        self.outputs
    }
}
