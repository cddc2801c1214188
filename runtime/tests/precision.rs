//! `run.precision` (runtime::precision): libtorch's TF32 switches in each mode, and each mode's
//! second-order MAML meta-gradient of a task-batched Conv-4 (BatchNorm with batch statistics)
//! against the same computation in f64, on the CPU and, where present, on CUDA.
//!
//! The mode is process-wide, so every test takes [`LOCK`].

use std::sync::{Arc, Mutex};

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::precision::{self, Precision};
use metaloop_runtime::{Layout, Params};
use tch::{Device, Kind, Tensor};

static LOCK: Mutex<()> = Mutex::new(());

const TASKS: i64 = 2;
const WAYS: i64 = 5;
const SIDE: i64 = 28;
const LR: f64 = 0.1;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn each_mode_sets_libtorchs_tf32_switches() {
    let _g = lock();
    // (cuDNN, cuBLAS, oneDNN) after each mode.
    for (mode, want) in [
        (Precision::Fp32, (false, false, false)),
        (Precision::Tf32, (true, true, false)),
        (Precision::Bf16, (false, false, false)),
        // libtorch's defaults: TF32 for cuDNN convolutions only.
        (Precision::Default, (true, false, false)),
    ] {
        precision::set(mode).unwrap();
        assert_eq!(precision::current(), mode);
        assert_eq!(precision::tf32_switches().unwrap(), want, "{mode:?}");
    }
    assert!(Precision::Tf32.check(Device::Cpu).is_err());
    assert!(Precision::Bf16.check(Device::Cpu).is_ok());
    assert!(Precision::Tf32.check(Device::Cuda(0)).is_ok());
}

/// The meta-gradient of second-order MAML (inner lr [`LR`], two inner SGD steps) with
/// respect to θ0, for `TASKS` tasks batched in one call, computed in `kind`; returned in f64.
fn meta_gradient(model: &dyn Module, layout: &Arc<Layout>, kind: Kind, device: Device) -> Tensor {
    let theta0 = Params::init_layout(layout.clone(), 7, Kind::Double, device)
        .unwrap()
        .flat()
        .to_kind(kind)
        .detach()
        .set_requires_grad(true);
    // Seeded normal images (the same for every kind: drawn in f64 on the CPU, then cast).
    let images = |n: i64, seed: i64| {
        tch::manual_seed(seed);
        Tensor::randn([TASKS, n, 1, SIDE, SIDE], (Kind::Double, Device::Cpu))
            .to_device(device)
            .to_kind(kind)
    };
    let labels = |per: i64| {
        Tensor::arange(WAYS, (Kind::Int64, device))
            .repeat_interleave_self_int(per, 0, None)
            .repeat([TASKS])
    };
    let (xs, ys, xq, yq) = (images(WAYS, 3), labels(1), images(3 * WAYS, 17), labels(3));
    let loss = |theta: &Tensor, x: &Tensor, y: &Tensor| {
        let params = Params::from_flat(layout.clone(), theta.shallow_clone()).unwrap();
        let logits = model.forward(&params, x, true).unwrap();
        logits.reshape([-1, WAYS]).cross_entropy_for_logits(y) * TASKS as f64
    };
    let mut theta = theta0.unsqueeze(0).expand([TASKS, -1], false);
    for _ in 0..2 {
        let g = Tensor::run_backward(&[loss(&theta, &xs, &ys)], &[&theta], true, true);
        theta = &theta - &g[0] * LR;
    }
    let meta = Tensor::run_backward(&[loss(&theta, &xq, &yq)], &[&theta0], false, false);
    assert_eq!(
        meta[0].kind(),
        kind,
        "the meta-gradient keeps the parameters' kind"
    );
    meta[0].to_kind(Kind::Double)
}

/// ‖got − want‖ / ‖want‖.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    (got - want).norm().double_value(&[]) / want.norm().double_value(&[])
}

/// Each mode's relative error against f64 on `device`.
fn errors(device: Device, modes: &[Precision]) -> Vec<(Precision, f64)> {
    let model = nn::conv4_sized(1, WAYS, 8, SIDE);
    let layout = Arc::new(model.layout().unwrap());
    precision::set(Precision::Fp32).unwrap();
    let want = meta_gradient(&model, &layout, Kind::Double, device);
    let out = modes
        .iter()
        .map(|&mode| {
            precision::set(mode).unwrap();
            let got = meta_gradient(&model, &layout, Kind::Float, device);
            (mode, rel_err(&got, &want))
        })
        .collect();
    precision::set(Precision::Default).unwrap();
    out
}

/// Measured on the CPU (2026-12-06, x86-64, libtorch 2.11.0), relative L2 error of the
/// meta-gradient against f64: f32 (default and fp32) 2.8e-6, above the usual 1e-6 because two
/// second-order steps through batch-statistics BatchNorm cancel large terms; bf16 0.72: bf16 keeps
/// 8 significant bits (3.9e-3 per rounding) and the same cancellation magnifies that to an O(1)
/// error. So bf16 is no faithful second-order meta-gradient on this model: a speed mode to be
/// judged by training accuracy, not by parity. Bounds: about 2x the measures.
#[test]
fn bf16_meta_gradient_against_f64_on_the_cpu() {
    let _g = lock();
    let errs = errors(
        Device::Cpu,
        &[Precision::Default, Precision::Fp32, Precision::Bf16],
    );
    println!("cpu: relative errors {errs:?}");
    for (mode, err) in errs {
        let bound = if mode == Precision::Bf16 { 1.5 } else { 6e-6 };
        assert!(err <= bound, "{mode:?}: relative error {err:e} > {bound:e}");
        if mode == Precision::Bf16 {
            // The casts ran: bf16 is far from f32's agreement.
            assert!(
                err > 1e-4,
                "bf16: relative error {err:e}: were the casts skipped?"
            );
        }
    }
}

/// NOT YET RUN ON CUDA. Bounds from the CPU's measures until a GPU run measures them: fp32 as
/// the CPU's f32; TF32 keeps 11 significant bits (8x bf16's), so 0.72 / 8 ~ 0.1 doubled;
/// bf16 as on the CPU. `default` uses TF32 convolutions, so it gets TF32's bound.
#[test]
fn each_mode_against_f64_on_cuda() {
    if !tch::Cuda::is_available() {
        return;
    }
    let _g = lock();
    let all = [
        Precision::Default,
        Precision::Fp32,
        Precision::Tf32,
        Precision::Bf16,
    ];
    for (mode, err) in errors(Device::Cuda(0), &all) {
        let bound = match mode {
            Precision::Fp32 => 6e-6,
            Precision::Default | Precision::Tf32 => 0.2,
            Precision::Bf16 => 1.5,
        };
        println!("cuda {mode:?}: relative error {err:e}");
        assert!(
            err <= bound,
            "cuda {mode:?}: relative error {err:e} > {bound:e}"
        );
    }
}
