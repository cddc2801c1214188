//! Hyperparameter values for an optimizer step: constants, or tensors whose gradient is a
//! hypergradient.
//!
//! It resolves overrides (`[]`/`[1]` global, `[G]` per named parameter, `[P]` per element) and does
//! the scalar-or-tensor arithmetic that the updates share; it never reads a tensor's value back to
//! the host and never detaches an override.

use super::Optimizer;
use crate::{Error, Result};
use tch::Tensor;

/// One hyperparameter value: a constant (computed in f64, as torch.optim does with Python floats)
/// or a tensor broadcastable to θ (`[]`, `[P]`; with θ `[T, P]` also `[T, 1]` or `[T, P]`).
#[derive(Debug)]
pub enum HValue {
    Const(f64),
    Tensor(Tensor),
}

impl Clone for HValue {
    /// A shallow copy: a tensor value keeps its storage and autograd history.
    fn clone(&self) -> Self {
        match self {
            HValue::Const(c) => HValue::Const(*c),
            HValue::Tensor(t) => HValue::Tensor(t.shallow_clone()),
        }
    }
}

impl HValue {
    /// The constant, for a `Const`.
    pub fn as_const(&self) -> Option<f64> {
        match self {
            HValue::Const(c) => Some(*c),
            HValue::Tensor(_) => None,
        }
    }

    /// True only for the constant 0: the cue to skip a term, as torch skips `weight_decay == 0`.
    /// A tensor is never taken for zero (that would need its value on the host), so its term is
    /// always computed; with a tensor holding 0 the result is the same.
    pub(crate) fn is_zero_const(&self) -> bool {
        matches!(self, HValue::Const(c) if *c == 0.0)
    }

    /// `c - self`.
    pub(crate) fn rsub(&self, c: f64) -> Result<HValue> {
        Ok(match self {
            HValue::Const(v) => HValue::Const(c - v),
            HValue::Tensor(t) => HValue::Tensor(t.f_neg()?.f_add_scalar(c)?),
        })
    }

    /// `self + c`.
    pub(crate) fn add_scalar(&self, c: f64) -> Result<HValue> {
        Ok(match self {
            HValue::Const(v) => HValue::Const(v + c),
            HValue::Tensor(t) => HValue::Tensor(t.f_add_scalar(c)?),
        })
    }

    /// `self * c`.
    pub(crate) fn mul_scalar(&self, c: f64) -> Result<HValue> {
        Ok(match self {
            HValue::Const(v) => HValue::Const(v * c),
            HValue::Tensor(t) => HValue::Tensor(t.f_mul_scalar(c)?),
        })
    }

    /// `self ^ p` (C's `pow`, as Python's `**`).
    pub(crate) fn powf(&self, p: f64) -> Result<HValue> {
        Ok(match self {
            HValue::Const(v) => HValue::Const(v.powf(p)),
            HValue::Tensor(t) => HValue::Tensor(t.f_pow_tensor_scalar(p)?),
        })
    }

    /// `self * other`.
    pub(crate) fn mul(&self, other: &HValue) -> Result<HValue> {
        Ok(match (self, other) {
            (HValue::Const(a), HValue::Const(b)) => HValue::Const(a * b),
            (HValue::Const(a), HValue::Tensor(t)) | (HValue::Tensor(t), HValue::Const(a)) => {
                HValue::Tensor(t.f_mul_scalar(*a)?)
            }
            (HValue::Tensor(a), HValue::Tensor(b)) => HValue::Tensor(a.f_mul(b)?),
        })
    }

    /// `self / other`.
    pub(crate) fn div(&self, other: &HValue) -> Result<HValue> {
        Ok(match (self, other) {
            (HValue::Const(a), HValue::Const(b)) => HValue::Const(a / b),
            (HValue::Const(a), HValue::Tensor(t)) => {
                HValue::Tensor(t.f_reciprocal()?.f_mul_scalar(*a)?)
            }
            (HValue::Tensor(t), HValue::Const(b)) => HValue::Tensor(t.f_div_scalar(*b)?),
            (HValue::Tensor(a), HValue::Tensor(b)) => HValue::Tensor(a.f_div(b)?),
        })
    }

    /// `x * self`, broadcast to x's shape.
    pub(crate) fn scale(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HValue::Const(c) => x.f_mul_scalar(*c)?,
            HValue::Tensor(t) => x.f_mul(t)?,
        })
    }

    /// `x + self`, broadcast to x's shape.
    pub(crate) fn add_to(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HValue::Const(c) => x.f_add_scalar(*c)?,
            HValue::Tensor(t) => x.f_add(t)?,
        })
    }

    /// `x / self`, broadcast to x's shape.
    pub(crate) fn divide(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HValue::Const(c) => x.f_div_scalar(*c)?,
            HValue::Tensor(t) => x.f_div(t)?,
        })
    }

    /// torch's `start.lerp(end, self)` = `start + self * (end - start)`.
    pub(crate) fn lerp(&self, start: &Tensor, end: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HValue::Const(c) => start.f_lerp(end, *c)?,
            HValue::Tensor(t) => {
                // lerp_tensor needs the weight broadcastable to the output, which any value
                // broadcastable to θ is.
                start.f_lerp_tensor(end, t)?
            }
        })
    }

    /// The same value with a tensor cast to `like`'s kind and device (differentiably; a no-op when
    /// they already agree), so a f32 override can drive a f64 step and vice versa.
    fn cast_like(&self, like: &Tensor) -> Result<HValue> {
        Ok(match self {
            HValue::Const(c) => HValue::Const(*c),
            HValue::Tensor(t) => {
                let mut t = t.shallow_clone();
                if t.kind() != like.kind() {
                    t = t.f_to_kind(like.kind())?;
                }
                if t.device() != like.device() {
                    t = t.f_to_device(like.device())?;
                }
                HValue::Tensor(t)
            }
        })
    }
}

/// One value per hyperparameter name of an optimizer.
#[derive(Debug, Clone)]
pub struct HParams {
    optimizer: &'static str,
    allowed: &'static [&'static str],
    values: Vec<(&'static str, HValue)>,
}

impl HParams {
    /// Every hyperparameter at the builder's value.
    pub fn defaults(opt: &dyn Optimizer) -> HParams {
        let allowed = opt.hparam_names();
        let values = allowed
            .iter()
            .filter_map(|n| opt.hparam_default(n).map(|v| (*n, HValue::Const(v))))
            .collect();
        HParams {
            optimizer: opt.name(),
            allowed,
            values,
        }
    }

    /// Defaults from the optimizer, with overrides applied. An override tensor of shape `[]` or
    /// `[1]` is global, `[G]` gives one value per named parameter (expanded to `[P]` with
    /// repeat_interleave over `group_sizes`, which sum to P), `[P]` one value per element
    /// (Meta-SGD); when G == P the two readings agree. The expansion is differentiable, so the
    /// override receives the hypergradient. Unknown names give `Error::UnknownHparam`, other shapes
    /// `Error::HparamShape`. A name given twice takes its last value.
    pub fn resolve(
        opt: &dyn Optimizer,
        overrides: &[(String, Tensor)],
        group_sizes: &[i64],
    ) -> Result<HParams> {
        let mut hp = HParams::defaults(opt);
        let groups = group_sizes.len() as i64;
        let numel: i64 = group_sizes.iter().sum();
        for (name, value) in overrides {
            hp.check_name(name)?;
            let size = value.size();
            let resolved = match size.as_slice() {
                [] => value.shallow_clone(),
                [1] => value.f_reshape([])?,
                [n] if *n == numel => value.shallow_clone(),
                [n] if *n == groups => {
                    let repeats = Tensor::f_from_slice(group_sizes)?.f_to_device(value.device())?;
                    value.f_repeat_interleave_self_tensor(&repeats, 0i64, numel)?
                }
                _ => {
                    return Err(Error::HparamShape {
                        name: name.clone(),
                        got: size,
                        groups,
                        numel,
                    })
                }
            };
            hp.set(name, HValue::Tensor(resolved))?;
        }
        Ok(hp)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&HValue> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets `name` to `value` (any tensor broadcastable to θ, e.g. `[T, 1]` for one value per task).
    pub fn set(&mut self, name: &str, value: HValue) -> Result<()> {
        let key = self.check_name(name)?;
        match self.values.iter_mut().find(|(n, _)| *n == key) {
            Some(slot) => slot.1 = value,
            None => self.values.push((key, value)),
        }
        Ok(())
    }

    /// The values in the optimizer's name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &HValue)> {
        self.values.iter().map(|(n, v)| (*n, v))
    }

    /// The value of `name` ready for an update on `like` (tensor cast to its kind and device);
    /// `default` (the builder's value) when `name` is not set.
    pub(crate) fn value(&self, name: &str, default: f64, like: &Tensor) -> Result<HValue> {
        match self.get(name) {
            Some(v) => v.cast_like(like),
            None => Ok(HValue::Const(default)),
        }
    }

    fn check_name(&self, name: &str) -> Result<&'static str> {
        self.allowed
            .iter()
            .find(|n| **n == name)
            .copied()
            .ok_or_else(|| Error::UnknownHparam {
                optimizer: self.optimizer,
                name: name.to_string(),
                allowed: self.allowed.join(", "),
            })
    }
}
