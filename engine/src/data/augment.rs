//! `task.augment = "standard"`: the data augmentation of Lee et al. 2019 (MetaOptNet) on a task's
//! support (training) images: random crop with zero padding, colour jitter (brightness, contrast
//! and saturation factors uniform in `[1 − 0.4, 1 + 0.4]`, applied in a random order as
//! torchvision's `ColorJitter` does) and a horizontal flip with probability ½.
//!
//! Every draw comes from one [`TaskRng`] stream seeded by the caller's task seed (a function of
//! `(seed, split, iteration, task)`, [`super::task_seed`]), so 1 and N ranks augment a task alike.
//! Pixels are in `[0, 1]` (as in episodes) and stay there.

use tch::Tensor;

use super::TaskRng;
use crate::Result;

/// Separates the augmentation stream from the sampling stream of the same task seed.
const STREAM: u64 = 0x6175_676D_656E_7431;

/// ITU-R 601 luma weights, as torchvision's `rgb_to_grayscale`.
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// The standard augmentation's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standard {
    /// Zero padding (pixels, each side) before the random crop back to the image's size.
    pub padding: i64,
    /// Whether a random half of the images are flipped horizontally.
    pub flip: bool,
    /// Maximum relative change of brightness, contrast and saturation (0 disables each).
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
}

impl Standard {
    /// MetaOptNet's settings for `side`×`side` images: padding 4 up to 32 pixels (CIFAR-FS,
    /// FC100), 8 above (84×84 miniImageNet and tieredImageNet); jitter 0.4; flips.
    pub fn for_side(side: i64) -> Standard {
        Standard {
            padding: if side <= 32 { 4 } else { 8 },
            flip: true,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
        }
    }

    /// Augments `images` (`[N, C, H, W]`, floating point, `[0, 1]`) with the stream of
    /// `task_seed`; every image gets its own crop offset, jitter factors and flip.
    pub fn apply(&self, images: &Tensor, task_seed: u64) -> Result<Tensor> {
        let size = images.size();
        let [n, _, h, w] = size[..] else {
            return Err(tch::TchError::Shape(format!(
                "augment: expected images [N, C, H, W], got {size:?}"
            ))
            .into());
        };
        let mut rng = TaskRng::from_seed(task_seed ^ STREAM);
        let p = self.padding;
        let padded = images.f_constant_pad_nd([p, p, p, p])?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (dy, dx) = (rng.below(2 * p as usize + 1), rng.below(2 * p as usize + 1));
            let crop = padded
                .f_get(i)?
                .f_narrow(1, dy as i64, h)?
                .f_narrow(2, dx as i64, w)?;
            let mut x = self.jitter(&crop, &mut rng)?;
            if self.flip && rng.below(2) == 1 {
                x = x.f_flip([2])?;
            }
            out.push(x);
        }
        Ok(Tensor::f_stack(&out, 0)?)
    }

    /// Augments each task of `[T, N, C, H, W]` with its own seed (`task_seeds.len() == T`).
    pub fn apply_tasks(&self, images: &Tensor, task_seeds: &[u64]) -> Result<Tensor> {
        let tasks = images.f_unbind(0)?;
        if tasks.len() != task_seeds.len() {
            return Err(tch::TchError::Shape(format!(
                "augment: {} task seeds for {} tasks",
                task_seeds.len(),
                tasks.len()
            ))
            .into());
        }
        let out = tasks
            .iter()
            .zip(task_seeds)
            .map(|(x, &seed)| self.apply(x, seed))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_stack(&out, 0)?)
    }

    /// torchvision's `ColorJitter` on one `[C, H, W]` image: the three adjustments in a random
    /// order, each a blend with a reference (black, the mean grey level, the grey image),
    /// clamped to `[0, 1]`.
    fn jitter(&self, image: &Tensor, rng: &mut TaskRng) -> Result<Tensor> {
        let mut order = [0usize, 1, 2];
        rng.shuffle(&mut order);
        let mut x = image.shallow_clone();
        for op in order {
            let amount = [self.brightness, self.contrast, self.saturation][op];
            if amount <= 0.0 {
                continue;
            }
            let factor = rng.uniform((1.0 - amount).max(0.0), 1.0 + amount);
            let reference = match op {
                0 => x.f_zeros_like()?,
                1 => grey(&x)?.f_mean(x.kind())?,
                _ => grey(&x)?,
            };
            let blended = x
                .f_mul_scalar(factor)?
                .f_add(&reference.f_mul_scalar(1.0 - factor)?)?;
            x = blended.f_clamp(0.0, 1.0)?;
        }
        Ok(x)
    }
}

/// The grey level `[1, H, W]` of a `[C, H, W]` image: luma for RGB, the image itself otherwise.
fn grey(x: &Tensor) -> Result<Tensor> {
    if x.size()[0] != 3 {
        return Ok(x.f_mean_dim(0, true, x.kind())?);
    }
    let weights = Tensor::f_from_slice(&LUMA)?
        .f_to_kind(x.kind())?
        .f_to_device(x.device())?
        .f_view([3, 1, 1])?;
    Ok(x.f_mul(&weights)?.f_sum_dim_intlist(0, true, x.kind())?)
}
