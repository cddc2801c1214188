//! The CPU kernel of the fused Adadelta step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{coupled, d_coupled, d_sqrt, pass, Derive, Env, Hv, Real, Src};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 square_avg, 3 acc_delta, 4.. lr, rho, eps, weight_decay. Params: no
// options. Outputs: 0 θ', 1 square_avg', 2 acc_delta'.

/// 0 `1 − ρ`.
fn adadelta_derive<T: Real>(_: usize, h: &[Hv<T>; MAX_HPARAMS], _: &StepParams) -> T {
    h[1].rsub(1.0).t()
}

pub(super) unsafe fn adadelta<T: Real>(env: &Env<T>) {
    let wd = env.decays(3);
    unsafe { specialise!(adadelta_go::<T>(env) [wd] []) }
}

#[inline(never)]
unsafe fn adadelta_go<T: Real, const WD: bool>(env: &Env<T>) {
    let derive = Derive {
        f: adadelta_derive::<T>,
        deps: [2],
    };
    let (x, h, d) = (|k| env.x(k), |k| env.h(k), Src::Derived);
    // Operands: θ, g, v, a, lr, ρ, eps, wd, 1 − ρ.
    let xs = [x(0), x(1), x(2), x(3), h(0), h(1), h(2), h(3), d(0)];
    let ys = [env.y(0), env.y(1), env.y(2)];
    let forward = |&[theta, g0, v, a, lr, rho, eps, wd, w]: &[T; 9]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let square_avg = v * rho + (g * g) * w;
        let std = (square_avg + eps).sqrt();
        let delta = (a + eps).sqrt() / std * g;
        let acc_delta = a * rho + (delta * delta) * w;
        [theta - delta * lr, square_avg, acc_delta]
    };
    let backward = |&[theta, g0, v, a, lr, rho, eps, wd, w, d_new, d_v_out, d_a_out]: &[T; 12]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let square_avg = v * rho + (g * g) * w;
        let (sq_eps, a_eps) = (square_avg + eps, a + eps);
        let std = sq_eps.sqrt();
        let num = a_eps.sqrt();
        let ratio = num / std;
        let delta = ratio * g;
        let d_delta0 = -(lr * d_new);
        let d_lr = -(delta * d_new);
        // acc_delta = ρ·a + (1 − ρ)·δ².
        let mut d_a = rho * d_a_out;
        let mut d_rho = a * d_a_out - (delta * delta) * d_a_out;
        let d_delta = d_delta0 + T::of(2.0) * delta * (w * d_a_out);
        // δ = (num / std)·g.
        let d_ratio = d_delta * g;
        let mut d_g = d_delta * ratio;
        let d_num = d_ratio / std;
        let d_std = -(d_ratio * ratio / std);
        let d_a_eps = d_sqrt(a_eps, num, d_num);
        let d_sq_eps = d_sqrt(sq_eps, std, d_std);
        d_a = d_a + d_a_eps;
        let d_eps = d_a_eps + d_sq_eps;
        let d_square_avg = d_v_out + d_sq_eps;
        // square_avg = ρ·v + (1 − ρ)·g².
        let d_v = rho * d_square_avg;
        d_rho = d_rho + v * d_square_avg - (g * g) * d_square_avg;
        d_g = d_g + T::of(2.0) * g * (w * d_square_avg);
        let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
        [d_theta, d_g, d_v, d_a, d_lr, d_rho, d_eps, d_wd]
    };
    unsafe { pass(env, &derive, xs, &[], ys, forward, backward) }
}
