//! The CPU kernel of the fused Adagrad step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{coupled, d_coupled, d_sqrt, pass, Derive, Env, Hv, Real, Src};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 sum (absent at the first step), 3.. lr, lr_decay, weight_decay,
// initial_accumulator_value, eps. Params: `step` (t), `first` (the accumulator starts at
// initial_accumulator_value). Outputs: 0 θ', 1 sum'.

/// 0 `1 + (t − 1)·lr_decay`, 1 `lr / (1 + (t − 1)·lr_decay)`.
fn adagrad_derive<T: Real>(k: usize, h: &[Hv<T>; MAX_HPARAMS], p: &StepParams) -> T {
    let den = h[1].mul_scalar(p.step as f64 - 1.0).add_scalar(1.0);
    match k {
        0 => den.t(),
        _ => h[0].div(den).t(),
    }
}

pub(super) unsafe fn adagrad<T: Real>(env: &Env<T>) {
    let first = env.params.first;
    let wd = env.decays(2);
    unsafe { specialise!(adagrad_go::<T>(env) [first, wd] []) }
}

#[inline(never)]
unsafe fn adagrad_go<T: Real, const FIRST: bool, const WD: bool>(env: &Env<T>) {
    let derive = Derive {
        f: adagrad_derive::<T>,
        deps: [2, 3],
    };
    let (x, h, d) = (|k| env.x(k), |k| env.h(k), Src::Derived);
    // Operands: θ, g, sum, wd, initial, eps, clr.
    let xs = [x(0), x(1), x(2), h(2), h(3), h(4), d(1)];
    let ys = [env.y(0), env.y(1)];
    let forward = |&[theta, g0, s, wd, init, eps, clr]: &[T; 7]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let sum = if FIRST { init } else { s } + g * g;
        let std = sum.sqrt() + eps;
        [theta - (g / std) * clr, sum]
    };
    let backward = |&[theta, g0, s, wd, init, eps, clr, den, d_new, d_sum_out]: &[T; 10]| {
        let zero = T::of(0.0);
        let g = coupled::<T, WD>(g0, wd, theta);
        let sum = if FIRST { init } else { s } + g * g;
        let root = sum.sqrt();
        let std = root + eps;
        let q = g / std;
        let d_clr = -(q * d_new);
        let d_q = -(clr * d_new);
        let mut d_g = d_q / std;
        let d_std = -(d_q * q / std);
        let d_sum = d_sum_out + d_sqrt(sum, root, d_std);
        d_g = d_g + T::of(2.0) * g * d_sum;
        let (d_s, d_init) = if FIRST { (zero, d_sum) } else { (d_sum, zero) };
        // clr = lr / den, den = 1 + (t − 1)·lr_decay.
        let d_lr = d_clr / den;
        let d_den = -(d_clr * clr / den);
        let d_lr_decay = d_den * T::of(env.params.step as f64 - 1.0);
        let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
        [d_theta, d_g, d_s, d_lr, d_lr_decay, d_wd, d_init, d_std]
    };
    unsafe { pass(env, &derive, xs, &[d(0)], ys, forward, backward) }
}
