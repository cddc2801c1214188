//! Parameters stored outside the model: one flat tensor (`[P]`, or `[T, P]` for T tasks) with a
//! named view per parameter, named as PyTorch's `state_dict` names them.
//!
//! This module owns the layout of the flat buffer, seeded initialisation and safetensors files.
//! It must not know which layers exist (that is `nn`) nor hold optimizer state (that is `optim`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::nn::Module;
use crate::{Error, Result};

/// How a parameter is drawn by [`Params::init`].
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
    specs: Vec<ParamSpec>,
    inits: Vec<Init>,
    numel: i64,
    index: HashMap<String, usize>,
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

    fn spec(&self, name: &str) -> Result<&ParamSpec> {
        self.get(name).ok_or_else(|| Error::UnknownParam {
            name: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }
}

/// A model's parameters: one flat tensor, `[P]` or `[T, P]`, viewed by name.
///
/// Cloning is cheap and shares the tensor (and its autograd graph).
#[derive(Debug)]
pub struct Params {
    layout: Arc<Layout>,
    flat: Tensor,
}

impl Clone for Params {
    fn clone(&self) -> Params {
        Params {
            layout: self.layout.clone(),
            flat: self.flat.shallow_clone(),
        }
    }
}

fn check_float(op: &'static str, kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double => Ok(()),
        _ => Err(Error::Kind {
            op,
            kind,
            expected: "Float (f32) or Double (f64)",
        }),
    }
}

fn dtype_of(op: &'static str, kind: Kind) -> Result<Dtype> {
    match kind {
        Kind::Float => Ok(Dtype::F32),
        Kind::Double => Ok(Dtype::F64),
        Kind::Half => Ok(Dtype::F16),
        Kind::BFloat16 => Ok(Dtype::BF16),
        _ => Err(Error::Kind {
            op,
            kind,
            expected: "Float, Double, Half or BFloat16",
        }),
    }
}

pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F64 => Some(Kind::Double),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

impl Params {
    /// Fresh parameters for `model`: a `requires_grad` leaf `[P]` drawn with PyTorch's default
    /// init distributions. Values come from a ChaCha8 stream seeded with `seed`, drawn in f64 on
    /// the CPU and then converted and moved, so one seed gives the same values on any device, in
    /// any process. (They are not PyTorch's values for `torch.manual_seed(seed)`.)
    pub fn init(
        model: &(impl Module + ?Sized),
        seed: u64,
        kind: Kind,
        device: Device,
    ) -> Result<Params> {
        Params::init_layout(Arc::new(model.layout()?), seed, kind, device)
    }

    /// [`Params::init`] for a layout built by hand.
    pub fn init_layout(
        layout: Arc<Layout>,
        seed: u64,
        kind: Kind,
        device: Device,
    ) -> Result<Params> {
        check_float("Params::init", kind)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::with_capacity(layout.numel() as usize);
        for (spec, init) in layout.specs.iter().zip(&layout.inits) {
            match *init {
                Init::Uniform { bound } => {
                    for _ in 0..spec.numel {
                        // 53 random bits -> [0, 1), the same on every platform.
                        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                        values.push(bound * (2.0 * u - 1.0));
                    }
                }
                Init::Constant(c) => values.extend(std::iter::repeat_n(c, spec.numel as usize)),
            }
        }
        let flat = Tensor::f_from_slice(&values)?
            .f_to_kind(kind)?
            .f_to_device(device)?
            .f_detach()?
            .f_set_requires_grad(true)?;
        Ok(Params { layout, flat })
    }

    /// Wraps a flat tensor `[P]` or `[T, P]` (a leaf or not, e.g. the result of an optimizer
    /// step). Errors when its last dimension is not the layout's `P`.
    pub fn from_flat(layout: Arc<Layout>, flat: Tensor) -> Result<Params> {
        let size = flat.size();
        let ok = matches!(size.len(), 1 | 2) && size.last() == Some(&layout.numel());
        if !ok {
            return Err(Error::Shape {
                op: "Params::from_flat",
                expected: format!("[{p}] or [tasks, {p}]", p = layout.numel()),
                got: size,
            });
        }
        Ok(Params { layout, flat })
    }

    /// `[P]` -> `[T, P]`: every task starts from these values. The copy is differentiable, so
    /// gradients of the T tasks sum into `self`.
    pub fn expand_tasks(&self, tasks: i64) -> Result<Params> {
        if self.tasks().is_some() || tasks < 1 {
            return Err(Error::Shape {
                op: "Params::expand_tasks",
                expected: format!(
                    "[{}] parameters and tasks >= 1 (got tasks = {tasks})",
                    self.layout.numel()
                ),
                got: self.flat.size(),
            });
        }
        let flat = self.flat.f_unsqueeze(0)?.f_repeat([tasks, 1])?;
        Ok(Params {
            layout: self.layout.clone(),
            flat,
        })
    }

    /// Task `i` of `[T, P]` parameters, as `[P]` parameters (differentiable: a view).
    pub fn task(&self, i: i64) -> Result<Params> {
        match self.tasks() {
            Some(t) if (0..t).contains(&i) => Ok(Params {
                layout: self.layout.clone(),
                flat: self.flat.f_select(0, i)?,
            }),
            _ => Err(Error::Shape {
                op: "Params::task",
                expected: format!(
                    "[tasks, {}] with task index {i} < tasks",
                    self.layout.numel()
                ),
                got: self.flat.size(),
            }),
        }
    }

    /// The same values cut from the autograd graph (no gradient flows back).
    pub fn detach(&self) -> Result<Params> {
        Ok(Params {
            layout: self.layout.clone(),
            flat: self.flat.f_detach()?,
        })
    }

    /// The flat tensor `[P]` or `[T, P]`.
    pub fn flat(&self) -> &Tensor {
        &self.flat
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// `Some(T)` for `[T, P]` parameters, `None` for `[P]`.
    pub fn tasks(&self) -> Option<i64> {
        let size = self.flat.size();
        (size.len() == 2).then(|| size[0])
    }

    pub fn kind(&self) -> Kind {
        self.flat.kind()
    }

    pub fn device(&self) -> Device {
        self.flat.device()
    }

    fn view_of(&self, tensor: &Tensor, spec: &ParamSpec) -> Result<Tensor> {
        let dim = tensor.dim() as i64 - 1;
        let mut shape = Vec::with_capacity(spec.shape.len() + 1);
        if let Some(t) = self.tasks() {
            shape.push(t);
        }
        shape.extend_from_slice(&spec.shape);
        Ok(tensor
            .f_narrow(dim, spec.offset, spec.numel)?
            .f_view(shape.as_slice())?)
    }

    /// A view of parameter `name`: `[*shape]`, or `[T, *shape]` for task-batched parameters.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let spec = self.layout.spec(name)?;
        self.view_of(&self.flat, spec)
    }

    /// Every parameter's view, in layout order, from one split of the flat tensor. In a graph,
    /// the backward of one split is one concatenation of the parameters' gradients, where a
    /// [`get`](Params::get) per parameter costs a zero-filled `[T, P]` gradient each.
    pub fn views(&self) -> Result<Vec<Tensor>> {
        let dim = self.flat.dim() as i64 - 1;
        let sizes: Vec<i64> = self.layout.specs.iter().map(|s| s.numel).collect();
        let pieces = self.flat.f_split_with_sizes(sizes.as_slice(), dim)?;
        let tasks = self.tasks();
        pieces
            .iter()
            .zip(&self.layout.specs)
            .map(|(piece, spec)| {
                let mut shape = Vec::with_capacity(spec.shape.len() + 1);
                shape.extend(tasks);
                shape.extend_from_slice(&spec.shape);
                Ok(piece.f_view(shape.as_slice())?)
            })
            .collect()
    }

    /// The position of parameter `name` in layout order (the index into [`views`](Params::views)).
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.layout.spec(name)?;
        Ok(self.layout.index[name])
    }

    /// Copies `value` into parameter `name` without recording it in the autograd graph.
    /// `value` has the view's shape, or for task-batched parameters also `[*shape]` (then every
    /// task gets it). Do not use it on parameters that a pending backward pass still needs.
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        let spec = self.layout.spec(name)?;
        let mut view = self.view_of(&self.flat, spec)?;
        let got = value.size();
        if got != view.size() && got != spec.shape {
            return Err(Error::Shape {
                op: "Params::set",
                expected: format!("{:?} for `{name}`", view.size()),
                got,
            });
        }
        tch::no_grad(|| view.f_copy_(value))?;
        Ok(())
    }

    /// The gradient of parameter `name` (a view of `flat().grad()`), after a backward pass that
    /// reached the flat leaf; `None` before one, or for an unknown name.
    pub fn grad(&self, name: &str) -> Option<Tensor> {
        let spec = self.layout.get(name)?;
        let grad = self.flat.f_grad().ok()?;
        if !grad.defined() {
            return None;
        }
        self.view_of(&grad, spec).ok()
    }

    /// `(name, view)` for every parameter, in layout order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Tensor)> {
        // `from_flat` checked that the last dimension is `P` and each spec lies inside it, so
        // narrowing and viewing cannot fail here: a panic would be a bug in this module.
        self.layout.specs.iter().map(move |spec| {
            let view = self
                .view_of(&self.flat, spec)
                .expect("Params views are valid by construction");
            (spec.name.as_str(), view)
        })
    }

    /// Writes one tensor per parameter, with its `state_dict` name and shape, to a safetensors
    /// file that PyTorch reads with `model.load_state_dict(safetensors.torch.load_file(path))`.
    /// Task-batched `[T, P]` parameters are refused: save each task with `task(i)?.save(..)`.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.tasks().is_some() {
            return Err(Error::Shape {
                op: "Params::save",
                expected: format!(
                    "[{}] (one task; save each task of [T, P] parameters with Params::task(i))",
                    self.layout.numel()
                ),
                got: self.flat.size(),
            });
        }
        let kind = self.kind();
        let dtype = dtype_of("Params::save", kind)?;
        let flat = self
            .flat
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let elt = kind.elt_size_in_bytes();
        let mut bytes = vec![0u8; flat.numel() * elt];
        flat.f_copy_data_u8(&mut bytes, flat.numel())?;
        let mut views = Vec::with_capacity(self.layout.len());
        for spec in &self.layout.specs {
            let start = spec.offset as usize * elt;
            let end = start + spec.numel as usize * elt;
            let shape = spec.shape.iter().map(|&d| d as usize).collect();
            let view = TensorView::new(dtype, shape, &bytes[start..end]).map_err(|e| {
                Error::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("`{}`: {e}", spec.name),
                }
            })?;
            views.push((spec.name.clone(), view));
        }
        // PyTorch's save_file writes this metadata too.
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let file = safetensors::serialize(views, &metadata).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, file).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads parameters saved by [`Params::save`] or by PyTorch (`safetensors.torch.save_file(
    /// model.state_dict(), path)`) into a `requires_grad` leaf `[P]` of `kind` on `device`.
    /// Every name of the layout must be in the file with its shape, and the file must hold no
    /// other tensor (as PyTorch's strict `load_state_dict`).
    pub fn load(layout: Arc<Layout>, path: &Path, kind: Kind, device: Device) -> Result<Params> {
        check_float("Params::load", kind)?;
        let fail = |message: String| Error::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
        let known: HashSet<&str> = layout.names().collect();
        let mut unexpected: Vec<&str> = file
            .names()
            .into_iter()
            .map(|n| n.as_str())
            .filter(|n| !known.contains(n))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            return Err(fail(format!(
                "unexpected tensors {unexpected:?} in the file (the model has: {})",
                layout.names().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut parts = Vec::with_capacity(layout.len());
        for spec in &layout.specs {
            let view = file.tensor(&spec.name).map_err(|_| {
                fail(format!(
                    "tensor `{}` (shape {:?}) is missing from the file",
                    spec.name, spec.shape
                ))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != spec.shape {
                return Err(fail(format!(
                    "tensor `{}` has shape {shape:?} in the file, the model expects {:?}",
                    spec.name, spec.shape
                )));
            }
            let file_kind = kind_of(view.dtype()).ok_or_else(|| {
                fail(format!(
                    "tensor `{}` has dtype {:?}; expected a float dtype",
                    spec.name,
                    view.dtype()
                ))
            })?;
            // SafeTensors::deserialize checked that the data holds exactly shape x dtype bytes.
            let tensor = Tensor::f_from_data_size(view.data(), &[spec.numel], file_kind)?;
            parts.push(tensor.f_to_kind(kind)?);
        }
        let flat = if parts.is_empty() {
            Tensor::f_zeros([0], (kind, Device::Cpu))?
        } else {
            Tensor::f_cat(&parts, 0)?
        };
        let flat = flat
            .f_to_device(device)?
            .f_detach()?
            .f_set_requires_grad(true)?;
        Ok(Params { layout, flat })
    }
}
