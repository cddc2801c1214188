//! The process-wide convolution choices (`run.conv_tasks`, `run.channels_last`): they change
//! which kernels run, never the values. One test in its own binary, because the choices are
//! process-wide (nextest runs each test in its own process; `cargo test` would share them).

use std::sync::Arc;

use metaloop_runtime::nn::{self, ConvTasks, Module};
use metaloop_runtime::Params;
use tch::{Device, Kind, Tensor};

/// Output, gradient and a second-order gradient of a task-batched ResNet-style stack (strided
/// 1×1 shortcut-like convolution, BatchNorm in training mode, pooling) at fixed weights and input.
fn run(model: &dyn Module, theta: &Tensor, x: &Tensor) -> [Tensor; 3] {
    let params =
        Params::from_flat(Arc::new(model.layout().unwrap()), theta.shallow_clone()).unwrap();
    let y = model.forward(&params, x, true).unwrap();
    let loss = (&y * &y).sum(Kind::Double);
    let g = Tensor::run_backward(&[&loss], &[theta], true, true).remove(0);
    let gg =
        Tensor::run_backward(&[&(&g * &g).sum(Kind::Double)], &[theta], false, false).remove(0);
    [y.detach(), g.detach(), gg]
}

fn stack() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(3, 5, 3).padding(1))
        .push(nn::BatchNorm2d::new(5))
        .push(nn::Relu)
        .push(nn::MaxPool2d::new(2))
        .push(nn::Conv2d::new(5, 4, 1).stride(2).no_bias())
        .push(nn::ConvBlock::new(4, 4))
        .push(nn::Flatten)
}

#[test]
fn every_process_wide_choice_gives_the_same_values_to_second_order() {
    let tasks = 3;
    let model = stack();
    let theta = Params::init(&model, 11, Kind::Double, Device::Cpu)
        .unwrap()
        .flat()
        .unsqueeze(0)
        .expand([tasks, -1], false)
        .contiguous();
    let theta = (&theta + Tensor::randn_like(&theta) * 0.05)
        .detach()
        .set_requires_grad(true);
    let x = Tensor::randn([tasks, 4, 3, 12, 12], (Kind::Double, Device::Cpu));
    let want = run(&model, &theta, &x);
    for how in [ConvTasks::Grouped, ConvTasks::Gemm, ConvTasks::PerTask] {
        for channels_last in [false, true] {
            nn::set_conv_tasks(how);
            nn::set_channels_last(channels_last);
            let got = run(&model, &theta, &x);
            for (what, a, b) in [
                ("output", &got[0], &want[0]),
                ("gradient", &got[1], &want[1]),
                ("second order", &got[2], &want[2]),
            ] {
                let err = (a - b).abs().max().double_value(&[]);
                let scale = 1.0 + b.abs().max().double_value(&[]);
                assert!(
                    err <= 1e-10 * scale,
                    "{how:?}, channels_last {channels_last}: {what} differs by {err:e}"
                );
            }
        }
    }
    nn::set_conv_tasks(ConvTasks::Auto);
    nn::set_channels_last(false);
}
