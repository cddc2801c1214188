//! Task batching: T = 3 tasks with their own parameters and inputs, run in one `[T, ...]` call,
//! give the same outputs and parameter gradients as 3 separate single-task calls.

use std::sync::Arc;

use metaloop_runtime::nn::{self, BnState, ConvTasks, Module};
use metaloop_runtime::{Layout, Params};
use tch::{Device, Kind, Tensor};

const TASKS: i64 = 3;

fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    devices
}

/// Deterministic values of every sign and of varied size, without touching the global RNG.
fn wavy(shape: &[i64], phase: f64, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, device)) * 0.7311 + phase)
        .sin()
        .reshape(shape)
}

/// |got - want| <= tol * (1 + |want|) elementwise.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let diff = (got - want).abs();
    let excess = (&diff - (want.abs() * tol + tol)).max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: max |got - want| = {:e} exceeds {tol:e}",
        diff.max().double_value(&[])
    );
}

/// Three tasks' parameters `[T, P]` (distinct, BatchNorm's affine parameters included) as a leaf.
fn task_params(model: &dyn Module, device: Device) -> (Arc<Layout>, Tensor) {
    let layout = Arc::new(model.layout().unwrap());
    let flats: Vec<Tensor> = (0..TASKS)
        .map(|t| {
            Params::init_layout(layout.clone(), 100 + t as u64, Kind::Double, device)
                .unwrap()
                .flat()
                .detach()
        })
        .collect();
    let noise = wavy(&[TASKS, layout.numel()], 0.3, device) * 0.1;
    let flat = (Tensor::stack(&flats, 0) + noise)
        .detach()
        .set_requires_grad(true);
    (layout, flat)
}

/// Runs the batched call and the per-task calls (f64) and compares outputs and gradients. With
/// `state`, BatchNorm keeps running statistics per task (a train call, then an eval call).
fn check(model: &dyn Module, input: &[i64], device: Device, with_state: bool) {
    let (layout, flat) = task_params(model, device);
    let mut shape = vec![TASKS];
    shape.extend_from_slice(input);
    let x = wavy(&shape, 1.1, device);
    let batched = Params::from_flat(layout.clone(), flat.shallow_clone()).unwrap();
    assert_eq!(batched.tasks(), Some(TASKS));
    let mut state = BnState::new();
    let run = |params: &Params, x: &Tensor, state: &mut BnState| {
        if with_state {
            let y = model.forward_with_state(params, x, true, state).unwrap();
            // Eval with the running statistics just updated: exercises the per-task [T, C] stats.
            let z = model.forward_with_state(params, x, false, state).unwrap();
            y + z
        } else {
            model.forward(params, x, true).unwrap()
        }
    };
    let y = run(&batched, &x, &mut state);
    assert_eq!(y.size()[0], TASKS);
    let weight = wavy(&y.size(), 2.0, device);
    (&y * &weight).sum(Kind::Double).backward();
    let grads = flat.grad();
    // f64: the batched paths sum in other orders than the single-task ones (channels-last
    // reductions, one split's concatenated gradient), which in f32 reaches a few 1e-6.
    let tol = 1e-10;
    for t in 0..TASKS {
        let leaf = flat.get(t).detach().set_requires_grad(true);
        let single = Params::from_flat(layout.clone(), leaf.shallow_clone()).unwrap();
        assert_eq!(single.tasks(), None);
        let mut single_state = BnState::new();
        let y_t = run(&single, &x.get(t), &mut single_state);
        assert_close(&format!("task {t} output"), &y.get(t), &y_t, tol);
        (&y_t * weight.get(t)).sum(Kind::Double).backward();
        assert_close(
            &format!("task {t} gradient"),
            &grads.get(t),
            &leaf.grad(),
            tol,
        );
        for (name, stat) in single_state.iter() {
            let batched_stat = state
                .get(name)
                .unwrap_or_else(|| panic!("batched state lacks {name}"));
            assert_close(&format!("task {t} {name}"), &batched_stat.get(t), stat, tol);
        }
        assert_eq!(single_state.len(), state.len());
    }
}

fn conv_model(how: ConvTasks) -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(2, 4, 3).padding(1).task_batching(how))
        .push(nn::BatchNorm2d::new(4).task_batching(how))
        .push(nn::Relu)
        .push(nn::MaxPool2d::new(2))
        .push(
            nn::Conv2d::new(4, 3, 3)
                .stride(2)
                .no_bias()
                .task_batching(how),
        )
        .push(nn::Flatten)
        .push(nn::Linear::new(3 * 2 * 2, 2))
}

#[test]
fn mlp_tasks_in_one_call_match_separate_calls() {
    for device in devices() {
        check(&nn::mlp(&[1, 40, 40, 1]), &[10, 1], device, false);
    }
}

#[test]
fn conv4_tasks_in_one_call_match_separate_calls() {
    for device in devices() {
        check(&nn::conv4(1, 5, 8), &[5, 1, 28, 28], device, false);
    }
}

#[test]
fn grouped_per_task_and_gemm_convolutions_match_separate_calls() {
    for device in devices() {
        for how in [
            ConvTasks::Grouped,
            ConvTasks::PerTask,
            ConvTasks::Gemm,
            ConvTasks::Auto,
        ] {
            check(&conv_model(how), &[4, 2, 10, 10], device, false);
        }
    }
}

#[test]
fn batchnorm_running_statistics_are_kept_per_task() {
    for device in devices() {
        check(&nn::conv4(1, 5, 8), &[5, 1, 28, 28], device, true);
        for how in [ConvTasks::Grouped, ConvTasks::PerTask, ConvTasks::Gemm] {
            check(&conv_model(how), &[4, 2, 10, 10], device, true);
        }
    }
}

#[test]
fn bn_state_clone_keeps_the_statistics_of_its_step() {
    let model = nn::conv4(1, 5, 8);
    let params = Params::init(&model, 7, Kind::Double, Device::Cpu).unwrap();
    let x = wavy(&[4, 1, 28, 28], 0.5, Device::Cpu).to_kind(Kind::Double);
    let mut state = BnState::new();
    assert!(state.is_empty());
    let _ = model
        .forward_with_state(&params, &x, true, &mut state)
        .unwrap();
    assert_eq!(
        state.len(),
        8,
        "running_mean and running_var for 4 BatchNorm layers"
    );
    let step1 = state.clone();
    let mean1 = step1.get("0.1.running_mean").unwrap().copy();
    let _ = model
        .forward_with_state(&params, &(&x * 2.0), true, &mut state)
        .unwrap();
    // The clone still holds step 1's statistics; the state moved on.
    assert_eq!(step1.get("0.1.running_mean").unwrap(), &mean1);
    assert_ne!(state.get("0.1.running_mean").unwrap(), &mean1);
    // PyTorch's update: 0.9 * 0 + 0.1 * batch mean of the first conv's output.
    let first = nn::Sequential::new().push(nn::Conv2d::new(1, 8, 3).padding(1));
    let conv_params = Params::from_flat(
        Arc::new(first.layout().unwrap()),
        params.flat().narrow(0, 0, 80),
    )
    .unwrap();
    let h = first.forward(&conv_params, &x, true).unwrap();
    let want = h.mean_dim([0, 2, 3].as_slice(), false, Kind::Double) * 0.1;
    assert!((mean1 - want).abs().max().double_value(&[]) < 1e-12);
    // Eval without a state uses batch statistics; eval with a state uses the running ones.
    let a = model.forward(&params, &x, false).unwrap();
    let b = model.forward(&params, &x, true).unwrap();
    let c = model
        .forward_with_state(&params, &x, false, &mut state.clone())
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn expand_tasks_sums_task_gradients_into_the_shared_parameters() {
    let model = nn::mlp(&[1, 8, 1]);
    let params = Params::init(&model, 3, Kind::Double, Device::Cpu).unwrap();
    let tasks = params.expand_tasks(TASKS).unwrap();
    assert_eq!(tasks.flat().size(), [TASKS, params.layout().numel()]);
    assert_eq!(tasks.get("0.weight").unwrap().size(), [TASKS, 8, 1]);
    let x = wavy(&[TASKS, 5, 1], 0.0, Device::Cpu).to_kind(Kind::Double);
    model
        .forward(&tasks, &x, true)
        .unwrap()
        .sum(Kind::Double)
        .backward();
    let batched = params.flat().grad();
    let mut total = Tensor::zeros_like(&batched);
    for t in 0..TASKS {
        let g = Tensor::run_backward(
            &[model
                .forward(&params, &x.get(t), true)
                .unwrap()
                .sum(Kind::Double)],
            &[params.flat()],
            false,
            false,
        );
        total += &g[0];
    }
    assert!((batched - total).abs().max().double_value(&[]) < 1e-12);
}

/// The block's own per-task path (pooling before the ReLU, channels-last, one concatenation)
/// against the four plain layers in PyTorch's order, in f64: outputs, running statistics, the
/// gradient, and a second-order gradient (gradient of a function of the gradient), to 1e-10.
#[test]
fn conv_block_equals_conv_bn_relu_pool_layers_to_second_order() {
    let block = |how: ConvTasks| {
        nn::Sequential::new()
            .push(nn::ConvBlock::new(2, 6).task_batching(how))
            .push(nn::ConvBlock::new(6, 6).task_batching(how))
    };
    let plain = |how: ConvTasks| {
        let layer = |i: i64, o: i64| {
            nn::Sequential::new()
                .push(nn::Conv2d::new(i, o, 3).padding(1).task_batching(how))
                .push(nn::BatchNorm2d::new(o).task_batching(how))
                .push(nn::Relu)
                .push(nn::MaxPool2d::new(2))
        };
        nn::Sequential::new().push(layer(2, 6)).push(layer(6, 6))
    };
    let tasks = 3;
    let theta = Params::init(&block(ConvTasks::Auto), 5, Kind::Double, Device::Cpu)
        .unwrap()
        .flat()
        .unsqueeze(0)
        .expand([tasks, -1], false)
        .contiguous();
    // Different weights per task, and an input with ties after the ReLU (exact zeros).
    let theta = (&theta + Tensor::randn_like(&theta) * 0.05)
        .detach()
        .set_requires_grad(true);
    let x = Tensor::randn([tasks, 4, 2, 12, 12], (Kind::Double, Device::Cpu));
    for how in [ConvTasks::PerTask, ConvTasks::Grouped, ConvTasks::Gemm] {
        for with_state in [false, true] {
            let run = |model: &dyn Module| {
                let params =
                    Params::from_flat(Arc::new(model.layout().unwrap()), theta.shallow_clone())
                        .unwrap();
                let mut state = BnState::new();
                let y = if with_state {
                    model
                        .forward_with_state(&params, &x, true, &mut state)
                        .unwrap()
                } else {
                    model.forward(&params, &x, true).unwrap()
                };
                let loss = (&y * &y).sum(Kind::Double);
                let g = Tensor::run_backward(&[&loss], &[&theta], true, true).remove(0);
                let gg =
                    Tensor::run_backward(&[&(&g * &g).sum(Kind::Double)], &[&theta], false, false)
                        .remove(0);
                (y, g, gg, state)
            };
            let (y1, g1, gg1, s1) = run(&block(how));
            let (y2, g2, gg2, s2) = run(&plain(how));
            for (what, a, b) in [
                ("output", &y1, &y2),
                ("gradient", &g1, &g2),
                ("second order", &gg1, &gg2),
            ] {
                assert_close(&format!("{how:?}, state {with_state}: {what}"), a, b, 1e-10);
            }
            assert_eq!(s1.len(), s2.len());
            for (name, stat) in s1.iter() {
                assert_close(
                    &format!("{how:?}: {name}"),
                    stat,
                    s2.get(name).unwrap(),
                    1e-10,
                );
            }
        }
    }
}
