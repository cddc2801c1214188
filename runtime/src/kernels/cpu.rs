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

use super::ffi::{KernelCall, MAX_CONST, MAX_IN, MAX_OUT};
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

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
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
    fn to_f64(self) -> f64 {
        self
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

/// What the optimizer derives from its hyperparameters alone: `(k, hyperparameters, consts) →`
/// derived quantity k. Bit h of `deps[k]` says that quantity k depends on hyperparameter h.
struct Derive<T, const D: usize> {
    f: fn(usize, &[Hv<T>; 8], &[f64; MAX_CONST]) -> T,
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
    consts: [f64; MAX_CONST],
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
            consts: call.consts,
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
            Src::Zero => Src::One(T::of(self.consts[h])),
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
    fn flag(&self, k: usize) -> bool {
        self.consts[k] != 0.0
    }
    /// False when hyperparameter `h` (a weight decay) is the constant 0.
    fn decays(&self, h: usize) -> bool {
        !matches!(self.input[self.hp0 + h], Src::Zero) || self.consts[h] != 0.0
    }
    /// The hyperparameters at element `i` of row `row`, for `derive`.
    ///
    /// # Safety
    /// `i` is in the call's range.
    unsafe fn hvs(&self, i: usize, row: usize) -> [Hv<T>; 8] {
        let mut hv = [Hv::C(0.0); 8];
        for (h, v) in hv.iter_mut().enumerate().take(self.n_hp) {
            *v = match self.input[self.hp0 + h] {
                Src::Zero => Hv::C(self.consts[h]),
                // SAFETY: see the function's contract.
                s => Hv::V(unsafe { s.at(i, row, self.row_len) }),
            };
        }
        hv
    }
    /// A bit per hyperparameter that is not uniform over a row.
    fn varying(&self) -> u8 {
        let mut bits = 0u8;
        for h in 0..self.n_hp.min(8) {
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
    let row_len = env.row_len;
    let mut i = env.begin;
    while i < env.end {
        let row = i / row_len;
        let seg_end = env.end.min((row + 1) * row_len);
        // Per row: a pointer to each advancing operand's first element; the others are filled
        // blocks (once per row, or per block for a quantity derived per element).
        let mut base = [std::ptr::null::<T>(); NX];
        let mut advance = [false; NX];
        let mut per_element_derived = [false; NX];
        for k in 0..NX {
            let value = match xs[k] {
                Src::Elem(p) => {
                    base[k] = unsafe { p.add(i) };
                    advance[k] = true;
                    continue;
                }
                Src::Col(p) => {
                    base[k] = unsafe { p.add(i - row * row_len) };
                    advance[k] = true;
                    continue;
                }
                Src::Derived(d) => {
                    if derive.deps[d] & varying != 0 {
                        per_element_derived[k] = true;
                        continue;
                    }
                    // SAFETY: i is in range.
                    (derive.f)(d, unsafe { &env.hvs(i, row) }, &env.consts)
                }
                // SAFETY: i is in range.
                s => unsafe { s.at(i, row, row_len) },
            };
            fill[k] = [value; BLOCK];
        }
        let mut acc = [0.0f64; NY];
        let mut j = i;
        while j < seg_end {
            let n = BLOCK.min(seg_end - j);
            for k in 0..NX {
                if let (true, Src::Derived(d)) = (per_element_derived[k], xs[k]) {
                    for (e, v) in fill[k][..n].iter_mut().enumerate() {
                        // SAFETY: j + e is in range.
                        *v = (derive.f)(d, unsafe { &env.hvs(j + e, row) }, &env.consts);
                    }
                }
            }
            let ptr: [*const T; NX] = std::array::from_fn(|k| {
                if advance[k] {
                    // SAFETY: j − i < seg_end − i elements from the row's first.
                    unsafe { base[k].add(j - i) }
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
            for q in 0..NY {
                match ys[q] {
                    Sink::Skip => {}
                    // SAFETY: the output has the call's elements; it does not alias `res`.
                    Sink::Elem(p) => unsafe {
                        std::ptr::copy_nonoverlapping(res[q].as_ptr(), p.add(j), n)
                    },
                    Sink::Sum(..) => acc[q] += lane_sum(&res[q][..n]),
                }
            }
            j += n;
        }
        for q in 0..NY {
            if let Sink::Sum(p, per_row) = ys[q] {
                let at = if per_row {
                    env.chunk * env.rows + row
                } else {
                    env.chunk
                };
                // SAFETY: the shim allocates chunks × (rows or 1) partial sums; each chunk is
                // written by one thread only.
                unsafe { *p.add(at) += acc[q] };
            }
        }
        i = seg_end;
    }
}

/// Runs one call on the CPU.
///
/// # Safety
/// `call` must come from the shim: every non-null pointer valid for the elements its layout reads
/// (θ's `numel`, a row's `row_len`, the number of rows, or one), of the dtype it names (partial
/// sums: f64), outputs not aliasing inputs.
pub(crate) unsafe fn run(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    match call.dtype {
        0 => unsafe { run_typed::<f32>(kernel, call) },
        1 => unsafe { run_typed::<f64>(kernel, call) },
        d => Err(format!("unknown dtype code {d}")),
    }
}

unsafe fn run_typed<T: Real>(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    // SAFETY (all): the contract of `run`.
    unsafe {
        let env = Env::<T>::new(call, kernel)?;
        match kernel {
            StepKernel::Sgd => sgd(&env),
            StepKernel::Adam => adam(&env),
            StepKernel::Adamax => adamax(&env),
            StepKernel::Adagrad => adagrad(&env),
            StepKernel::RMSprop => rmsprop(&env),
            StepKernel::Adadelta => adadelta(&env),
            StepKernel::Rprop => rprop(&env),
        }
    }
    Ok(())
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

// ---- SGD -----------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 momentum_buffer (absent at step 0), 3.. lr, momentum, dampening,
// weight_decay. Consts: 0..4 the hyperparameters' constants, 4 previous step count, 5 nesterov,
// 6 momentum path. Outputs: 0 θ', 1 momentum_buffer' (momentum path only).
// Weight decay and dampening are computed even when they are the constant 0 (g + 0·θ = g and
// (1 − 0)·g = g exactly, as the tensor-op path's skipped terms).

fn sgd_derive<T: Real>(_: usize, h: &[Hv<T>; 8], _: &[f64; MAX_CONST]) -> T {
    h[2].rsub(1.0).t()
}

unsafe fn sgd<T: Real>(env: &Env<T>) {
    let (momentum, nesterov, first) = (env.flag(6), env.flag(5), env.consts[4] == 0.0);
    let wd = env.decays(3);
    unsafe { specialise!(sgd_go::<T>(env) [momentum, nesterov, first, wd] []) }
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
    unsafe {
        if !env.backward {
            let ys = [env.y(0), if MOMENTUM { env.y(1) } else { Sink::Skip }];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, prev, lr, mu, wd, keep]| {
                    let g = coupled::<T, WD>(g0, wd, theta);
                    let buf = if FIRST { g } else { prev * mu + keep * g };
                    let dir = if !MOMENTUM {
                        g
                    } else if NESTEROV {
                        g + buf * mu
                    } else {
                        buf
                    };
                    [theta - dir * lr, buf]
                },
            );
        } else {
            let xs = [
                xs[0],
                xs[1],
                xs[2],
                xs[3],
                xs[4],
                xs[5],
                xs[6],
                env.dy(0),
                env.dy(1),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, prev, lr, mu, wd, keep, d_new, d_buf_out]| {
                    let zero = T::of(0.0);
                    let g = coupled::<T, WD>(g0, wd, theta);
                    let buf = if FIRST { g } else { prev * mu + keep * g };
                    let dir = if !MOMENTUM {
                        g
                    } else if NESTEROV {
                        g + buf * mu
                    } else {
                        buf
                    };
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
                },
            );
        }
    }
}

// ---- Adam / AdamW -------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (amsgrad only), 5.. lr, beta1,
// beta2, eps, weight_decay. Consts: 0..5 the hyperparameters' constants, 5 the new step count t,
// 6 decoupled weight decay (AdamW), 7 amsgrad.
// Outputs: 0 θ', 1 exp_avg', 2 exp_avg_sq', 3 max_exp_avg_sq' (amsgrad only).

/// Adam's derived quantities, as the tensor-op path computes them: 0 `1 − β1`, 1 `1 − β2`,
/// 2 `1 − β1ᵗ`, 3 `lr / (1 − β1ᵗ)`, 4 `√(1 − β2ᵗ)`, 5 `1 − lr·wd`; for the backward 6 `β1ᵗ⁻¹`,
/// 7 `β2ᵗ⁻¹`, 8 `½·(1 − β2ᵗ)^(−½)` (in T).
fn adam_derive<T: Real>(k: usize, h: &[Hv<T>; 8], c: &[f64; MAX_CONST]) -> T {
    let t = c[5];
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

unsafe fn adam<T: Real>(env: &Env<T>) {
    let (decoupled, amsgrad) = (env.flag(6), env.flag(7));
    let wd = env.decays(4);
    unsafe { specialise!(adam_go::<T>(env) [decoupled, amsgrad, wd] []) }
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
    unsafe {
        if !env.backward {
            let ys = [
                env.y(0),
                env.y(1),
                env.y(2),
                if AMSGRAD { env.y(3) } else { Sink::Skip },
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, m, v, vmax, beta2, eps, wd, w1, omb2, step, bc2s, decay, _lr]| {
                    let (decayed, g) = if !WD {
                        (theta, g0)
                    } else if DECOUPLED {
                        (decay * theta, g0)
                    } else {
                        (theta, g0 + wd * theta)
                    };
                    let exp_avg = lerp(m, g, w1);
                    let exp_avg_sq = v * beta2 + omb2 * (g * g);
                    let second = if AMSGRAD {
                        pick(vmax > exp_avg_sq, vmax, exp_avg_sq)
                    } else {
                        exp_avg_sq
                    };
                    let denom = second.sqrt() / bc2s + eps;
                    [
                        decayed - step * (exp_avg / denom),
                        exp_avg,
                        exp_avg_sq,
                        second,
                    ]
                },
            );
        } else {
            let xs = [
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
                xs[11],
                xs[12],
                xs[13],
                d(2),
                d(6),
                d(7),
                d(8),
                env.dy(0),
                env.dy(1),
                env.dy(2),
                env.dy(3),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dx(3),
                env.dx(4),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
                env.dh(4),
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, m, v, vmax, beta2, eps, wd, w1, omb2, step, bc2s, decay, lr, bc1, pow1, pow2, half_rsqrt_bc2, d_new, d_m_out, d_v_out, d_vmax_out]| {
                    let zero = T::of(0.0);
                    let one = T::of(1.0);
                    let g = if DECOUPLED { g0 } else { coupled::<T, WD>(g0, wd, theta) };
                    let exp_avg = lerp(m, g, w1);
                    let exp_avg_sq = v * beta2 + omb2 * (g * g);
                    let second = if AMSGRAD {
                        pick(vmax > exp_avg_sq, vmax, exp_avg_sq)
                    } else {
                        exp_avg_sq
                    };
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
                    let t = T::of(env.consts[5]);
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
                },
            );
        }
    }
}

// ---- Adamax --------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 exp_avg, 3 exp_inf, 4.. lr, beta1, beta2, eps, weight_decay. Consts: 0..5
// the hyperparameters' constants, 5 the new step count t. Outputs: 0 θ', 1 exp_avg', 2 exp_inf'.

/// 0 `1 − β1`, 1 `1 − β1ᵗ`, 2 `lr / (1 − β1ᵗ)`, 3 `∂(1 − β1ᵗ)/∂β1`.
fn adamax_derive<T: Real>(k: usize, h: &[Hv<T>; 8], c: &[f64; MAX_CONST]) -> T {
    let t = c[5];
    let bc = h[1].powf(t).rsub(1.0);
    let tt = T::of(t);
    match k {
        0 => h[1].rsub(1.0).t(),
        1 => bc.t(),
        2 => h[0].div(bc).t(),
        _ => -(tt * h[1].t().powf(tt - T::of(1.0))),
    }
}

unsafe fn adamax<T: Real>(env: &Env<T>) {
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
    unsafe {
        if !env.backward {
            let ys = [env.y(0), env.y(1), env.y(2)];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, m, u, beta2, eps, wd, w1, clr]| {
                    let g = coupled::<T, WD>(g0, wd, theta);
                    let exp_avg = lerp(m, g, w1);
                    let (a, b) = (u * beta2, g.abs() + eps);
                    let exp_inf = pick(a > b, a, b);
                    [theta - (exp_avg / exp_inf) * clr, exp_avg, exp_inf]
                },
            );
        } else {
            let xs = [
                xs[0],
                xs[1],
                xs[2],
                xs[3],
                xs[4],
                xs[5],
                xs[6],
                xs[7],
                xs[8],
                d(1),
                d(3),
                env.dy(0),
                env.dy(1),
                env.dy(2),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dx(3),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
                env.dh(4),
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, m, u, beta2, eps, wd, w1, clr, bc, dbc, d_new, d_m_out, d_u_out]| {
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
                },
            );
        }
    }
}

// ---- Adagrad -------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 sum (absent at the first step), 3.. lr, lr_decay, weight_decay,
// initial_accumulator_value, eps. Consts: 0..5 the hyperparameters' constants, 5 the new step
// count t, 6 first step (the accumulator starts at initial_accumulator_value). Outputs: 0 θ',
// 1 sum'.

/// 0 `1 + (t − 1)·lr_decay`, 1 `lr / (1 + (t − 1)·lr_decay)`.
fn adagrad_derive<T: Real>(k: usize, h: &[Hv<T>; 8], c: &[f64; MAX_CONST]) -> T {
    let den = h[1].mul_scalar(c[5] - 1.0).add_scalar(1.0);
    match k {
        0 => den.t(),
        _ => h[0].div(den).t(),
    }
}

unsafe fn adagrad<T: Real>(env: &Env<T>) {
    let first = env.flag(6);
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
    unsafe {
        if !env.backward {
            let ys = [env.y(0), env.y(1)];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, s, wd, init, eps, clr]| {
                    let g = coupled::<T, WD>(g0, wd, theta);
                    let sum = if FIRST { init } else { s } + g * g;
                    let std = sum.sqrt() + eps;
                    [theta - (g / std) * clr, sum]
                },
            );
        } else {
            let xs = [
                xs[0],
                xs[1],
                xs[2],
                xs[3],
                xs[4],
                xs[5],
                xs[6],
                d(0),
                env.dy(0),
                env.dy(1),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
                env.dh(4),
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, s, wd, init, eps, clr, den, d_new, d_sum_out]| {
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
                    let d_lr_decay = d_den * T::of(env.consts[5] - 1.0);
                    let (d_theta, d_wd) = d_coupled::<T, WD>(d_new, wd, theta, d_g);
                    [d_theta, d_g, d_s, d_lr, d_lr_decay, d_wd, d_init, d_std]
                },
            );
        }
    }
}

// ---- RMSprop -------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 square_avg, 3 momentum_buffer, 4 grad_avg (each absent reads as zeros),
// 5.. lr, alpha, eps, weight_decay, momentum. Consts: 0..5 the hyperparameters' constants,
// 5 centered, 6 momentum path. Outputs: 0 θ', 1 square_avg', then momentum_buffer' (momentum
// path), then grad_avg' (centered).

/// 0 `1 − α`.
fn rmsprop_derive<T: Real>(_: usize, h: &[Hv<T>; 8], _: &[f64; MAX_CONST]) -> T {
    h[1].rsub(1.0).t()
}

unsafe fn rmsprop<T: Real>(env: &Env<T>) {
    let (centered, momentum) = (env.flag(5), env.flag(6));
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
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dx(3),
                env.dx(4),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
                env.dh(4),
            ];
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

// ---- Adadelta ------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 square_avg, 3 acc_delta, 4.. lr, rho, eps, weight_decay. Consts: 0..4 the
// hyperparameters' constants. Outputs: 0 θ', 1 square_avg', 2 acc_delta'.

/// 0 `1 − ρ`.
fn adadelta_derive<T: Real>(_: usize, h: &[Hv<T>; 8], _: &[f64; MAX_CONST]) -> T {
    h[1].rsub(1.0).t()
}

unsafe fn adadelta<T: Real>(env: &Env<T>) {
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
    unsafe {
        if !env.backward {
            let ys = [env.y(0), env.y(1), env.y(2)];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, v, a, lr, rho, eps, wd, w]| {
                    let g = coupled::<T, WD>(g0, wd, theta);
                    let square_avg = v * rho + (g * g) * w;
                    let std = (square_avg + eps).sqrt();
                    let delta = (a + eps).sqrt() / std * g;
                    let acc_delta = a * rho + (delta * delta) * w;
                    [theta - delta * lr, square_avg, acc_delta]
                },
            );
        } else {
            let xs = [
                xs[0],
                xs[1],
                xs[2],
                xs[3],
                xs[4],
                xs[5],
                xs[6],
                xs[7],
                xs[8],
                env.dy(0),
                env.dy(1),
                env.dy(2),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dx(3),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
            ];
            drive(
                env,
                xs,
                &derive,
                ys,
                |&[theta, g0, v, a, lr, rho, eps, wd, w, d_new, d_v_out, d_a_out]| {
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
                },
            );
        }
    }
}

// ---- Rprop ---------------------------------------------------------------------------------
// Inputs: 0 θ, 1 g, 2 prev, 3 step_size (absent at the first step: the step sizes start at lr),
// 4.. lr, eta_minus, eta_plus, step_size_min, step_size_max. Consts: 0..5 the hyperparameters'
// constants, 5 first step. Outputs: 0 θ', 1 prev', 2 step_size'.
// The backward is autograd's of the tensor-op path: sign and the comparisons pass no gradient;
// clamp passes it where min ≤ x ≤ max (to the bound where x is strictly beyond it).

fn rprop_derive<T: Real>(_: usize, _: &[Hv<T>; 8], _: &[f64; MAX_CONST]) -> T {
    T::of(0.0)
}

unsafe fn rprop<T: Real>(env: &Env<T>) {
    let first = env.flag(5);
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
    unsafe {
        if !env.backward {
            let ys = [env.y(0), env.y(1), env.y(2)];
            drive(env, xs, &derive, ys, |x| {
                let (_, _, _, _, _, _, step_size, g_kept, theta_new) = forward(x);
                [theta_new, g_kept, step_size]
            });
        } else {
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
                env.dy(0),
                env.dy(1),
                env.dy(2),
            ];
            let ys = [
                env.dx(0),
                env.dx(1),
                env.dx(2),
                env.dx(3),
                env.dh(0),
                env.dh(1),
                env.dh(2),
                env.dh(3),
                env.dh(4),
            ];
            drive(env, xs2, &derive, ys, |x| {
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
            });
        }
    }
}
