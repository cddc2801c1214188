//! RAdam, Adam with the variance of the adaptive learning rate rectified (Liu et al. 2020;
//! torch.optim.RAdam).
//!
//! It has no fused kernel: every step takes the tensor-op path, `fused(true)` included. It is
//! the example of an optimizer added in one file (see the parent module's documentation).
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{
    coupled_weight_decay, ema_of_squares, sqrt_finite_grad, Buffer, HValue, OptState, StepInput,
};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.RAdam, single-tensor algorithm: weight decay (coupled: `g ← g + wd·θ`;
    /// decoupled: `θ ← θ·(1 − lr·wd)`), `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
    /// `ρ∞ = 2/(1 − β2) − 1`, `ρt = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)`; when `ρt > 5`,
    /// `θ ← θ − m/(1 − β1ᵗ)·lr·√(1 − β2ᵗ)/(√v + ε)·r` with the rectification
    /// `r = √((ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt))`, else `θ ← θ − m/(1 − β1ᵗ)·lr`.
    /// Defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.
    ///
    /// With a constant β2 the test `ρt > 5` is taken on the host, as torch does; with a β2
    /// tensor it is a `where` per element (torch's `capturable` form), so no value is read back.
    pub struct RAdam("RAdam") {
        hparams {
            /// The decay rate β1 of the first moment.
            beta1: 0.9,
            /// The decay rate β2 of the second moment.
            beta2: 0.999,
            /// The term added to the denominator.
            eps: 1e-8,
            /// Weight decay (added to the gradient, or decoupled).
            weight_decay: 0.0,
        }
        options {
            /// Decoupled weight decay (AdamW's), as torch's `decoupled_weight_decay`.
            decoupled_weight_decay: false,
        }
        buffers: [ExpAvg, ExpAvgSq],
    }
}

impl RAdam {
    /// The decay rates `(β1, β2)`.
    pub fn betas(self, beta1: f64, beta2: f64) -> RAdam {
        self.beta1(beta1).beta2(beta2)
    }

    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        OptState::zeros(theta, &[Buffer::ExpAvg, Buffer::ExpAvgSq])
    }

    fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, beta1, beta2, eps, weight_decay] = x.v;
        let step = state.step() + 1;
        let mut decayed = theta.shallow_clone();
        let mut g = grad.shallow_clone();
        if !weight_decay.is_zero_const() {
            if self.decoupled_weight_decay {
                decayed = lr.mul(weight_decay)?.rsub(1.0)?.scale(theta)?;
            } else {
                g = coupled_weight_decay(grad, theta, weight_decay)?;
            }
        }
        let exp_avg = beta1
            .rsub(1.0)?
            .lerp(&state.or_zeros(Buffer::ExpAvg, theta)?, &g)?;
        let exp_avg_sq = ema_of_squares(&state.or_zeros(Buffer::ExpAvgSq, theta)?, &g, beta2)?;
        let bias_correction1 = beta1.powf(step as f64)?.rsub(1.0)?;
        let bias_correction2 = beta2.powf(step as f64)?.rsub(1.0)?;
        // torch's `exp_avg / bias_correction1 * lr`.
        let corrected = lr.scale(&bias_correction1.divide(&exp_avg)?)?;
        let rho = Rho::new(beta2, &bias_correction2, step)?;
        let denom = eps.add_to(&sqrt_finite_grad(&exp_avg_sq)?)?;
        // torch's `bias_correction2 ** 0.5 / (√v + ε)` (a float over a tensor: its reciprocal
        // times the float, as `HValue::div` does).
        let adaptive = match bias_correction2.powf(0.5)?.div(&HValue::Tensor(denom))? {
            HValue::Tensor(t) => t,
            HValue::Const(_) => unreachable!("a constant over a tensor is a tensor"),
        };
        let update = rho.rectified(&corrected, &adaptive)?;
        let theta = decayed.f_sub(&update)?;
        let buffers = vec![(Buffer::ExpAvg, exp_avg), (Buffer::ExpAvgSq, exp_avg_sq)];
        Ok((theta, OptState::from_buffers(step, buffers)))
    }
}

/// The length of the approximated simple moving average: `ρ∞` and `ρt`.
struct Rho {
    inf: HValue,
    t: HValue,
}

impl Rho {
    /// `ρ∞ = 2/(1 − β2) − 1` and `ρt = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)`, in torch's order of operations.
    fn new(beta2: &HValue, bias_correction2: &HValue, step: i64) -> Result<Rho> {
        let inf = HValue::Const(2.0)
            .div(&beta2.rsub(1.0)?)?
            .add_scalar(-1.0)?;
        let decay = beta2
            .powf(step as f64)?
            .mul_scalar(2.0 * step as f64)?
            .div(bias_correction2)?;
        let t = sub(&inf, &decay)?;
        Ok(Rho { inf, t })
    }

    /// The rectification's square: `(ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt)`.
    fn rect_squared(&self) -> Result<HValue> {
        let num = self
            .t
            .add_scalar(-4.0)?
            .mul(&self.t.add_scalar(-2.0)?)?
            .mul(&self.inf)?;
        let den = self
            .inf
            .add_scalar(-4.0)?
            .mul(&self.inf.add_scalar(-2.0)?)?
            .mul(&self.t)?;
        num.div(&den)
    }

    /// The step `corrected · adaptive · r` where `ρt > 5`, else `corrected`.
    fn rectified(&self, corrected: &Tensor, adaptive: &Tensor) -> Result<Tensor> {
        match (&self.t, self.rect_squared()?) {
            (HValue::Const(rho), HValue::Const(r2)) => {
                if *rho > 5.0 {
                    Ok(corrected.f_mul(adaptive)?.f_mul_scalar(r2.powf(0.5))?)
                } else {
                    Ok(corrected.shallow_clone())
                }
            }
            (rho, r2) => {
                let rho = as_tensor(rho, corrected)?;
                let keep = rho.f_gt(5.0)?;
                // 1 where ρt ≤ 5, so that the unused side has a finite derivative.
                let safe = as_tensor(&r2, corrected)?.f_where_scalarother(&keep, 1.0)?;
                let factor = adaptive
                    .f_mul(&sqrt_finite_grad(&safe)?)?
                    .f_where_scalarother(&keep, 1.0)?;
                Ok(corrected.f_mul(&factor)?)
            }
        }
    }
}

/// `a − b`.
fn sub(a: &HValue, b: &HValue) -> Result<HValue> {
    Ok(match (a, b) {
        (HValue::Const(x), HValue::Const(y)) => HValue::Const(x - y),
        (HValue::Const(x), HValue::Tensor(_)) => b.rsub(*x)?,
        (HValue::Tensor(t), HValue::Const(y)) => HValue::Tensor(t.f_sub_scalar(*y)?),
        (HValue::Tensor(s), HValue::Tensor(t)) => HValue::Tensor(s.f_sub(t)?),
    })
}

/// The value as a tensor of `like`'s kind and device (a constant becomes a 0-d tensor).
fn as_tensor(v: &HValue, like: &Tensor) -> Result<Tensor> {
    Ok(match v {
        HValue::Const(c) => Tensor::f_scalar_tensor(*c, (like.kind(), like.device()))?,
        HValue::Tensor(t) => t.shallow_clone(),
    })
}
