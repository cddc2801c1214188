//! The CPU kernels of the fused optimizer steps: one pass over contiguous f32/f64 buffers per
//! step, forward (θ', new state) and backward (the vector-Jacobian product w.r.t. θ, g, every state
//! buffer and every tensor hyperparameter), over the chunk of elements the shim hands each of
//! libtorch's intra-op threads (at::parallel_for): sharing libtorch's OpenMP pool instead of
//! starting a second one, whose threads would fight OpenMP's spinning workers for the cores.
//!
//! Each element's arithmetic follows runtime::optim's tensor-op update operation for operation (the
//! reference), so fused and unfused agree to rounding. These loops never allocate on the heap,
//! never call libtorch and never read outside the elements the shim laid out.
//!
//! Speed. Every option that changes the arithmetic's structure (momentum, Nesterov, AMSGrad,
//! decoupled weight decay, centered, the first step) is a const generic, so each option set gets
//! its own straight-line loop. The loop runs over blocks of [`BLOCK`] elements; every operand of a
//! block is a contiguous run: a buffer's own elements, a per-element hyperparameter's elements,
//! or a small on-stack block filled once with a value that is uniform over the row (a constant, a
//! `[]`/`[1]` tensor, a per-task `[T, 1]` tensor, a quantity derived from those such as a bias
//! correction). Results go to on-stack blocks that are then copied out (or, for the gradient of a
//! uniform hyperparameter, summed in f64 into one partial sum per chunk and row, which the shim
//! adds up: no per-element hypergradient buffer and no `sum_to`). The loop body has no branches
//! besides selects and no calls besides `sqrt`, so LLVM vectorizes it: with the baseline x86-64
//! SIMD (SSE2), and in a second copy compiled for AVX2 that runs where the CPU has it (detected at
//! run time; no `target-cpu` flag, the binary runs on any x86-64). Neither uses FMA, so both round
//! every operation alike. Quantities that need `powf` (bias corrections) are derived per row, or
//! per element only for a per-element tensor they depend on.

use super::ffi::{KernelCall, StepParams, MAX_HPARAMS, MAX_IN, MAX_OUT};
use super::StepKernel;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The elements of one block (the on-stack operand and result blocks' length).
const BLOCK: usize = 128;

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
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn powf(self, p: Self) -> Self;
    fn abs(self) -> Self;
}

/// `Real` for a primitive float type: its own `sqrt`, `powf` and `abs`.
macro_rules! real {
    ($($t:ident),*) => {$(
        impl Real for $t {
            #[inline(always)]
            #[allow(clippy::unnecessary_cast)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                $t::powf(self, p)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
        }
    )*};
}

real!(f32, f64);

/// `if c { a } else { b }` as a select (both sides are already computed).
#[inline(always)]
fn pick<T: Real>(c: bool, a: T, b: T) -> T {
    if c {
        a
    } else {
        b
    }
}

/// torch's `lerp(start, end, w)`: `start + w·(end − start)` for |w| < 0.5, else
/// `end − (end − start)·(1 − w)`.
#[inline(always)]
fn lerp<T: Real>(start: T, end: T, w: T) -> T {
    let diff = end - start;
    pick(
        w.abs() < T::of(0.5),
        start + w * diff,
        end - diff * (T::of(1.0) - w),
    )
}

/// The derivative of runtime::optim's masked square root `r = √x`: 0 where x is exactly 0.
#[inline(always)]
fn d_sqrt<T: Real>(x: T, root: T, d_root: T) -> T {
    let zero = T::of(0.0);
    pick(x == zero, zero, d_root / (T::of(2.0) * root))
}

/// torch.maximum's backward: the gradient goes to the larger side, halves at a tie. Returns
/// (d_a, d_b).
#[inline(always)]
fn d_max<T: Real>(a: T, b: T, d: T) -> (T, T) {
    let zero = T::of(0.0);
    let half = d * T::of(0.5);
    let da = pick(a == b, half, pick(a > b, d, zero));
    let db = pick(a == b, half, pick(a > b, zero, d));
    (da, db)
}

/// Coupled weight decay `g + wd·θ`; without weight decay (the constant 0, which the tensor-op path
/// skips) θ is not read.
#[inline(always)]
fn coupled<T: Real, const WD: bool>(g: T, wd: T, theta: T) -> T {
    if WD {
        g + wd * theta
    } else {
        g
    }
}

/// The backward of θ' = … (g + wd·θ) …: (∂θ, ∂wd) from ∂θ' and the gradient reaching g.
#[inline(always)]
fn d_coupled<T: Real, const WD: bool>(d_new: T, wd: T, theta: T, d_g: T) -> (T, T) {
    if WD {
        (d_new + wd * d_g, theta * d_g)
    } else {
        (d_new, T::of(0.0))
    }
}

/// torch's `sign`.
#[inline(always)]
fn sign<T: Real>(x: T) -> T {
    let zero = T::of(0.0);
    pick(x > zero, T::of(1.0), pick(x < zero, T::of(-1.0), zero))
}

/// A hyperparameter's value in the arithmetic that derives quantities from it, as runtime::optim's
/// `HValue` does: a constant in f64 (Python floats in torch.optim), a tensor's element in T.
#[derive(Debug, Clone, Copy)]
enum Hv<T> {
    C(f64),
    V(T),
}

impl<T: Real> Hv<T> {
    fn t(self) -> T {
        match self {
            Hv::C(c) => T::of(c),
            Hv::V(v) => v,
        }
    }
    /// `c − self`.
    fn rsub(self, c: f64) -> Hv<T> {
        match self {
            Hv::C(v) => Hv::C(c - v),
            Hv::V(v) => Hv::V(-v + T::of(c)),
        }
    }
    fn add_scalar(self, c: f64) -> Hv<T> {
        match self {
            Hv::C(v) => Hv::C(v + c),
            Hv::V(v) => Hv::V(v + T::of(c)),
        }
    }
    fn mul_scalar(self, c: f64) -> Hv<T> {
        match self {
            Hv::C(v) => Hv::C(v * c),
            Hv::V(v) => Hv::V(v * T::of(c)),
        }
    }
    fn powf(self, p: f64) -> Hv<T> {
        match self {
            Hv::C(v) => Hv::C(v.powf(p)),
            Hv::V(v) => Hv::V(v.powf(T::of(p))),
        }
    }
    fn mul(self, o: Hv<T>) -> Hv<T> {
        match (self, o) {
            (Hv::C(a), Hv::C(b)) => Hv::C(a * b),
            (Hv::C(a), Hv::V(t)) | (Hv::V(t), Hv::C(a)) => Hv::V(t * T::of(a)),
            (Hv::V(a), Hv::V(b)) => Hv::V(a * b),
        }
    }
    fn div(self, o: Hv<T>) -> Hv<T> {
        match (self, o) {
            (Hv::C(a), Hv::C(b)) => Hv::C(a / b),
            (Hv::C(a), Hv::V(t)) => Hv::V(T::of(1.0) / t * T::of(a)),
            (Hv::V(t), Hv::C(b)) => Hv::V(t / T::of(b)),
            (Hv::V(a), Hv::V(b)) => Hv::V(a / b),
        }
    }
}

/// Where one operand of the element function comes from.
#[derive(Debug, Clone, Copy)]
enum Src<T> {
    /// Zero everywhere (an absent buffer or output gradient).
    Zero,
    /// One value for every element (a constant, a one-element tensor).
    One(T),
    /// Element i of a buffer laid out like θ.
    Elem(*const T),
    /// Element `i % row_len` (a `[P]` tensor broadcast over the task rows of θ `[T, P]`).
    Col(*const T),
    /// Element `i / row_len` (one value per task row: `[T, 1]`).
    Row(*const T),
    /// Derived quantity `k` of the optimizer's `derive` (from the hyperparameters alone).
    Derived(usize),
}

impl<T: Real> Src<T> {
    /// The value at element `i` of row `row`.
    ///
    /// # Safety
    /// A pointer source must be valid at the index the mode reads.
    unsafe fn at(self, i: usize, row: usize, row_len: usize) -> T {
        unsafe {
            match self {
                Src::Zero | Src::Derived(_) => T::of(0.0),
                Src::One(v) => v,
                Src::Elem(p) => *p.add(i),
                Src::Col(p) => *p.add(i - row * row_len),
                Src::Row(p) => *p.add(row),
            }
        }
    }
    fn uniform(self) -> bool {
        !matches!(self, Src::Elem(_) | Src::Col(_))
    }
}

/// Where one result of the element function goes.
#[derive(Debug, Clone, Copy)]
enum Sink<T> {
    /// Nowhere (not needed).
    Skip,
    /// Element i of a buffer laid out like θ.
    Elem(*mut T),
    /// Summed (in f64) into `partial[chunk · rows + row]` (`per_row`) or `partial[chunk]`.
    Sum(*mut f64, bool),
}

/// What the optimizer derives from its hyperparameters alone: `(k, hyperparameters, params) →`
/// derived quantity k. Bit h of `deps[k]` says that quantity k depends on hyperparameter h.
struct Derive<T, const D: usize> {
    f: fn(usize, &[Hv<T>; MAX_HPARAMS], &StepParams) -> T,
    deps: [u8; D],
}

/// The typed view of one call.
struct Env<T> {
    begin: usize,
    end: usize,
    row_len: usize,
    rows: usize,
    chunk: usize,
    backward: bool,
    input: [Src<T>; MAX_IN],
    out: [*mut T; MAX_IN],
    reduced: [bool; MAX_IN],
    mode: [i64; MAX_IN],
    grad_out: [*const T; MAX_OUT],
    params: StepParams,
    /// The input slot of the first hyperparameter.
    hp0: usize,
    n_hp: usize,
    /// The CPU has AVX2 (checked once per call; the loops then use 256-bit vectors).
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl<T: Real> Env<T> {
    /// # Safety
    /// `call` comes from the shim (see `run`).
    unsafe fn new(call: &KernelCall, kernel: StepKernel) -> Result<Env<T>, String> {
        let bad = || {
            format!(
                "range {}..{} of {} (rows of {})",
                call.begin, call.end, call.numel, call.row_len
            )
        };
        let begin = usize::try_from(call.begin).map_err(|_| bad())?;
        let end = usize::try_from(call.end).map_err(|_| bad())?;
        let numel = usize::try_from(call.numel).map_err(|_| bad())?;
        let row_len = usize::try_from(call.row_len).map_err(|_| bad())?;
        if begin > end || end > numel || row_len == 0 || numel % row_len != 0 {
            return Err(bad());
        }
        let mut input = [Src::Zero; MAX_IN];
        for (k, src) in input.iter_mut().enumerate() {
            let p = call.input[k] as *const T;
            if p.is_null() {
                continue;
            }
            *src = match call.in_mode[k] {
                // SAFETY: a one-value input has element 0.
                0 => Src::One(unsafe { *p }),
                1 => Src::Elem(p),
                2 => Src::Col(p),
                3 => Src::Row(p),
                m => return Err(format!("input {k}: unknown layout {m}")),
            };
        }
        let mut out = [std::ptr::null_mut(); MAX_IN];
        let mut reduced = [false; MAX_IN];
        for k in 0..MAX_IN {
            out[k] = call.out[k] as *mut T;
            reduced[k] = call.out_reduced[k] != 0;
        }
        let mut grad_out = [std::ptr::null(); MAX_OUT];
        for (j, g) in grad_out.iter_mut().enumerate() {
            *g = call.grad_out[j] as *const T;
        }
        Ok(Env {
            begin,
            end,
            row_len,
            rows: numel / row_len,
            chunk: usize::try_from(call.chunk).map_err(|_| bad())?,
            backward: call.pass == 1,
            input,
            out,
            reduced,
            mode: call.in_mode,
            grad_out,
            params: call.params,
            hp0: kernel.hparam_slot(),
            n_hp: kernel.hparam_count(),
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        })
    }

    /// Input slot `k`.
    fn x(&self, k: usize) -> Src<T> {
        self.input[k]
    }
    /// Hyperparameter `h`: its tensor, or its constant.
    fn h(&self, h: usize) -> Src<T> {
        match self.input[self.hp0 + h] {
            Src::Zero => Src::One(T::of(self.params.hparams[h])),
            s => s,
        }
    }
    /// The gradient of forward output `j` (backward).
    fn dy(&self, j: usize) -> Src<T> {
        let p = self.grad_out[j];
        if p.is_null() {
            Src::Zero
        } else {
            Src::Elem(p)
        }
    }
    /// The backward's operands: the forward's `xs`, then `more`, then the gradient of each
    /// forward output.
    fn backward_operands<const NX: usize, const N: usize>(
        &self,
        xs: [Src<T>; NX],
        more: &[Src<T>],
    ) -> [Src<T>; N] {
        std::array::from_fn(|k| match k.checked_sub(NX) {
            None => xs[k],
            Some(m) if m < more.len() => more[m],
            Some(m) => self.dy(m - more.len()),
        })
    }
    /// The backward's results: the gradient of the first `n_x` input slots (θ, g, the state
    /// buffers), then of each hyperparameter.
    fn input_grads<const N: usize>(&self, n_x: usize) -> [Sink<T>; N] {
        std::array::from_fn(|k| match k.checked_sub(n_x) {
            None => self.dx(k),
            Some(h) => self.dh(h),
        })
    }
    /// Forward output `j`.
    fn y(&self, j: usize) -> Sink<T> {
        let p = self.out[j];
        if p.is_null() {
            Sink::Skip
        } else {
            Sink::Elem(p)
        }
    }
    /// The gradient of input slot `k` (backward).
    fn dx(&self, k: usize) -> Sink<T> {
        let p = self.out[k];
        if p.is_null() {
            Sink::Skip
        } else if self.reduced[k] {
            Sink::Sum(p.cast::<f64>(), self.mode[k] == 3)
        } else {
            Sink::Elem(p)
        }
    }
    /// The gradient of hyperparameter `h` (backward).
    fn dh(&self, h: usize) -> Sink<T> {
        self.dx(self.hp0 + h)
    }
    /// False when hyperparameter `h` (a weight decay) is the constant 0.
    fn decays(&self, h: usize) -> bool {
        !matches!(self.input[self.hp0 + h], Src::Zero) || self.params.hparams[h] != 0.0
    }
    /// The hyperparameters at element `i` of row `row`, for `derive`.
    ///
    /// # Safety
    /// `i` is in the call's range.
    unsafe fn hvs(&self, i: usize, row: usize) -> [Hv<T>; MAX_HPARAMS] {
        let mut hv = [Hv::C(0.0); MAX_HPARAMS];
        for (h, v) in hv.iter_mut().enumerate().take(self.n_hp) {
            *v = match self.input[self.hp0 + h] {
                Src::Zero => Hv::C(self.params.hparams[h]),
                // SAFETY: see the function's contract.
                s => Hv::V(unsafe { s.at(i, row, self.row_len) }),
            };
        }
        hv
    }
    /// A bit per hyperparameter that is not uniform over a row.
    fn varying(&self) -> u8 {
        let mut bits = 0u8;
        for h in 0..self.n_hp.min(MAX_HPARAMS) {
            if !self.input[self.hp0 + h].uniform() {
                bits |= 1 << h;
            }
        }
        bits
    }
}

/// The sum of `v` in f64, in 8 lanes (vectorizable: each lane adds in order).
#[inline(always)]
fn lane_sum<T: Real>(v: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j].to_f64();
        }
    }
    let mut total = 0.0;
    for r in rest {
        total += r.to_f64();
    }
    acc.iter().sum::<f64>() + total
}

/// Runs the call's pass. The forward: `forward` over the operands `xs`, into the outputs `ys`.
/// The backward: `backward` over `xs`, then `more` (quantities only the backward needs), then the
/// gradient of each forward output, into the gradients of the input slots (θ, g, the state
/// buffers) and of each hyperparameter.
///
/// # Safety
/// As [`drive`].
#[inline(always)]
unsafe fn pass<
    T: Real,
    const NX: usize,
    const NY: usize,
    const NB: usize,
    const NG: usize,
    const D: usize,
>(
    env: &Env<T>,
    derive: &Derive<T, D>,
    xs: [Src<T>; NX],
    more: &[Src<T>],
    ys: [Sink<T>; NY],
    forward: impl Fn(&[T; NX]) -> [T; NY],
    backward: impl Fn(&[T; NB]) -> [T; NG],
) {
    // SAFETY: this function's contract.
    unsafe {
        if env.backward {
            let operands: [Src<T>; NB] = env.backward_operands(xs, more);
            drive(env, operands, derive, env.input_grads(env.hp0), backward);
        } else {
            drive(env, xs, derive, ys, forward);
        }
    }
}

/// Runs the element function `f` over the call's range: `xs` are its operands, `ys` where its
/// results go. See the module documentation for the blocking. On a CPU with AVX2 the loop is
/// compiled for it (256-bit vectors; no FMA, so every operation rounds as in the baseline build).
///
/// # Safety
/// Every pointer in `xs`, `ys` and `env` is valid for the elements the call covers.
#[inline(always)]
unsafe fn drive<T: Real, const NX: usize, const NY: usize, const D: usize>(
    env: &Env<T>,
    xs: [Src<T>; NX],
    derive: &Derive<T, D>,
    ys: [Sink<T>; NY],
    f: impl Fn(&[T; NX]) -> [T; NY],
) {
    #[cfg(target_arch = "x86_64")]
    if env.avx2 {
        // SAFETY: the CPU has AVX2; the rest is this function's contract.
        unsafe { drive_avx2(env, xs, derive, ys, f) };
        return;
    }
    // SAFETY: this function's contract.
    unsafe { drive_blocks(env, xs, derive, ys, f) }
}

/// `drive_blocks` compiled with AVX2.
///
/// # Safety
/// As `drive`; the CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn drive_avx2<T: Real, const NX: usize, const NY: usize, const D: usize>(
    env: &Env<T>,
    xs: [Src<T>; NX],
    derive: &Derive<T, D>,
    ys: [Sink<T>; NY],
    f: impl Fn(&[T; NX]) -> [T; NY],
) {
    // SAFETY: this function's contract.
    unsafe { drive_blocks(env, xs, derive, ys, f) }
}

/// The blocked loop of `drive`.
///
/// # Safety
/// As `drive`.
#[inline(always)]
unsafe fn drive_blocks<T: Real, const NX: usize, const NY: usize, const D: usize>(
    env: &Env<T>,
    xs: [Src<T>; NX],
    derive: &Derive<T, D>,
    ys: [Sink<T>; NY],
    f: impl Fn(&[T; NX]) -> [T; NY],
) {
    let zero = T::of(0.0);
    let mut fill = [[zero; BLOCK]; NX];
    let mut res = [[zero; BLOCK]; NY];
    let varying = env.varying();
    let mut i = env.begin;
    while i < env.end {
        let row = i / env.row_len;
        let seg_end = env.end.min((row + 1) * env.row_len);
        // SAFETY: i is in range.
        let ops = unsafe { row_operands(env, &xs, derive, varying, i, &mut fill) };
        let mut acc = [0.0f64; NY];
        let mut j = i;
        while j < seg_end {
            let n = BLOCK.min(seg_end - j);
            for k in 0..NX {
                if let (true, Src::Derived(d)) = (ops.per_element_derived[k], xs[k]) {
                    for (e, v) in fill[k][..n].iter_mut().enumerate() {
                        // SAFETY: j + e is in range.
                        *v = (derive.f)(d, unsafe { &env.hvs(j + e, row) }, &env.params);
                    }
                }
            }
            let ptr: [*const T; NX] = std::array::from_fn(|k| {
                if ops.advance[k] {
                    // SAFETY: j − i < seg_end − i elements from the row's first.
                    unsafe { ops.base[k].add(j - i) }
                } else {
                    fill[k].as_ptr()
                }
            });
            #[allow(clippy::needless_range_loop)] // e indexes every operand and every result
            for e in 0..n {
                // SAFETY: each pointer has n elements from here (a buffer, or a filled block).
                let x: [T; NX] = std::array::from_fn(|k| unsafe { *ptr[k].add(e) });
                let y = f(&x);
                for q in 0..NY {
                    res[q][e] = y[q];
                }
            }
            // SAFETY: elements j..j + n are in the call's range.
            unsafe { store_block(&ys, &res, j, n, &mut acc) };
            j += n;
        }
        // SAFETY: the sums of this chunk's elements of `row`.
        unsafe { add_partial_sums(env, &ys, &acc, row) };
        i = seg_end;
    }
}

/// Where the operands of one row come from in `drive_blocks`.
struct RowOperands<T, const NX: usize> {
    /// A pointer to the row's first element of each advancing operand.
    base: [*const T; NX],
    /// The operand advances with the element (a buffer, a per-element hyperparameter).
    advance: [bool; NX],
    /// The operand is a derived quantity computed per element (its block is refilled per block).
    per_element_derived: [bool; NX],
}

/// The operands of the row holding element `i`: the advancing ones by pointer, the others
/// (uniform over the row) as filled blocks in `fill`.
///
/// # Safety
/// `i` is in the call's range; the rest is `drive`'s contract.
#[inline(always)]
unsafe fn row_operands<T: Real, const NX: usize, const D: usize>(
    env: &Env<T>,
    xs: &[Src<T>; NX],
    derive: &Derive<T, D>,
    varying: u8,
    i: usize,
    fill: &mut [[T; BLOCK]; NX],
) -> RowOperands<T, NX> {
    let row_len = env.row_len;
    let row = i / row_len;
    let mut ops = RowOperands {
        base: [std::ptr::null::<T>(); NX],
        advance: [false; NX],
        per_element_derived: [false; NX],
    };
    for k in 0..NX {
        let value = match xs[k] {
            Src::Elem(p) => {
                ops.base[k] = unsafe { p.add(i) };
                ops.advance[k] = true;
                continue;
            }
            Src::Col(p) => {
                ops.base[k] = unsafe { p.add(i - row * row_len) };
                ops.advance[k] = true;
                continue;
            }
            Src::Derived(d) => {
                if derive.deps[d] & varying != 0 {
                    ops.per_element_derived[k] = true;
                    continue;
                }
                // SAFETY: i is in range.
                (derive.f)(d, unsafe { &env.hvs(i, row) }, &env.params)
            }
            // SAFETY: i is in range.
            s => unsafe { s.at(i, row, row_len) },
        };
        fill[k] = [value; BLOCK];
    }
    ops
}

/// Copies a block of results out (elements `j..j + n`), or adds it to the running sums `acc`.
///
/// # Safety
/// Each `Sink::Elem` output has elements `j..j + n`.
#[inline(always)]
unsafe fn store_block<T: Real, const NY: usize>(
    ys: &[Sink<T>; NY],
    res: &[[T; BLOCK]; NY],
    j: usize,
    n: usize,
    acc: &mut [f64; NY],
) {
    for q in 0..NY {
        match ys[q] {
            Sink::Skip => {}
            // SAFETY: the output has the call's elements; it does not alias `res`.
            Sink::Elem(p) => unsafe { std::ptr::copy_nonoverlapping(res[q].as_ptr(), p.add(j), n) },
            Sink::Sum(..) => acc[q] += lane_sum(&res[q][..n]),
        }
    }
}

/// Adds a row's sums to this chunk's partial sums.
///
/// # Safety
/// The shim allocates chunks × (rows or 1) partial sums for each `Sink::Sum`.
#[inline(always)]
unsafe fn add_partial_sums<T: Real, const NY: usize>(
    env: &Env<T>,
    ys: &[Sink<T>; NY],
    acc: &[f64; NY],
    row: usize,
) {
    for q in 0..NY {
        if let Sink::Sum(p, per_row) = ys[q] {
            let at = if per_row {
                env.chunk * env.rows + row
            } else {
                env.chunk
            };
            // SAFETY: in the allocation (see the contract); each chunk is written by one thread
            // only.
            unsafe { *p.add(at) += acc[q] };
        }
    }
}

/// Calls `$f::<T, a, b, …>($args)` with each runtime bool turned into a const generic.
macro_rules! specialise {
    ($f:ident::<$t:ty>($($arg:expr),*) [] [$($done:expr),*]) => {
        $f::<$t, $({ $done }),*>($($arg),*)
    };
    ($f:ident::<$t:ty>($($arg:expr),*) [$b:expr $(, $rest:expr)*] [$($done:expr),*]) => {
        if $b {
            specialise!($f::<$t>($($arg),*) [$($rest),*] [$($done,)* true])
        } else {
            specialise!($f::<$t>($($arg),*) [$($rest),*] [$($done,)* false])
        }
    };
}

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod dispatch;
mod rmsprop;
mod rprop;
mod sgd;

pub(crate) use dispatch::run;
