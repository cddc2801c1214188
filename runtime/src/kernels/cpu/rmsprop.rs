//! The CPU kernel of the fused RMSprop step, forward and backward (see the parent module
//! for the blocking, the operands and the const-generic option sets).

use super::{coupled, d_coupled, d_sqrt, drive, lerp, Derive, Env, Hv, Real, Sink, Src};
use crate::kernels::ffi::{StepParams, MAX_HPARAMS};

// Inputs: 0 θ, 1 g, 2 square_avg, 3 momentum_buffer, 4 grad_avg (each absent reads as zeros),
// 5.. lr, alpha, eps, weight_decay, momentum. Params: `centered`, `momentum` (the momentum
// path). Outputs: 0 θ', 1 square_avg', then momentum_buffer' (momentum
// path), then grad_avg' (centered).

/// 0 `1 − α`.
fn rmsprop_derive<T: Real>(_: usize, h: &[Hv<T>; MAX_HPARAMS], _: &StepParams) -> T {
    h[1].rsub(1.0).t()
}

pub(super) unsafe fn rmsprop<T: Real>(env: &Env<T>) {
    let (centered, momentum) = (env.params.centered, env.params.momentum);
    let wd = env.decays(3);
    unsafe { specialise!(rmsprop_go::<T>(env) [centered, momentum, wd] []) }
}

#[inline(never)]
unsafe fn rmsprop_go<T: Real, const CENTERED: bool, const MOMENTUM: bool, const WD: bool>(
    env: &Env<T>,
) {
    let derive = Derive {
        f: rmsprop_derive::<T>,
        deps: [2],
    };
    let (x, h, d) = (|k| env.x(k), |k| env.h(k), Src::Derived);
    // The compact output index of momentum_buffer' and grad_avg'.
    let (j_buf, j_avg) = (2, if MOMENTUM { 3 } else { 2 });
    // Operands: θ, g, v, b, ḡ, lr, α, eps, wd, μ, 1 − α.
    let xs = [
        x(0),
        x(1),
        x(2),
        x(3),
        x(4),
        h(0),
        h(1),
        h(2),
        h(3),
        h(4),
        d(0),
    ];
    let forward = |&[theta, g0, v, b, avg_prev, lr, alpha, eps, wd, mu, w]: &[T; 11]| {
        let g = coupled::<T, WD>(g0, wd, theta);
        let square_avg = v * alpha + (g * g) * w;
        let grad_avg = lerp(avg_prev, g, w);
        let var = if CENTERED {
            square_avg - grad_avg * grad_avg
        } else {
            square_avg
        };
        let root = var.sqrt();
        let avg = root + eps;
        let q = g / avg;
        let buf = b * mu + q;
        let dir = if MOMENTUM { buf } else { q };
        (
            g,
            square_avg,
            grad_avg,
            var,
            root,
            avg,
            q,
            buf,
            dir,
            theta - dir * lr,
        )
    };
    unsafe {
        if !env.backward {
            let ys = [
                env.y(0),
                env.y(1),
                if MOMENTUM { env.y(j_buf) } else { Sink::Skip },
                if CENTERED { env.y(j_avg) } else { Sink::Skip },
            ];
            drive(env, xs, &derive, ys, |x| {
                let (_, square_avg, grad_avg, _, _, _, _, buf, _, theta) = forward(x);
                [theta, square_avg, buf, grad_avg]
            });
        } else {
            let dy_buf = if MOMENTUM { env.dy(j_buf) } else { Src::Zero };
            let dy_avg = if CENTERED { env.dy(j_avg) } else { Src::Zero };
            let xs2 = [
                xs[0],
                xs[1],
                xs[2],
                xs[3],
                xs[4],
                xs[5],
                xs[6],
                xs[7],
                xs[8],
                xs[9],
                xs[10],
                env.dy(0),
                env.dy(1),
                dy_buf,
                dy_avg,
            ];
            let ys: [Sink<T>; 10] = env.input_grads(5);
            drive(env, xs2, &derive, ys, |x| {
                let zero = T::of(0.0);
                let [theta, _, v, b, avg_prev, lr, alpha, _, wd, mu, w, d_new, d_v_out, d_b_out, d_avg_out] =
                    *x;
                let fx = [
                    x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10],
                ];
                let (g, _, grad_avg, var, root, avg, q, _, dir, _) = forward(&fx);
                let d_dir = -(lr * d_new);
                let d_lr = -(dir * d_new);
                let (d_q, d_b, d_mu) = if MOMENTUM {
                    let d_buf = d_b_out + d_dir;
                    (d_buf, mu * d_buf, b * d_buf)
                } else {
                    (d_dir, zero, zero)
                };
                let mut d_g = d_q / avg;
                let d_avg = -(d_q * q / avg);
                let d_eps = d_avg;
                let d_var = d_sqrt(var, root, d_avg);
                let mut d_alpha = zero;
                let d_square_avg = d_v_out + d_var;
                let d_grad_avg_in = if CENTERED {
                    let d_grad_avg = d_avg_out - T::of(2.0) * grad_avg * d_var;
                    d_g = d_g + d_grad_avg * w;
                    d_alpha = d_alpha - d_grad_avg * (g - avg_prev);
                    d_grad_avg * (T::of(1.0) - w)
                } else {
                    zero
                };
                // square_avg = α·v + (1 − α)·g².
                let d_v = alpha * d_square_avg;
                d_alpha = d_alpha + v * d_square_avg - (g * g) * d_square_avg;
                d_g = d_g + T::of(2.0) * g * (w * d_square_avg);
                let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
                [
                    d_theta,
                    d_g,
                    d_v,
                    d_b,
                    d_grad_avg_in,
                    d_lr,
                    d_alpha,
                    d_eps,
                    d_wd,
                    d_mu,
                ]
            });
        }
    }
}
