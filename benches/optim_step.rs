//! One optimizer step, fused kernel (runtime::kernels) against the tensor-op path
//! (`.fused(false)`): every optimizer of runtime::optim (SGD with momentum, Adam, Adamax, Adagrad,
//! RMSprop, Adadelta, Rprop), on the flat parameters of Conv-4 with 64 filters
//! (P = 112,261 for 5 ways, the "113k") for T = 8 tasks at once, f32 on the CPU (and on CUDA when present);
//! forward only (a first-order step / the outer step) and forward + backward (a differentiable
//! step whose meta-gradient flows back through it, hypergradient w.r.t. a learned lr included).
//!
//! Run: `cargo bench -p metaloop --bench optim_step`. It measures and prints; it asserts nothing.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use metaloop::runtime::optim::{self, HParams, HValue, Optimizer};
use tch::{Device, Kind, Tensor};

/// Conv-4 (64 filters, 3×3, BatchNorm) on 1×28×28 inputs with a 5-way head: 4 conv blocks
/// (640 + 3 × 36,928 weights and biases, 4 × 128 BatchNorm) + a 64 × 5 linear layer.
const P: i64 = 640 + 3 * 36_928 + 4 * 128 + 64 * 5 + 5;
const T: i64 = 8;

fn optimizers(fused: bool) -> Vec<(&'static str, Box<dyn Optimizer>)> {
    vec![
        (
            "sgd_momentum",
            Box::new(optim::Sgd::new(0.4).momentum(0.9).fused(fused)),
        ),
        ("adam", Box::new(optim::Adam::new(1e-3).fused(fused))),
        ("adamax", Box::new(optim::Adamax::new(2e-3).fused(fused))),
        ("adagrad", Box::new(optim::Adagrad::new(1e-2).fused(fused))),
        ("rmsprop", Box::new(optim::RMSprop::new(1e-2).fused(fused))),
        ("adadelta", Box::new(optim::Adadelta::new(1.0).fused(fused))),
        ("rprop", Box::new(optim::Rprop::new(1e-2).fused(fused))),
    ]
}

fn bench_device(c: &mut Criterion, device: Device) {
    let o = (Kind::Float, device);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let dev = if device == Device::Cpu { "cpu" } else { "cuda" };
    let mut group = c.benchmark_group(format!("optim_step/{dev}/T{T}xP{P}"));
    tch::manual_seed(0);
    let theta = Tensor::randn([T, P], o);
    let grad = Tensor::randn([T, P], o);
    for fused in [true, false] {
        let path = if fused { "fused" } else { "unfused" };
        for (name, opt) in optimizers(fused) {
            // A state after one step, so that every buffer is in play.
            let hp = HParams::defaults(opt.as_ref());
            let state0 = opt.init_state(&theta).unwrap();
            let (_, state) = opt.update(&theta, &grad, &state0, &hp).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}/forward"), path), |b| {
                b.iter(|| {
                    let out = opt.update(&theta, &grad, &state, &hp).unwrap();
                    sync();
                    out
                })
            });
            // Forward + backward: θ, g and a learned scalar lr require grad; the meta-loss's
            // gradient flows back through the step to all three.
            let theta_leaf = theta.copy().set_requires_grad(true);
            let grad_leaf = grad.copy().set_requires_grad(true);
            let lr = Tensor::from(opt.hparam_default("lr").unwrap())
                .to_kind(Kind::Float)
                .to_device(device)
                .set_requires_grad(true);
            let mut hp_lr = HParams::defaults(opt.as_ref());
            hp_lr.set("lr", HValue::Tensor(lr.shallow_clone())).unwrap();
            let weights = Tensor::randn([T, P], o);
            group.bench_function(
                BenchmarkId::new(format!("{name}/forward_backward"), path),
                |b| {
                    b.iter(|| {
                        let (next, _) =
                            opt.update(&theta_leaf, &grad_leaf, &state, &hp_lr).unwrap();
                        let meta = (next * &weights).sum(Kind::Float);
                        let grads = Tensor::run_backward(
                            &[&meta],
                            &[&theta_leaf, &grad_leaf, &lr],
                            false,
                            false,
                        );
                        sync();
                        grads
                    })
                },
            );
        }
    }
    group.finish();
}

fn optim_step(c: &mut Criterion) {
    bench_device(c, Device::Cpu);
    if tch::Cuda::is_available() {
        bench_device(c, Device::Cuda(0));
    } else {
        println!("CUDA not available: CPU only");
    }
}

criterion_group!(benches, optim_step);
criterion_main!(benches);
