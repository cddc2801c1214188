//! Parity of the layers of issue 14 with PyTorch (fixtures from tests/fixtures/nn14/gen_nn14.py):
//! LeakyReLU, average and adaptive average pooling, strided 1×1 convolution, LayerNorm, Dropout and
//! DropBlock, each in a small model whose forward (train mode) and meta-gradient through 2
//! task-batched inner SGD steps match PyTorch's at 1e-10 in f64. Dropout and DropBlock draw their
//! masks from the task seeds, which the generator reproduces in NumPy.

mod nn_support;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::Params;
use nn_support::{check_forward, check_meta_gradient};
use tch::{Device, Kind, Tensor};

fn pool() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(2, 4, 3).padding(1))
        .push(nn::LeakyRelu::new(0.1))
        .push(nn::AvgPool2d::new(3).stride(2).padding(1))
        .push(nn::Conv2d::new(4, 6, 1).stride(2).no_bias())
        .push(nn::BatchNorm2d::new(6))
        .push(nn::LeakyRelu::new(0.2))
        .push(nn::AdaptiveAvgPool2d::sized(2, 1))
        .push(nn::Flatten)
        .push(nn::Linear::new(12, 5))
}

fn layernorm() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(2, 3, 3))
        .push(nn::LayerNorm::new(&[3, 4, 4]))
        .push(nn::Flatten)
        .push(nn::Linear::new(48, 8))
        .push(nn::LayerNorm::new(&[8]))
        .push(nn::Tanh)
        .push(nn::Linear::new(8, 5))
}

fn dropout() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Linear::new(6, 16))
        .push(nn::Relu)
        .push(nn::Dropout::new(0.3).unwrap())
        .push(nn::Linear::new(16, 5))
}

fn dropblock() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(2, 3, 3).padding(1))
        .push(nn::DropBlock::new(0.2, 3).unwrap())
        .push(nn::Flatten)
        .push(nn::Linear::new(192, 5))
}

#[test]
fn leaky_relu_pooling_and_strided_1x1_convolution_match_pytorch() {
    check_forward(&pool(), "pool");
    check_meta_gradient(&pool(), "pool");
}

#[test]
fn layer_norm_matches_pytorch() {
    check_forward(&layernorm(), "layernorm");
    check_meta_gradient(&layernorm(), "layernorm");
}

#[test]
fn dropout_matches_pytorch_with_the_same_masks() {
    check_forward(&dropout(), "dropout");
    check_meta_gradient(&dropout(), "dropout");
}

#[test]
fn dropblock_matches_metaoptnets_with_the_same_centres() {
    check_forward(&dropblock(), "dropblock");
    check_meta_gradient(&dropblock(), "dropblock");
}

/// Task t of a task-batched call gets the mask a single-task call with seed t gets, so a task's
/// masks do not depend on which other tasks share its call (1 or N ranks agree).
#[test]
fn a_tasks_masks_depend_on_its_seed_only() {
    for (model, shape) in [(dropout(), vec![3, 6]), (dropblock(), vec![3, 2, 8, 8])] {
        let params = Params::init(&model, 3, Kind::Double, Device::Cpu).unwrap();
        let x = Tensor::randn(shape.as_slice(), (Kind::Double, Device::Cpu));
        let seeds = [11u64, 12, 13];
        let both = Tensor::stack(&[&x, &x, &x], 0);
        let batched = model
            .forward_seeded(&params.expand_tasks(3).unwrap(), &both, true, None, &seeds)
            .unwrap();
        for (t, &seed) in seeds.iter().enumerate() {
            let alone = model
                .forward_seeded(&params, &x, true, None, &[seed])
                .unwrap();
            let diff = (batched.get(t as i64) - &alone)
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-12, "task {t}: {diff}");
        }
        // Different seeds give different masks; evaluation is the identity of the random layer.
        let a = model.forward_seeded(&params, &x, true, None, &[1]).unwrap();
        let b = model.forward_seeded(&params, &x, true, None, &[2]).unwrap();
        assert!((a - b).abs().max().double_value(&[]) > 0.0);
        let e1 = model
            .forward_seeded(&params, &x, false, None, &[1])
            .unwrap();
        let e2 = model.forward(&params, &x, false).unwrap();
        assert_eq!((e1 - e2).abs().max().double_value(&[]), 0.0);
    }
}

#[test]
fn random_layers_in_training_need_one_seed_per_task() {
    let model = dropout();
    let params = Params::init(&model, 0, Kind::Double, Device::Cpu).unwrap();
    let x = Tensor::zeros([4, 6], (Kind::Double, Device::Cpu));
    let err = model.forward(&params, &x, true).unwrap_err().to_string();
    assert!(err.contains("Dropout") && err.contains("seed"), "{err}");
    let tasks = params.expand_tasks(2).unwrap();
    let xt = Tensor::zeros([2, 4, 6], (Kind::Double, Device::Cpu));
    let err = model
        .forward_seeded(&tasks, &xt, true, None, &[1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("one per task"), "{err}");
    assert!(nn::Dropout::new(1.0).is_err());
    assert!(nn::DropBlock::new(0.1, 0).is_err());
}

#[test]
fn layers_reject_inputs_of_the_wrong_shape() {
    let ln = nn::LayerNorm::new(&[8]);
    let params = Params::init(&ln, 0, Kind::Double, Device::Cpu).unwrap();
    let err = ln
        .forward(
            &params,
            &Tensor::zeros([2, 7], (Kind::Double, Device::Cpu)),
            true,
        )
        .unwrap_err();
    assert!(err.to_string().contains("LayerNorm"), "{err}");
    let pool = nn::AvgPool2d::new(2);
    let empty = Params::init(&pool, 0, Kind::Double, Device::Cpu).unwrap();
    let err = pool
        .forward(
            &empty,
            &Tensor::zeros([2, 7], (Kind::Double, Device::Cpu)),
            true,
        )
        .unwrap_err();
    assert!(err.to_string().contains("AvgPool2d"), "{err}");
}
