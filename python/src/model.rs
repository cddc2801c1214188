//! A PyTorch module made of layers the runtime has, described by the Python side as JSON
//! (metaloop/_native_model.py), as one of the runtime's functional, task-batched modules.

use metaloop_runtime::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, LeakyRelu, Linear,
    MaxPool2d, Module, ParamDef, Relu, Scope, Sequential, Tanh,
};
use metaloop_runtime::Result as RtResult;
use pyo3::prelude::*;
use serde_json::Value;
use tch::Tensor;

use crate::errors::{bad, OrPy};

/// A boxed module as a module (the runtime's `Sequential` takes sized children).
#[derive(Debug)]
struct Boxed(Box<dyn Module>);

impl Module for Boxed {
    fn param_defs(&self) -> Vec<ParamDef> {
        self.0.param_defs()
    }
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> RtResult<Tensor> {
        self.0.forward_scoped(scope, x)
    }
}

/// The module that `spec` (JSON) describes.
pub fn build(spec: &str) -> PyResult<Box<dyn Module>> {
    let value: Value =
        serde_json::from_str(spec).map_err(|e| bad(format!("model description: {e}")))?;
    layer(&value)
}

/// The parameter names and shapes of the module that `spec` describes, in order.
#[pyfunction]
pub fn native_layout(spec: &str) -> PyResult<Vec<(String, Vec<i64>)>> {
    let layout = build(spec)?.layout().or_py()?;
    Ok(layout
        .specs()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect())
}

fn layer(v: &Value) -> PyResult<Box<dyn Module>> {
    let kind = v["type"].as_str().unwrap_or("");
    let int = |key: &str| {
        v[key]
            .as_i64()
            .ok_or_else(|| bad(format!("{kind}: `{key}` must be an integer")))
    };
    let float = |key: &str| {
        v[key]
            .as_f64()
            .ok_or_else(|| bad(format!("{kind}: `{key}` must be a number")))
    };
    let bias = v["bias"].as_bool().unwrap_or(true);
    Ok(match kind {
        "sequential" => {
            let children = v["children"]
                .as_array()
                .ok_or_else(|| bad("sequential: `children` must be a list"))?;
            let mut seq = Sequential::new();
            for child in children {
                seq = seq.push(Boxed(layer(child)?));
            }
            Box::new(seq)
        }
        "linear" => {
            let l = Linear::new(int("in")?, int("out")?);
            Box::new(if bias { l } else { l.no_bias() })
        }
        "conv2d" => {
            let c = Conv2d::new(int("in")?, int("out")?, int("kernel")?)
                .stride(int("stride")?)
                .padding(int("padding")?);
            Box::new(if bias { c } else { c.no_bias() })
        }
        "batchnorm2d" => Box::new(
            BatchNorm2d::new(int("channels")?)
                .eps(float("eps")?)
                .momentum(float("momentum")?),
        ),
        "relu" => Box::new(Relu),
        "tanh" => Box::new(Tanh),
        "leaky_relu" => Box::new(LeakyRelu::new(float("slope")?)),
        "flatten" => Box::new(Flatten),
        "maxpool2d" => Box::new(MaxPool2d::new(int("kernel")?).stride(int("stride")?)),
        "avgpool2d" => Box::new(
            AvgPool2d::new(int("kernel")?)
                .stride(int("stride")?)
                .padding(int("padding")?),
        ),
        "adaptive_avgpool2d" => Box::new(AdaptiveAvgPool2d::sized(int("height")?, int("width")?)),
        "dropout" => Box::new(Dropout::new(float("p")?).or_py()?),
        other => return Err(bad(format!("no native layer `{other}`"))),
    })
}

/// Checks that `module`'s parameters are `names` with `shapes`, in order.
pub fn check_layout(module: &dyn Module, names: &[String], shapes: &[Vec<i64>]) -> PyResult<()> {
    let layout = module.layout().or_py()?;
    let got: Vec<(&str, &[i64])> = layout
        .specs()
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let want: Vec<(&str, &[i64])> = names
        .iter()
        .map(String::as_str)
        .zip(shapes.iter().map(Vec::as_slice))
        .collect();
    if got != want {
        return Err(bad(format!(
            "the native model's parameters {got:?} differ from the module's {want:?}"
        )));
    }
    Ok(())
}
