//! The CPU kernel of the fused Rprop step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{pass, pick, sign, Derive, Env, Hv, Real};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 prev, 3 step_size (absent at the first step: the step sizes start at lr),
// 4.. lr, eta_minus, eta_plus, step_size_min, step_size_max. Params: `first`. Outputs: 0 θ', 1 prev', 2 step_size'.
// The backward is autograd's of the tensor-op path: sign and the comparisons pass no gradient;
// clamp passes it where min ≤ x ≤ max (to the bound where x is strictly beyond it).

fn rprop_derive<T: Real>(_: usize, _: &[Hv<T>; MAX_HPARAMS], _: &StepParams) -> T {
    T::of(0.0)
}

pub(super) unsafe fn rprop<T: Real>(env: &Env<T>) {
    let first = env.params.first;
    unsafe { specialise!(rprop_go::<T>(env) [first] []) }
}

#[inline(never)]
unsafe fn rprop_go<T: Real, const FIRST: bool>(env: &Env<T>) {
    let derive = Derive {
        f: rprop_derive::<T>,
        deps: [],
    };
    let (x, h) = (|k| env.x(k), |k| env.h(k));
    // Operands: θ, g, prev, step_size, lr, η−, η+, min, max.
    let xs = [x(0), x(1), x(2), x(3), h(0), h(1), h(2), h(3), h(4)];
    let forward = |&[theta, g, prev, s, lr, eta_minus, eta_plus, lo, hi]: &[T; 9]| {
        let zero = T::of(0.0);
        let product = g * prev;
        let (flipped, grew) = (product < zero, product > zero);
        let factor = pick(flipped, eta_minus, pick(grew, eta_plus, T::of(1.0)));
        let s_prev = if FIRST { lr } else { s };
        let scaled = s_prev * factor;
        let lower = pick(scaled < lo, lo, scaled);
        let step_size = pick(lower > hi, hi, lower);
        let g_kept = pick(flipped, zero, g);
        let theta_new = theta - sign(g_kept) * step_size;
        (
            flipped, grew, factor, s_prev, scaled, lower, step_size, g_kept, theta_new,
        )
    };
    let ys = [env.y(0), env.y(1), env.y(2)];
    let outputs = |x: &[T; 9]| {
        let (_, _, _, _, _, _, step_size, g_kept, theta_new) = forward(x);
        [theta_new, g_kept, step_size]
    };
    let backward = |x: &[T; 12]| {
        let zero = T::of(0.0);
        let [_, _, _, _, _, _, _, lo, hi, d_new, d_prev_out, d_s_out] = *x;
        let fx = [x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8]];
        let (flipped, grew, factor, s_prev, scaled, lower, _, g_kept, _) = forward(&fx);
        // θ' = θ − sign(g')·step_size; g' = g masked where the sign flipped.
        let d_step = d_s_out - sign(g_kept) * d_new;
        let d_g = pick(flipped, zero, d_prev_out);
        // clamp_max(lower, max), then clamp_min(scaled, min).
        let d_lower = pick(lower <= hi, d_step, zero);
        let d_hi = pick(lower > hi, d_step, zero);
        let d_scaled = pick(scaled >= lo, d_lower, zero);
        let d_lo = pick(scaled < lo, d_lower, zero);
        let d_s_prev = factor * d_scaled;
        let d_factor = s_prev * d_scaled;
        let d_eta_minus = pick(flipped, d_factor, zero);
        let d_eta_plus = pick(!flipped && grew, d_factor, zero);
        let (d_s, d_lr) = if FIRST {
            (zero, d_s_prev)
        } else {
            (d_s_prev, zero)
        };
        [
            d_new,
            d_g,
            zero,
            d_s,
            d_lr,
            d_eta_minus,
            d_eta_plus,
            d_lo,
            d_hi,
        ]
    };
    unsafe { pass(env, &derive, xs, &[], ys, outputs, backward) }
}
