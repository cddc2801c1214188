//! One differentiable inner step (forward, the gradient with a graph, the SGD update) of each
//! backbone, all tasks of the meta-batch at once: the sinusoid MLP 1-40-40-1 (T = 25, K = 10) and
//! Conv-4 with 64 filters and BatchNorm (T = 8, 5-way 1-shot, 1×28×28); and the same step followed
//! by the meta-gradient (the query loss's backward through the step).
//!
//! Run: `cargo bench -p metaloop --bench inner_step`. It measures and prints; it asserts nothing.

use criterion::{criterion_group, criterion_main, Criterion};
use metaloop::runtime::nn::{self, Module};
use metaloop::runtime::optim::Sgd;
use metaloop::runtime::{InnerLoop, Params};
use tch::{Device, Kind, Tensor};

struct Workload {
    name: &'static str,
    model: Box<dyn Module>,
    tasks: i64,
    x: Tensor,
    y: Tensor,
    lr: f64,
    classification: bool,
}

fn workloads() -> Vec<Workload> {
    tch::manual_seed(0);
    let o = (Kind::Float, Device::Cpu);
    let xs = Tensor::rand([25, 10, 1], o) * 10.0 - 5.0;
    let labels = Tensor::arange(5, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([8, 5], false)
        .contiguous();
    vec![
        Workload {
            name: "mlp_sinusoid_T25",
            model: Box::new(nn::mlp(&[1, 40, 40, 1])),
            tasks: 25,
            y: xs.sin(),
            x: xs,
            lr: 0.01,
            classification: false,
        },
        Workload {
            name: "conv4_omniglot_T8",
            model: Box::new(nn::conv4(1, 5, 64)),
            tasks: 8,
            x: Tensor::rand([8, 5, 1, 28, 28], o),
            y: labels,
            lr: 0.4,
            classification: true,
        },
    ]
}

fn loss(w: &Workload, pred: &Tensor) -> Tensor {
    if w.classification {
        let s = pred.size();
        pred.reshape([s[0] * s[1], s[2]])
            .cross_entropy_for_logits(&w.y.reshape([-1]))
            * s[0] as f64
    } else {
        (pred - &w.y)
            .square()
            .mean_dim(&[1i64, 2][..], false, Kind::Float)
            .sum(Kind::Float)
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("inner_step");
    group.sample_size(20);
    for w in workloads() {
        let theta = Params::init(w.model.as_ref(), 0, Kind::Float, Device::Cpu).unwrap();
        group.bench_function(format!("{}/step", w.name), |b| {
            b.iter(|| {
                let mut inner = InnerLoop::new(w.model.as_ref(), &theta, Sgd::new(w.lr))
                    .copy_initial_weights(false)
                    .tasks(w.tasks)
                    .build()
                    .unwrap();
                let l = loss(&w, &inner.forward(&w.x).unwrap());
                inner.step(&l).unwrap();
                inner.params().flat().shallow_clone()
            })
        });
        group.bench_function(format!("{}/step+meta_gradient", w.name), |b| {
            b.iter(|| {
                let mut inner = InnerLoop::new(w.model.as_ref(), &theta, Sgd::new(w.lr))
                    .copy_initial_weights(false)
                    .tasks(w.tasks)
                    .build()
                    .unwrap();
                let l = loss(&w, &inner.forward(&w.x).unwrap());
                inner.step(&l).unwrap();
                let q = loss(&w, &inner.forward(&w.x).unwrap());
                Tensor::run_backward(&[&q], &[theta.flat()], false, false)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
