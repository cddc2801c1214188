//! `metaloop.Config`: a training config read as `metaloop train` reads it (the launcher's config
//! reader: TOML file, `--set`-style overrides, validation), with its one-line messages.

use std::path::PathBuf;

use metaloop_engine::config::TrainConfig;
use metaloop_launcher::config;
use metaloop_launcher::errors::io_words;
use metaloop_runtime::files::{read_text_bounded, MAX_TEXT_FILE};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::{bad, from_anyhow};
use crate::guard::guarded;

/// A validated training config (the defaults, or a TOML file), with overrides by dotted key.
#[pyclass(module = "metaloop._native", name = "Config")]
#[derive(Clone)]
pub struct Config {
    pub cfg: TrainConfig,
}

#[pymethods]
impl Config {
    /// The defaults (sinusoid regression, second-order MAML), with `overrides`
    /// (`{"outer.iterations": 300}`).
    #[new]
    #[pyo3(signature = (overrides = None))]
    fn new(overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        guarded(|| resolve("defaults", "", overrides))
    }

    /// The config file `path` (TOML, as for `metaloop train --config`) with `overrides`.
    #[staticmethod]
    #[pyo3(signature = (path, overrides = None))]
    fn load(path: PathBuf, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        guarded(|| {
            let text = read_text_bounded(&path, MAX_TEXT_FILE)
                .map_err(|e| PyOSError::new_err(format!("{}: {}", path.display(), io_words(&e))))?;
            resolve(&path.display().to_string(), &text, overrides)
        })
    }

    /// Every key of the config (defaults included) as JSON.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.cfg).map_err(|e| bad(e.to_string()))
    }

    /// Every key of the config (defaults included) as TOML, as `metaloop config show` prints it.
    fn to_toml(&self) -> PyResult<String> {
        config::show(&self.cfg).map_err(from_anyhow)
    }

    fn __repr__(&self) -> String {
        format!(
            "metaloop.Config(run.name={:?}, task.kind=\"{}\", model.backbone=\"{}\", algorithm.name=\"{}\", outer.iterations={})",
            self.cfg.run.name,
            self.cfg.task.kind,
            self.cfg.model.backbone,
            self.cfg.algorithm.name,
            self.cfg.outer.iterations
        )
    }
}

/// The config of `text` (from `origin`) with `overrides` applied as `--set key=value`.
fn resolve(origin: &str, text: &str, overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Config> {
    let mut sets = Vec::new();
    for (key, value) in overrides.into_iter().flat_map(|d| d.iter()) {
        let key: String = key.extract().map_err(|_| {
            bad(format!(
                "overrides: keys are dotted strings (e.g. \"outer.iterations\"), got {key}"
            ))
        })?;
        let value =
            toml_value(&value).map_err(|what| bad(format!("overrides[\"{key}\"]: {what}")))?;
        sets.push(format!("{key}={value}"));
    }
    let cfg = config::resolve(origin, text, &sets).map_err(from_anyhow)?;
    Ok(Config { cfg })
}

/// A Python value as a TOML value: bool, int, float, str, and lists (or tuples) of them.
fn toml_value(v: &Bound<'_, PyAny>) -> Result<toml::Value, String> {
    if v.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(
            v.extract().map_err(|e| format!("{e}"))?,
        ));
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{v} does not fit in 64 bits"));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(v.extract().map_err(|e| format!("{e}"))?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(
            v.extract().map_err(|e| format!("{e}"))?,
        ));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = v.extract().map_err(|e| format!("{e}"))?;
        return items
            .iter()
            .map(toml_value)
            .collect::<Result<_, _>>()
            .map(toml::Value::Array);
    }
    let ty = v
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    Err(format!(
        "expected a bool, int, float, str or list, got {ty}"
    ))
}
