//! The CPU kernels of the fused optimizer steps: one pass over contiguous f32/f64 buffers per
//! step, forward (θ', new state) and backward (the vector-Jacobian product w.r.t. θ, g, every state
//! buffer and every tensor hyperparameter), over the element range the shim hands each of
//! libtorch's intra-op threads (at::parallel_for): sharing libtorch's OpenMP pool instead of
//! starting a second one, whose threads would fight OpenMP's spinning workers for the cores.
//!
//! Each element's arithmetic follows runtime::optim's tensor-op update operation for operation (the
//! reference), so fused and unfused agree to rounding. These loops never allocate, never call
//! libtorch and never read outside the `numel` elements the shim laid out.

use super::ffi::{KernelCall, MAX_IN, MAX_OUT};
use super::StepKernel;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The float arithmetic the kernels need, for f32 and f64.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, p: Self) -> Self;
    fn abs(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn powf(self, p: Self) -> Self {
        f32::powf(self, p)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn powf(self, p: Self) -> Self {
        f64::powf(self, p)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

/// The buffers of one call, typed. Pointers come from the shim, which keeps every tensor alive
/// for the duration of the call and lays each out contiguously with `numel` elements (or one
/// element, stride 0, for a uniform hyperparameter).
struct Slots<T> {
    input: [*const T; MAX_IN],
    stride: [usize; MAX_IN],
    out: [*mut T; MAX_IN],
    grad_out: [*const T; MAX_OUT],
    consts: [f64; super::ffi::MAX_CONST],
    /// The input slot of the first hyperparameter.
    hp0: usize,
    /// True when every hyperparameter is one value for all elements (a constant or a one-element
    /// tensor): then `hv` holds them and `derived` what the step derives from them, computed once
    /// per call instead of once per element.
    uniform: bool,
    hv: [T; 8],
    derived: [T; 6],
    derived_ready: bool,
}

impl<T: Copy> Clone for Slots<T> {
    fn clone(&self) -> Self {
        *self
    }
}
// Each range works on its own copy, which the compiler keeps in registers (through a shared
// reference its fields would be reloaded after every store through an output pointer).
impl<T: Copy> Copy for Slots<T> {}

impl<T: Real> Slots<T> {
    fn new(call: &KernelCall, hp0: usize) -> Slots<T> {
        let mut s = Slots {
            input: [std::ptr::null(); MAX_IN],
            stride: [0; MAX_IN],
            out: [std::ptr::null_mut(); MAX_IN],
            grad_out: [std::ptr::null(); MAX_OUT],
            consts: call.consts,
            hp0,
            uniform: false,
            hv: [T::of(0.0); 8],
            derived: [T::of(0.0); 6],
            derived_ready: false,
        };
        for k in 0..MAX_IN {
            s.input[k] = call.input[k] as *const T;
            s.stride[k] = call.in_stride[k] as usize;
            s.out[k] = call.out[k] as *mut T;
        }
        for j in 0..MAX_OUT {
            s.grad_out[j] = call.grad_out[j] as *const T;
        }
        s
    }

    /// Reads the hyperparameters once when every one is uniform (see `uniform`).
    fn prepare_uniform(&mut self, n_hparams: usize) {
        let slots = self.hp0..(self.hp0 + n_hparams).min(MAX_IN);
        if n_hparams > self.hv.len()
            || slots
                .clone()
                .any(|k| !self.input[k].is_null() && self.stride[k] != 0)
        {
            return;
        }
        for k in 0..n_hparams {
            // SAFETY: element 0 exists for a constant (none read) and for a one-element tensor.
            self.hv[k] = unsafe { self.h(k, 0) };
        }
        self.uniform = true;
    }

    /// Input `k` at element `i`.
    #[inline(always)]
    unsafe fn x(&self, k: usize, i: usize) -> T {
        // SAFETY: the caller passes i < numel; stride 0 reads the single element.
        unsafe { *self.input[k].add(i * self.stride[k]) }
    }

    /// Input `k` at element `i`, or 0 when the input is absent.
    #[inline(always)]
    unsafe fn x_or_zero(&self, k: usize, i: usize) -> T {
        if self.input[k].is_null() {
            T::of(0.0)
        } else {
            unsafe { self.x(k, i) }
        }
    }

    /// Hyperparameter `k` at element `i`: its tensor, or its constant.
    #[inline(always)]
    unsafe fn h(&self, k: usize, i: usize) -> T {
        if self.uniform {
            return self.hv[k];
        }
        let slot = self.hp0 + k;
        if self.input[slot].is_null() {
            T::of(self.consts[k])
        } else {
            unsafe { self.x(slot, i) }
        }
    }

    /// A quantity derived from hyperparameter `k` alone (`1 − β`, a bias correction): from a
    /// constant it is computed in f64 and rounded once (as the tensor-op path does with Python
    /// floats), from a tensor in T (as its tensor ops do).
    #[inline(always)]
    unsafe fn hf(&self, k: usize, i: usize, c: impl Fn(f64) -> f64, t: impl Fn(T) -> T) -> T {
        let slot = self.hp0 + k;
        if self.uniform && !self.input[slot].is_null() {
            return t(self.hv[k]);
        }
        if self.input[slot].is_null() {
            T::of(c(self.consts[k]))
        } else {
            t(unsafe { self.x(slot, i) })
        }
    }

    /// True when hyperparameter `k` is a constant.
    #[inline(always)]
    fn is_const(&self, k: usize) -> bool {
        self.input[self.hp0 + k].is_null()
    }

    /// The gradient of forward output `j` at element `i` (0 when there is none).
    #[inline(always)]
    unsafe fn dy(&self, j: usize, i: usize) -> T {
        let p = self.grad_out[j];
        if p.is_null() {
            T::of(0.0)
        } else {
            unsafe { *p.add(i) }
        }
    }

    /// Writes output `k` at element `i` when that output is wanted.
    #[inline(always)]
    unsafe fn put(&self, k: usize, i: usize, v: T) {
        let p = self.out[k];
        if !p.is_null() {
            unsafe { *p.add(i) = v }
        }
    }

    fn flag(&self, k: usize) -> bool {
        self.consts[k] != 0.0
    }
}

/// Runs `f(slots, i)` on every element index of `range`, on a copy of `slots` that the compiler
/// can keep in registers.
fn for_each<T: Real, F: Fn(&Slots<T>, usize)>(
    slots: &Slots<T>,
    range: std::ops::Range<usize>,
    f: F,
) {
    let local = *slots;
    for i in range {
        f(&local, i);
    }
}

/// torch's `lerp(start, end, w)`: `start + w·(end − start)` for |w| < 0.5, else
/// `end − (end − start)·(1 − w)`.
#[inline(always)]
fn lerp<T: Real>(start: T, end: T, w: T) -> T {
    if w.abs() < T::of(0.5) {
        start + w * (end - start)
    } else {
        end - (end - start) * (T::of(1.0) - w)
    }
}

/// Runs one call on the CPU.
///
/// # Safety
/// `call` must come from the shim: every non-null pointer valid for `numel` elements (or one, with
/// stride 0) of the dtype it names, outputs not aliasing inputs.
pub(crate) unsafe fn run(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    match call.dtype {
        0 => unsafe { run_typed::<f32>(kernel, call) },
        1 => unsafe { run_typed::<f64>(kernel, call) },
        d => Err(format!("unknown dtype code {d}")),
    }
}

unsafe fn run_typed<T: Real>(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    let bad = || format!("range {}..{} of {}", call.begin, call.end, call.numel);
    let begin = usize::try_from(call.begin).map_err(|_| bad())?;
    let end = usize::try_from(call.end).map_err(|_| bad())?;
    if begin > end || call.end > call.numel {
        return Err(bad());
    }
    let n = begin..end;
    let mut s = Slots::<T>::new(call, kernel.hparam_slot());
    s.prepare_uniform(kernel.hparam_count());
    if s.uniform && kernel == StepKernel::Adam {
        // SAFETY: uniform hyperparameters are read from `hv`; no element is touched.
        s.derived = unsafe { adam_derived(&s, 0) };
        s.derived_ready = true;
    }
    let backward = call.pass == 1;
    // SAFETY (all arms): indices stay below n; see `run`.
    match (kernel, backward) {
        (StepKernel::Sgd, false) => for_each(&s, n.clone(), |s, i| unsafe { sgd_forward(s, i) }),
        (StepKernel::Sgd, true) => for_each(&s, n.clone(), |s, i| unsafe { sgd_backward(s, i) }),
        (StepKernel::Adam, false) => for_each(&s, n.clone(), |s, i| unsafe { adam_forward(s, i) }),
        (StepKernel::Adam, true) => for_each(&s, n.clone(), |s, i| unsafe { adam_backward(s, i) }),
    }
    Ok(())
}

// ---- SGD -----------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 momentum_buffer (absent at step 0), 3.. lr, momentum, dampening,
// weight_decay. Consts: 0..4 the hyperparameters' constants, 4 previous step count, 5 nesterov,
// 6 momentum path, 7 dampening is the constant 0, 8 weight_decay is the constant 0.
// Outputs: 0 θ', 1 momentum_buffer' (momentum path only).

#[inline(always)]
unsafe fn sgd_forward<T: Real>(s: &Slots<T>, i: usize) {
    unsafe {
        let theta = s.x(0, i);
        let lr = s.h(0, i);
        let mut g = s.x(1, i);
        if !s.flag(8) {
            g = g + s.h(3, i) * theta;
        }
        if s.flag(6) {
            let momentum = s.h(1, i);
            let buf = if s.consts[4] == 0.0 {
                g
            } else {
                let fresh = if s.flag(7) {
                    g
                } else {
                    s.hf(2, i, |d| 1.0 - d, |d| T::of(1.0) - d) * g
                };
                s.x_or_zero(2, i) * momentum + fresh
            };
            g = if s.flag(5) { g + buf * momentum } else { buf };
            s.put(1, i, buf);
        }
        s.put(0, i, theta - g * lr);
    }
}

#[inline(always)]
unsafe fn sgd_backward<T: Real>(s: &Slots<T>, i: usize) {
    unsafe {
        let zero = T::of(0.0);
        let theta = s.x(0, i);
        let lr = s.h(0, i);
        let momentum = s.h(1, i);
        let weight_decay = s.h(3, i);
        let first = s.consts[4] == 0.0;
        let (nesterov, momentum_path) = (s.flag(5), s.flag(6));
        let mut g = s.x(1, i);
        if !s.flag(8) {
            g = g + weight_decay * theta;
        }
        let fresh_scale = if s.flag(7) {
            T::of(1.0)
        } else {
            s.hf(2, i, |d| 1.0 - d, |d| T::of(1.0) - d)
        };
        let prev = if momentum_path && !first {
            s.x_or_zero(2, i)
        } else {
            zero
        };
        let buf = if first {
            g
        } else {
            prev * momentum + fresh_scale * g
        };
        let step_dir = if !momentum_path {
            g
        } else if nesterov {
            g + buf * momentum
        } else {
            buf
        };

        let d_theta_new = s.dy(0, i);
        let d_dir = -(lr * d_theta_new);
        let d_lr = -(step_dir * d_theta_new);
        let mut d_theta = d_theta_new;
        let mut d_g;
        let mut d_momentum = zero;
        let mut d_prev = zero;
        let mut d_dampening = zero;
        if momentum_path {
            let d_buf = s.dy(1, i) + if nesterov { momentum * d_dir } else { d_dir };
            d_g = if nesterov { d_dir } else { zero };
            if nesterov {
                d_momentum = buf * d_dir;
            }
            if first {
                d_g = d_g + d_buf;
            } else {
                d_momentum = d_momentum + prev * d_buf;
                d_prev = momentum * d_buf;
                d_g = d_g + fresh_scale * d_buf;
                d_dampening = -(g * d_buf);
            }
        } else {
            d_g = d_dir;
        }
        let mut d_weight_decay = zero;
        if !s.flag(8) {
            d_theta = d_theta + weight_decay * d_g;
            d_weight_decay = theta * d_g;
        }
        s.put(0, i, d_theta);
        s.put(1, i, d_g);
        s.put(2, i, d_prev);
        s.put(3, i, d_lr);
        s.put(4, i, d_momentum);
        s.put(5, i, d_dampening);
        s.put(6, i, d_weight_decay);
    }
}

// ---- Adam / AdamW -------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (amsgrad only), 5.. lr, beta1,
// beta2, eps, weight_decay. Consts: 0..5 the hyperparameters' constants, 5 the new step count t,
// 6 decoupled weight decay (AdamW), 7 amsgrad, 8 weight_decay is the constant 0.
// Outputs: 0 θ', 1 exp_avg', 2 exp_avg_sq', 3 max_exp_avg_sq' (amsgrad only).

/// Adam's hyperparameter-derived values at element `i`: (1 − β1, 1 − β2, 1 − β1ᵗ, step size
/// lr/(1 − β1ᵗ), √(1 − β2ᵗ), 1 − lr·wd), each from constants in f64 and from tensors in T, as the
/// tensor-op path computes them.
#[inline(always)]
unsafe fn adam_derived<T: Real>(s: &Slots<T>, i: usize) -> [T; 6] {
    if s.derived_ready {
        return s.derived;
    }
    unsafe {
        let one = T::of(1.0);
        let t64 = s.consts[5];
        let t = T::of(t64);
        let one_minus_beta1 = s.hf(1, i, |b| 1.0 - b, |b| one - b);
        let one_minus_beta2 = s.hf(2, i, |b| 1.0 - b, |b| one - b);
        let bias_correction1 = s.hf(1, i, |b| 1.0 - b.powf(t64), |b| one - b.powf(t));
        let step_size = if s.is_const(0) && s.is_const(1) {
            T::of(s.consts[0] / (1.0 - s.consts[1].powf(t64)))
        } else {
            s.h(0, i) / bias_correction1
        };
        let bias_correction2_sqrt = s.hf(
            2,
            i,
            |b| (1.0 - b.powf(t64)).powf(0.5),
            |b| (one - b.powf(t)).powf(T::of(0.5)),
        );
        let decay_factor = if s.is_const(0) && s.is_const(4) {
            T::of(1.0 - s.consts[0] * s.consts[4])
        } else {
            one - s.h(0, i) * s.h(4, i)
        };
        [
            one_minus_beta1,
            one_minus_beta2,
            bias_correction1,
            step_size,
            bias_correction2_sqrt,
            decay_factor,
        ]
    }
}

#[inline(always)]
unsafe fn adam_forward<T: Real>(s: &Slots<T>, i: usize) {
    unsafe {
        let theta = s.x(0, i);
        let (beta2, eps) = (s.h(2, i), s.h(3, i));
        let [one_minus_beta1, one_minus_beta2, _, step_size, bias_correction2_sqrt, decay_factor] =
            adam_derived(s, i);
        let mut decayed = theta;
        let mut g = s.x(1, i);
        if !s.flag(8) {
            if s.flag(6) {
                decayed = decay_factor * theta;
            } else {
                g = g + s.h(4, i) * theta;
            }
        }
        let exp_avg = lerp(s.x(2, i), g, one_minus_beta1);
        let exp_avg_sq = s.x(3, i) * beta2 + one_minus_beta2 * (g * g);
        let second_moment = if s.flag(7) {
            let prev = s.x(4, i);
            let max = if prev > exp_avg_sq { prev } else { exp_avg_sq };
            s.put(3, i, max);
            max
        } else {
            exp_avg_sq
        };
        let denom = second_moment.sqrt() / bias_correction2_sqrt + eps;
        s.put(0, i, decayed - step_size * (exp_avg / denom));
        s.put(1, i, exp_avg);
        s.put(2, i, exp_avg_sq);
    }
}

#[inline(always)]
unsafe fn adam_backward<T: Real>(s: &Slots<T>, i: usize) {
    unsafe {
        let zero = T::of(0.0);
        let one = T::of(1.0);
        let half = T::of(0.5);
        let theta = s.x(0, i);
        let (lr, beta1, beta2, eps) = (s.h(0, i), s.h(1, i), s.h(2, i), s.h(3, i));
        let weight_decay = s.h(4, i);
        let t = T::of(s.consts[5]);
        let (decoupled, amsgrad, no_decay) = (s.flag(6), s.flag(7), s.flag(8));

        // The forward values.
        let mut g = s.x(1, i);
        if !no_decay && !decoupled {
            g = g + weight_decay * theta;
        }
        let m_prev = s.x(2, i);
        let v_prev = s.x(3, i);
        let [w, one_minus_beta2, bias_correction1, step_size, bias_correction2_sqrt, decay_factor] =
            adam_derived(s, i);
        let exp_avg = lerp(m_prev, g, w);
        let exp_avg_sq = v_prev * beta2 + one_minus_beta2 * (g * g);
        let bias_correction2 = one - beta2.powf(t);
        let max_prev = if amsgrad { s.x(4, i) } else { zero };
        let second_moment = if amsgrad && max_prev > exp_avg_sq {
            max_prev
        } else {
            exp_avg_sq
        };
        let root = second_moment.sqrt();
        let scaled_root = root / bias_correction2_sqrt;
        let denom = scaled_root + eps;
        let ratio = exp_avg / denom;

        // θ' = decayed − step_size · exp_avg / denom.
        let d_theta_new = s.dy(0, i);
        let d_decayed = d_theta_new;
        let d_step_size = -(ratio * d_theta_new);
        let d_ratio = -(step_size * d_theta_new);
        let d_exp_avg = s.dy(1, i) + d_ratio / denom;
        let d_denom = -(d_ratio * ratio / denom);
        let d_eps = d_denom;
        let d_root = d_denom / bias_correction2_sqrt;
        let d_bc2_sqrt = -(d_denom * scaled_root / bias_correction2_sqrt);
        // The masked square root: derivative 0 where the second moment is exactly 0.
        let mut d_second = if second_moment == zero {
            zero
        } else {
            d_root / (T::of(2.0) * root)
        };
        let mut d_exp_avg_sq = s.dy(2, i);
        let mut d_max_prev = zero;
        if amsgrad {
            d_second = d_second + s.dy(3, i);
            // torch.maximum's backward: a tie splits the gradient in halves.
            if max_prev == exp_avg_sq {
                d_max_prev = d_second * half;
                d_exp_avg_sq = d_exp_avg_sq + d_second * half;
            } else if max_prev > exp_avg_sq {
                d_max_prev = d_second;
            } else {
                d_exp_avg_sq = d_exp_avg_sq + d_second;
            }
        } else {
            d_exp_avg_sq = d_exp_avg_sq + d_second;
        }
        // Bias corrections.
        let d_bc2 = d_bc2_sqrt * half * bias_correction2.powf(-half);
        let mut d_beta2 = -(d_bc2 * t * beta2.powf(t - one));
        let mut d_lr = d_step_size / bias_correction1;
        let d_bc1 = -(d_step_size * step_size / bias_correction1);
        let mut d_beta1 = -(d_bc1 * t * beta1.powf(t - one));
        // exp_avg_sq = β2·v + (1 − β2)·g².
        d_beta2 = d_beta2 + d_exp_avg_sq * v_prev - d_exp_avg_sq * (g * g);
        let d_v_prev = beta2 * d_exp_avg_sq;
        let mut d_g = T::of(2.0) * g * (one_minus_beta2 * d_exp_avg_sq);
        // exp_avg = lerp(m, g, 1 − β1).
        let d_m_prev = d_exp_avg * (one - w);
        d_g = d_g + d_exp_avg * w;
        d_beta1 = d_beta1 - d_exp_avg * (g - m_prev);
        // Weight decay.
        let mut d_theta = d_decayed;
        let mut d_weight_decay = zero;
        if !no_decay {
            if decoupled {
                d_theta = decay_factor * d_decayed;
                let d_factor = theta * d_decayed;
                d_lr = d_lr - weight_decay * d_factor;
                d_weight_decay = -(lr * d_factor);
            } else {
                d_theta = d_theta + weight_decay * d_g;
                d_weight_decay = theta * d_g;
            }
        }
        s.put(0, i, d_theta);
        s.put(1, i, d_g);
        s.put(2, i, d_m_prev);
        s.put(3, i, d_v_prev);
        s.put(4, i, d_max_prev);
        s.put(5, i, d_lr);
        s.put(6, i, d_beta1);
        s.put(7, i, d_beta2);
        s.put(8, i, d_eps);
        s.put(9, i, d_weight_decay);
    }
}
