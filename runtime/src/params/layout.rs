//! A model's parameter layout: each parameter's name, shape, init and place in the flat buffer.
//! It holds no tensor.

use std::collections::HashMap;

use crate::{Error, Result};

/// How a parameter is drawn by [`Params::init_layout`](super::Params::init_layout).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform on `[-bound, bound)`. PyTorch's default for Linear and Conv2d: weights use
    /// `kaiming_uniform_(a = sqrt(5))`, whose bound is `1 / sqrt(fan_in)`, and biases use
    /// `uniform_(-1 / sqrt(fan_in), 1 / sqrt(fan_in))`.
    Uniform { bound: f64 },
    /// Every element equal to the value (BatchNorm: weight 1, bias 0).
    Constant(f64),
}

/// A parameter as a module declares it: a name relative to the module, a shape and its init.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDef {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
}

impl ParamDef {
    pub fn new(name: impl Into<String>, shape: &[i64], init: Init) -> ParamDef {
        ParamDef {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }
}

/// Where one named parameter lives in the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch `state_dict` name ("0.weight", "2.bias", "0.0.weight"...).
    pub name: String,
    /// Shape of the parameter for one task.
    pub shape: Vec<i64>,
    /// First element in the flat buffer's last dimension.
    pub offset: i64,
    /// Number of elements (product of `shape`).
    pub numel: i64,
}

/// The ordered parameters of a model: names, shapes, offsets into the flat buffer, inits.
#[derive(Clone, Debug)]
pub struct Layout {
    pub(super) specs: Vec<ParamSpec>,
    pub(super) inits: Vec<Init>,
    numel: i64,
    pub(super) index: HashMap<String, usize>,
}

impl Layout {
    /// Packs the parameters in the given order. Errors on a duplicate name or a negative dimension.
    pub fn new(defs: impl IntoIterator<Item = ParamDef>) -> Result<Layout> {
        let mut specs = Vec::new();
        let mut inits = Vec::new();
        let mut index = HashMap::new();
        let mut offset = 0i64;
        for def in defs {
            if def.shape.iter().any(|&d| d < 0) {
                return Err(Error::Layout(format!(
                    "parameter `{}` has a negative dimension in {:?}",
                    def.name, def.shape
                )));
            }
            if index.insert(def.name.clone(), specs.len()).is_some() {
                return Err(Error::Layout(format!(
                    "parameter `{}` appears twice",
                    def.name
                )));
            }
            let numel: i64 = def.shape.iter().product();
            specs.push(ParamSpec {
                name: def.name,
                shape: def.shape,
                offset,
                numel,
            });
            inits.push(def.init);
            offset += numel;
        }
        Ok(Layout {
            specs,
            inits,
            numel: offset,
            index,
        })
    }

    /// The parameters in order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Total number of elements `P` of one task's parameters.
    pub fn numel(&self) -> i64 {
        self.numel
    }

    /// Elements per named parameter, in order (the `[G]` of per-parameter hyperparameters).
    pub fn group_sizes(&self) -> Vec<i64> {
        self.specs.iter().map(|s| s.numel).collect()
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.index.get(name).map(|&i| &self.specs[i])
    }

    /// Parameter names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }

    /// Number of named parameters `G`.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when the model has no parameters.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// How parameter `i` (in order) is initialised.
    pub fn init_of(&self, i: usize) -> Option<Init> {
        self.inits.get(i).copied()
    }

    pub(super) fn spec(&self, name: &str) -> Result<&ParamSpec> {
        self.get(name).ok_or_else(|| Error::UnknownParam {
            name: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }
}
