//! The CPU kernel of the fused Adamax step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{coupled, d_coupled, d_max, lerp, pass, pick, sign, Derive, Env, Hv, Real, Src};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 exp_avg, 3 exp_inf, 4.. lr, beta1, beta2, eps, weight_decay. Params:
// `step` (t). Outputs: 0 θ', 1 exp_avg', 2 exp_inf'.

/// 0 `1 − β1`, 1 `1 − β1ᵗ`, 2 `lr / (1 − β1ᵗ)`, 3 `∂(1 − β1ᵗ)/∂β1`.
fn adamax_derive<T: Real>(k: usize, h: &[Hv<T>; MAX_HPARAMS], p: &StepParams) -> T {
    let t = p.step as f64;
    let bc = h[1].powf(t).rsub(1.0);
    let tt = T::of(t);
    match k {
        0 => h[1].rsub(1.0).t(),
        1 => bc.t(),
        2 => h[0].div(bc).t(),
        _ => -(tt * h[1].t().powf(tt - T::of(1.0))),
    }
}

pub(super) unsafe fn adamax<T: Real>(env: &Env<T>) {
    let wd = env.decays(4);
    unsafe { specialise!(adamax_go::<T>(env) [wd] []) }
}

#[inline(never)]
unsafe fn adamax_go<T: Real, const WD: bool>(env: &Env<T>) {
    let derive = Derive {
        f: adamax_derive::<T>,
        deps: [2, 2, 3, 2],
    };
    let (x, h, d) = (|k| env.x(k), |k| env.h(k), Src::Derived);
    // Operands: θ, g, m, u, β2, eps, wd, 1 − β1, clr.
    let xs = [x(0), x(1), x(2), x(3), h(2), h(3), h(4), d(0), d(2)];
    let ys = [env.y(0), env.y(1), env.y(2)];
    let forward = |&[theta, g0, m, u, beta2, eps, wd, w1, clr]: &[T; 9]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let exp_avg = lerp(m, g, w1);
        let (a, b) = (u * beta2, g.abs() + eps);
        let exp_inf = pick(a > b, a, b);
        [theta - (exp_avg / exp_inf) * clr, exp_avg, exp_inf]
    };
    let backward =
        |&[theta, g0, m, u, beta2, eps, wd, w1, clr, bc, dbc, d_new, d_m_out, d_u_out]: &[T;
              14]| {
            let g = coupled::<T, WD>(g0, wd, theta);
            let exp_avg = lerp(m, g, w1);
            let (a, b) = (u * beta2, g.abs() + eps);
            let exp_inf = pick(a > b, a, b);
            let r = exp_avg / exp_inf;
            // θ' = θ − clr · r.
            let d_clr = -(r * d_new);
            let d_r = -(clr * d_new);
            let d_exp_avg = d_m_out + d_r / exp_inf;
            let d_exp_inf = d_u_out - d_r * r / exp_inf;
            let (d_a, d_b) = d_max(a, b, d_exp_inf);
            let d_u = beta2 * d_a;
            let d_beta2 = u * d_a;
            let d_eps = d_b;
            let mut d_g = sign(g) * d_b;
            // exp_avg = lerp(m, g, 1 − β1).
            let d_m = d_exp_avg * (T::of(1.0) - w1);
            d_g = d_g + d_exp_avg * w1;
            // clr = lr / bc, bc = 1 − β1ᵗ.
            let d_lr = d_clr / bc;
            let d_bc = -(d_clr * clr / bc);
            let d_beta1 = d_bc * dbc - d_exp_avg * (g - m);
            let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
            [d_theta, d_g, d_m, d_u, d_lr, d_beta1, d_beta2, d_eps, d_wd]
        };
    unsafe { pass(env, &derive, xs, &[d(1), d(3)], ys, forward, backward) }
}
