//! Dropout and DropBlock with masks drawn per task from the caller's task seeds (see
//! [`Module::forward_seeded`](super::Module::forward_seeded)), so that a task's masks are the
//! same on 1 or N ranks and in any cut of the meta-batch.
//!
//! The random stream is counter-based: element `i` of the mask of the layer named `prefix` for
//! task seed `s` draws `u = splitmix64(key + i) >> 11 · 2⁻⁵³` with
//! `key = splitmix64(s ^ fnv1a64(prefix))`, so every layer of a model has its own stream, and a
//! caller that wants new masks (each inner step) passes new seeds. The stream is simple enough to
//! reproduce in NumPy, which is how the parity fixtures check it. Nothing here keeps state.

use tch::{Kind, Tensor};

use super::{Module, ParamDef, Scope};
use crate::{Error, Result};

/// SplitMix64's output function of `z` (Steele et al. 2014).
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `numel` 0/1 values, 1 where the stream's uniform number is below `p`, as a `[numel]` tensor
/// of `kind` on the CPU.
fn bernoulli(seed: u64, prefix: &str, numel: i64, p: f64, kind: Kind) -> Result<Tensor> {
    let key = splitmix64(seed ^ fnv1a64(prefix.as_bytes()));
    let scale = 1.0 / (1u64 << 53) as f64;
    let bits: Vec<f64> = (0..numel as u64)
        .map(|i| {
            let u = (splitmix64(key.wrapping_add(i)) >> 11) as f64 * scale;
            if u < p {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::f_from_slice(&bits)?.f_to_kind(kind)?)
}

/// For each task (or the single task), a mask of `per_task` shape drawn with `p` from that
/// task's seed, stacked as `[T, *per_task]` (or `per_task`), on `x`'s device and of its kind.
fn task_masks(
    scope: &Scope<'_>,
    op: &'static str,
    x: &Tensor,
    p: f64,
    per_task: &[i64],
) -> Result<Tensor> {
    let tasks = scope.tasks().unwrap_or(1);
    let seeds = scope.seeds().ok_or_else(|| Error::Shape {
        op,
        expected: format!("{tasks} task seed(s) (forward_seeded) in training mode"),
        got: Vec::new(),
    })?;
    if seeds.len() as i64 != tasks {
        return Err(Error::Shape {
            op,
            expected: format!("{tasks} task seed(s), one per task"),
            got: vec![seeds.len() as i64],
        });
    }
    let numel: i64 = per_task.iter().product();
    let prefix = scope.name("");
    let masks = seeds
        .iter()
        .map(|&s| bernoulli(s, &prefix, numel, p, x.kind()))
        .collect::<Result<Vec<_>>>()?;
    let mut shape = Vec::new();
    if scope.tasks().is_some() {
        shape.push(tasks);
    }
    shape.extend_from_slice(per_task);
    Ok(Tensor::f_cat(&masks, 0)?
        .f_reshape(shape.as_slice())?
        .f_to_device(x.device())?)
}

/// PyTorch's `nn.Dropout(p)`: in training, each element is zeroed with probability `p` and the
/// others are scaled by `1 / (1 - p)`; in evaluation, the identity. Masks come from the task
/// seeds (module docs), so training needs [`Module::forward_seeded`].
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// `p` in `[0, 1)`.
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Shape {
                op: "Dropout",
                expected: format!("a probability p in [0, 1), got {p}"),
                got: Vec::new(),
            });
        }
        Ok(Dropout { p })
    }
}

impl Module for Dropout {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }

    /// Any shape `[B, ...]`; task-batched `[T, B, ...]`, each task with its own mask.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        if !scope.train() || self.p == 0.0 {
            return Ok(x.shallow_clone());
        }
        let per_task = scope.check_input(
            "Dropout",
            x,
            x.dim() - usize::from(scope.tasks().is_some()),
            "[batch, ...]",
        )?;
        // Kept where the uniform number is at least p: the complement of a draw below p.
        let dropped = task_masks(scope, "Dropout", x, self.p, &per_task)?;
        let keep = dropped.f_neg()?.f_add_scalar(1.0)?;
        Ok(x.f_mul(&keep)?.f_mul_scalar(1.0 / (1.0 - self.p))?)
    }
}

/// DropBlock (Ghiasi et al. 2018) as in MetaOptNet's ResNet-12 (Lee et al. 2019): in training,
/// block centres are drawn with probability
/// `γ = drop_rate / block² · H·W / ((H − block + 1)(W − block + 1))` over the
/// `(H − block + 1) × (W − block + 1)` positions of each map, every `block × block` square from a
/// centre is zeroed, and the rest is scaled by (elements / kept elements) of the task's maps. In
/// evaluation, the identity. MetaOptNet ramps `drop_rate` up over training; here it is fixed.
#[derive(Clone, Copy, Debug)]
pub struct DropBlock {
    drop_rate: f64,
    block: i64,
}

impl DropBlock {
    /// `drop_rate` in `[0, 1)`, `block` ≥ 1.
    pub fn new(drop_rate: f64, block: i64) -> Result<DropBlock> {
        if !(0.0..1.0).contains(&drop_rate) || block < 1 {
            return Err(Error::Shape {
                op: "DropBlock",
                expected: format!(
                    "drop_rate in [0, 1) and block >= 1, got {drop_rate} and {block}"
                ),
                got: Vec::new(),
            });
        }
        Ok(DropBlock { drop_rate, block })
    }
}

impl Module for DropBlock {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }

    /// `[B, C, H, W]` (H, W ≥ block); task-batched `[T, B, C, H, W]`, a mask and a scale per task.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let expected = format!(
            "[batch, channels, height >= {b}, width >= {b}]",
            b = self.block
        );
        let per_task = scope.check_input("DropBlock", x, 4, &expected)?;
        if !scope.train() || self.drop_rate == 0.0 {
            return Ok(x.shallow_clone());
        }
        let (b, c, h, w) = (per_task[0], per_task[1], per_task[2], per_task[3]);
        let bs = self.block;
        if h < bs || w < bs {
            return Err(Error::Shape {
                op: "DropBlock",
                expected,
                got: x.size(),
            });
        }
        let (mh, mw) = (h - bs + 1, w - bs + 1);
        let gamma = self.drop_rate / (bs * bs) as f64 * (h * w) as f64 / (mh * mw) as f64;
        let centres = task_masks(scope, "DropBlock", x, gamma, &[b, c, mh, mw])?;
        // A centre at (i, j) drops [i, i + bs) × [j, j + bs): a max-pool of the centres padded by
        // bs − 1 zeros on each side (MetaOptNet pads and scatters, with the same result).
        let blocks = centres
            .f_reshape([-1, c, mh, mw])?
            .f_constant_pad_nd([bs - 1, bs - 1, bs - 1, bs - 1])?
            .f_max_pool2d([bs, bs], [1, 1], [0, 0], [1, 1], false)?;
        let keep = blocks.f_neg()?.f_add_scalar(1.0)?;
        let keep = match scope.tasks() {
            Some(t) => keep.f_reshape([t, b, c, h, w])?,
            None => keep,
        };
        // Per task: elements / kept elements (at least one kept, against a division by zero).
        let dims: Vec<i64> = (keep.dim() as i64 - 4..keep.dim() as i64).collect();
        let kept = keep
            .f_sum_dim_intlist(dims.as_slice(), true, keep.kind())?
            .f_clamp_min(1.0)?;
        let scale = kept.f_reciprocal()?.f_mul_scalar((b * c * h * w) as f64)?;
        Ok(x.f_mul(&keep)?.f_mul(&scale)?)
    }
}
