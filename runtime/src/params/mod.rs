//! Parameters stored outside the model: one flat tensor (`[P]`, or `[T, P]` for T tasks) with a
//! named view per parameter, named as PyTorch's `state_dict` names them.
//!
//! This module owns the layout of the flat buffer (`layout`), seeded initialisation and
//! safetensors files (`file`). It must not know which layers exist (that is `nn`, which also
//! holds `Params::init` for a model) nor hold optimizer state (that is `optim`).

mod file;
mod layout;

use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub(crate) use file::kind_of;
pub use layout::{Init, Layout, ParamDef, ParamSpec};

use crate::{Error, Result};

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

pub(super) fn check_float(op: &'static str, kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double => Ok(()),
        _ => Err(Error::Kind {
            op,
            kind,
            expected: "Float (f32) or Double (f64)",
        }),
    }
}

impl Params {
    /// Fresh parameters for `layout`: a `requires_grad` leaf `[P]` drawn with PyTorch's default
    /// init distributions (`Params::init` in `nn` takes a model instead). Values come from a
    /// ChaCha8 stream seeded with `seed`, drawn in f64 on the CPU and then converted and moved,
    /// so one seed gives the same values on any device, in any process.
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
}
