//! The CPU kernel of the fused Adam and AdamW step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{
    coupled, d_coupled, d_max, d_sqrt, lerp, pass, pick, Derive, Env, Hv, Real, Sink, Src,
};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (amsgrad only), 5.. lr, beta1,
// beta2, eps, weight_decay. Params: `step` (t), `decoupled` (AdamW), `amsgrad`.
// Outputs: 0 θ', 1 exp_avg', 2 exp_avg_sq', 3 max_exp_avg_sq' (amsgrad only).

/// Adam's derived quantities, as the tensor-op path computes them: 0 `1 − β1`, 1 `1 − β2`,
/// 2 `1 − β1ᵗ`, 3 `lr / (1 − β1ᵗ)`, 4 `√(1 − β2ᵗ)`, 5 `1 − lr·wd`; for the backward 6 `β1ᵗ⁻¹`,
/// 7 `β2ᵗ⁻¹`, 8 `½·(1 − β2ᵗ)^(−½)` (in T).
fn adam_derive<T: Real>(k: usize, h: &[Hv<T>; MAX_HPARAMS], p: &StepParams) -> T {
    let t = p.step as f64;
    let (lr, beta1, beta2, wd) = (h[0], h[1], h[2], h[4]);
    let bc1 = beta1.powf(t).rsub(1.0);
    let tt = T::of(t);
    match k {
        0 => beta1.rsub(1.0).t(),
        1 => beta2.rsub(1.0).t(),
        2 => bc1.t(),
        3 => lr.div(bc1).t(),
        4 => beta2.powf(t).rsub(1.0).powf(0.5).t(),
        5 => lr.mul(wd).rsub(1.0).t(),
        6 => beta1.t().powf(tt - T::of(1.0)),
        7 => beta2.t().powf(tt - T::of(1.0)),
        _ => (T::of(1.0) - beta2.t().powf(tt)).powf(T::of(-0.5)) * T::of(0.5),
    }
}

pub(super) unsafe fn adam<T: Real>(env: &Env<T>) {
    let (decoupled, amsgrad) = (env.params.decoupled, env.params.amsgrad);
    let wd = env.decays(4);
    unsafe { specialise!(adam_go::<T>(env) [decoupled, amsgrad, wd] []) }
}

/// The new moments `lerp(m, g, 1 − β1)` and `β2·v + (1 − β2)·g²`, and the second moment the
/// step divides by (the running maximum with AMSGrad).
#[inline(always)]
fn moments<T: Real, const AMSGRAD: bool>(
    g: T,
    m: T,
    v: T,
    vmax: T,
    beta2: T,
    w1: T,
    omb2: T,
) -> (T, T, T) {
    let exp_avg = lerp(m, g, w1);
    let exp_avg_sq = v * beta2 + omb2 * (g * g);
    let second = if AMSGRAD {
        pick(vmax > exp_avg_sq, vmax, exp_avg_sq)
    } else {
        exp_avg_sq
    };
    (exp_avg, exp_avg_sq, second)
}

#[inline(never)]
unsafe fn adam_go<T: Real, const DECOUPLED: bool, const AMSGRAD: bool, const WD: bool>(
    env: &Env<T>,
) {
    let derive = Derive {
        f: adam_derive::<T>,
        deps: [2, 4, 2, 3, 4, 17, 2, 4, 4],
    };
    let (x, h, d) = (|k| env.x(k), |k| env.h(k), Src::Derived);
    // Operands: θ, g, m, v, v̂, β2, eps, wd, 1 − β1, 1 − β2, step size, √bc2, decay, lr.
    let xs = [
        x(0),
        x(1),
        x(2),
        x(3),
        x(4),
        h(2),
        h(3),
        h(4),
        d(0),
        d(1),
        d(3),
        d(4),
        d(5),
        h(0),
    ];
    let ys = [
        env.y(0),
        env.y(1),
        env.y(2),
        if AMSGRAD { env.y(3) } else { Sink::Skip },
    ];
    let forward =
        |&[theta, g0, m, v, vmax, beta2, eps, wd, w1, omb2, step, bc2s, decay, _lr]: &[T; 14]| {
            let (decayed, g) = if !WD {
                (theta, g0)
            } else if DECOUPLED {
                (decay * theta, g0)
            } else {
                (theta, g0 + wd * theta)
            };
            let (exp_avg, exp_avg_sq, second) =
                moments::<T, AMSGRAD>(g, m, v, vmax, beta2, w1, omb2);
            let denom = second.sqrt() / bc2s + eps;
            [
                decayed - step * (exp_avg / denom),
                exp_avg,
                exp_avg_sq,
                second,
            ]
        };
    let backward =     |&[theta, g0, m, v, vmax, beta2, eps, wd, w1, omb2, step, bc2s, decay, lr, bc1, pow1, pow2, half_rsqrt_bc2, d_new, d_m_out, d_v_out, d_vmax_out]: &[T; 22]| {
        let zero = T::of(0.0);
        let one = T::of(1.0);
        let g = if DECOUPLED { g0 } else { coupled::<T, WD>(g0, wd, theta) };
        let (exp_avg, exp_avg_sq, second) =
            moments::<T, AMSGRAD>(g, m, v, vmax, beta2, w1, omb2);
        let root = second.sqrt();
        let scaled_root = root / bc2s;
        let denom = scaled_root + eps;
        let ratio = exp_avg / denom;
        // θ' = decayed − step_size · exp_avg / denom.
        let d_step = -(ratio * d_new);
        let d_ratio = -(step * d_new);
        let d_exp_avg = d_m_out + d_ratio / denom;
        let d_denom = -(d_ratio * ratio / denom);
        let d_eps = d_denom;
        let d_root = d_denom / bc2s;
        let d_bc2s = -(d_denom * scaled_root / bc2s);
        let d_second = d_sqrt(second, root, d_root);
        let (d_vmax, d_exp_avg_sq) = if AMSGRAD {
            let (a, b) = d_max(vmax, exp_avg_sq, d_second + d_vmax_out);
            (a, d_v_out + b)
        } else {
            (zero, d_v_out + d_second)
        };
        // Bias corrections: step = lr / bc1, bc1 = 1 − β1ᵗ, bc2s = √(1 − β2ᵗ).
        let mut d_lr = d_step / bc1;
        let d_bc1 = -(d_step * step / bc1);
        let t = T::of(env.params.step as f64);
        let mut d_beta1 = -(d_bc1 * t * pow1);
        let d_bc2 = d_bc2s * half_rsqrt_bc2;
        let mut d_beta2 = -(d_bc2 * t * pow2);
        // exp_avg_sq = β2·v + (1 − β2)·g².
        d_beta2 = d_beta2 + d_exp_avg_sq * v - d_exp_avg_sq * (g * g);
        let d_v = beta2 * d_exp_avg_sq;
        let mut d_g = T::of(2.0) * g * (omb2 * d_exp_avg_sq);
        // exp_avg = lerp(m, g, 1 − β1).
        let d_m = d_exp_avg * (one - w1);
        d_g = d_g + d_exp_avg * w1;
        d_beta1 = d_beta1 - d_exp_avg * (g - m);
        // Weight decay.
        let (d_theta, d_wd) = if !WD {
            (d_new, T::of(0.0))
        } else if DECOUPLED {
            let d_factor = theta * d_new;
            d_lr = d_lr - wd * d_factor;
            (decay * d_new, -(lr * d_factor))
        } else {
            d_coupled::<T, WD>(d_new, wd, theta, d_g)
        };
        [d_theta, d_g, d_m, d_v, d_vmax, d_lr, d_beta1, d_beta2, d_eps, d_wd]
    };
    unsafe {
        pass(
            env,
            &derive,
            xs,
            &[d(2), d(6), d(7), d(8)],
            ys,
            forward,
            backward,
        )
    }
}
