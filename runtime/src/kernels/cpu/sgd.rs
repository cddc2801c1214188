//! The CPU kernel of the fused SGD step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{coupled, d_coupled, pass, Derive, Env, Hv, Real, Sink, Src};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 momentum_buffer (absent at step 0), 3.. lr, momentum, dampening,
// weight_decay. Params: `first`, `nesterov`, `momentum` (the momentum path). Outputs: 0 θ',
// 1 momentum_buffer' (momentum path only).
// Weight decay and dampening are computed even when they are the constant 0 (g + 0·θ = g and
// (1 − 0)·g = g exactly, as the tensor-op path's skipped terms).

fn sgd_derive<T: Real>(_: usize, h: &[Hv<T>; MAX_HPARAMS], _: &StepParams) -> T {
    h[2].rsub(1.0).t()
}

pub(super) unsafe fn sgd<T: Real>(env: &Env<T>) {
    let (momentum, nesterov, first) = (env.params.momentum, env.params.nesterov, env.params.first);
    let wd = env.decays(3);
    unsafe { specialise!(sgd_go::<T>(env) [momentum, nesterov, first, wd] []) }
}

/// The momentum buffer `μ·prev + (1 − dampening)·g` (g itself at the first step) and the
/// direction of the step: g, `g + μ·buf` (Nesterov) or buf.
#[inline(always)]
fn direction<T: Real, const MOMENTUM: bool, const NESTEROV: bool, const FIRST: bool>(
    g: T,
    prev: T,
    mu: T,
    keep: T,
) -> (T, T) {
    let buf = if FIRST { g } else { prev * mu + keep * g };
    match (MOMENTUM, NESTEROV) {
        (false, _) => (buf, g),
        (true, true) => (buf, g + buf * mu),
        (true, false) => (buf, buf),
    }
}

#[inline(never)]
unsafe fn sgd_go<
    T: Real,
    const MOMENTUM: bool,
    const NESTEROV: bool,
    const FIRST: bool,
    const WD: bool,
>(
    env: &Env<T>,
) {
    let derive = Derive {
        f: sgd_derive::<T>,
        deps: [1 << 2],
    };
    let (x, h) = (|k| env.x(k), |k| env.h(k));
    // Operands: θ, g, buf, lr, momentum, wd, 1 − dampening.
    let xs = [x(0), x(1), x(2), h(0), h(1), h(3), Src::Derived(0)];
    let ys = [env.y(0), if MOMENTUM { env.y(1) } else { Sink::Skip }];
    let forward = |&[theta, g0, prev, lr, mu, wd, keep]: &[T; 7]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let (buf, dir) = direction::<T, MOMENTUM, NESTEROV, FIRST>(g, prev, mu, keep);
        [theta - dir * lr, buf]
    };
    let backward = |&[theta, g0, prev, lr, mu, wd, keep, d_new, d_buf_out]: &[T; 9]| {
        let zero = T::of(0.0);
        let g = coupled::<T, WD>(g0, wd, theta);
        let (buf, dir) = direction::<T, MOMENTUM, NESTEROV, FIRST>(g, prev, mu, keep);
        let d_dir = -(lr * d_new);
        let d_lr = -(dir * d_new);
        let (mut d_g, mut d_mu, mut d_prev, mut d_damp) = (d_dir, zero, zero, zero);
        if MOMENTUM {
            let d_buf = d_buf_out + if NESTEROV { mu * d_dir } else { d_dir };
            d_g = if NESTEROV { d_dir } else { zero };
            if NESTEROV {
                d_mu = buf * d_dir;
            }
            if FIRST {
                d_g = d_g + d_buf;
            } else {
                d_mu = d_mu + prev * d_buf;
                d_prev = mu * d_buf;
                d_g = d_g + keep * d_buf;
                d_damp = -(g * d_buf);
            }
        }
        let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
        [d_theta, d_g, d_prev, d_lr, d_mu, d_damp, d_wd]
    };
    unsafe { pass(env, &derive, xs, &[], ys, forward, backward) }
}
