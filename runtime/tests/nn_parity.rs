//! Parity of metaloop's functional layers with PyTorch: the state_dict written by
//! tests/fixtures/nn/gen_nn.py is loaded with `Params::load`, the model runs forward in train
//! mode (batch statistics) and backward through `loss = sum(output * loss_weight)`, and the
//! output and the gradients with respect to the input and every parameter match PyTorch's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

mod nn_support;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::Params;
use nn_support::assert_close;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/nn")
        .join(name)
}

fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    devices
}

fn check(model: &dyn Module, name: &str, kind: Kind, device: Device, tol: f64) {
    let tag = if kind == Kind::Double { "f64" } else { "f32" };
    let layout = Arc::new(model.layout().unwrap());
    let state = fixture(&format!("{name}_{tag}.state.safetensors"));
    let params = Params::load(layout.clone(), &state, kind, device).unwrap();
    let io: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture(&format!("{name}_{tag}.io.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(io["input"].kind(), kind);
    // Every parameter has a reference gradient, and nothing else does.
    let grad_names: Vec<&str> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .filter(|k| *k != "input")
        .collect();
    assert_eq!(
        grad_names.len(),
        layout.len(),
        "{name}: parameters {:?} vs fixture {grad_names:?}",
        layout.names().collect::<Vec<_>>()
    );

    let x = io["input"].to_device(device).set_requires_grad(true);
    let out = model.forward(&params, &x, true).unwrap();
    assert_close(
        &format!("{name} {tag} {device:?} output"),
        &out,
        &io["output"],
        tol,
    );
    let loss = (&out * io["loss_weight"].to_device(device)).sum(kind);
    loss.backward();
    assert_close(
        &format!("{name} {tag} {device:?} grad.input"),
        &x.grad(),
        &io["grad.input"],
        tol,
    );
    // A weight gradient element is a sum over batch × positions of products as large as the
    // model's largest gradients; its f32 rounding scales with those terms, not with the element,
    // which may cancel to near 0 (a convolution bias before BatchNorm has an analytic gradient of
    // exactly 0: what is compared there is rounding). libtorch's reduction order also depends on
    // its thread count (the fixtures were made with 2 threads, `cargo xtask test` runs 1 per test
    // process). So parameter gradients are compared relative to the model's largest gradient.
    let scale = params
        .iter()
        .map(|(pname, _)| io[&format!("grad.{pname}")].abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    for (pname, _) in params.iter() {
        let grad = params
            .grad(pname)
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        assert_close(
            &format!("{name} {tag} {device:?} grad.{pname}"),
            &grad,
            &io[&format!("grad.{pname}")],
            tol * (1.0 + scale),
        );
    }
}

fn small() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Conv2d::new(2, 3, 3).padding(1))
        .push(nn::BatchNorm2d::new(3))
        .push(nn::Relu)
        .push(nn::MaxPool2d::new(2))
        .push(nn::Conv2d::new(3, 4, 3).stride(2))
        .push(nn::Tanh)
        .push(nn::Flatten)
        .push(nn::Linear::new(16, 5).no_bias())
}

/// Tolerance for a device and kind. CUDA f32 convolutions run in TF32 by default (libtorch's
/// cuDNN setting), a 10-bit mantissa, so f32 on CUDA is checked at 1e-3 rather than 1e-6.
fn tol(kind: Kind, device: Device) -> f64 {
    match (kind, device) {
        (Kind::Double, _) => 1e-10,
        (_, Device::Cpu) => 1e-6,
        _ => 1e-3,
    }
}

fn check_all(model: &dyn Module, name: &str) {
    for device in devices() {
        for kind in [Kind::Double, Kind::Float] {
            check(model, name, kind, device, tol(kind, device));
        }
    }
}

#[test]
fn mlp_matches_pytorch() {
    check_all(&nn::mlp(&[1, 40, 40, 1]), "mlp");
}

#[test]
fn small_conv_bn_pool_sequential_matches_pytorch() {
    check_all(&small(), "small");
}

#[test]
fn conv4_matches_pytorch() {
    check_all(&nn::conv4(1, 5, 8), "conv4");
}

#[test]
fn layer_names_are_pytorch_state_dict_names() {
    let names = |m: &dyn Module| {
        m.layout()
            .unwrap()
            .names()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&nn::mlp(&[1, 40, 40, 1])),
        ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    );
    let conv4 = names(&nn::conv4(1, 5, 8));
    assert_eq!(conv4.len(), 18);
    assert_eq!(
        &conv4[..4],
        ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"]
    );
    assert_eq!(&conv4[16..], ["5.weight", "5.bias"]);
    // miniImageNet: 84 -> 42 -> 21 -> 10 -> 5, so the classifier sees 32 * 5 * 5 features.
    let mini = nn::conv4_sized(3, 5, 32, 84).layout().unwrap();
    assert_eq!(mini.get("5.weight").unwrap().shape, vec![5, 32 * 25]);
    assert_eq!(mini.get("0.0.weight").unwrap().shape, vec![32, 3, 3, 3]);
    let x = Tensor::zeros([2, 3, 84, 84], (Kind::Float, Device::Cpu));
    let params = Params::init(&nn::conv4_sized(3, 5, 32, 84), 0, Kind::Float, Device::Cpu).unwrap();
    let y = nn::conv4_sized(3, 5, 32, 84)
        .forward(&params, &x, true)
        .unwrap();
    assert_eq!(y.size(), [2, 5]);
}

#[test]
fn layers_reject_inputs_of_the_wrong_shape() {
    let model = nn::mlp(&[2, 3, 1]);
    let params = Params::init(&model, 0, Kind::Double, Device::Cpu).unwrap();
    let err = model
        .forward(
            &params,
            &Tensor::zeros([4, 5], (Kind::Double, Device::Cpu)),
            true,
        )
        .unwrap_err();
    assert!(
        matches!(err, metaloop_runtime::Error::Shape { op: "Linear", .. }),
        "{err}"
    );
    let tasks = params.expand_tasks(3).unwrap();
    // Task-batched parameters need [T, B, ...] inputs with T = 3.
    let err = model
        .forward(
            &tasks,
            &Tensor::zeros([2, 4, 2], (Kind::Double, Device::Cpu)),
            true,
        )
        .unwrap_err();
    assert!(
        matches!(err, metaloop_runtime::Error::Shape { op: "Linear", .. }),
        "{err}"
    );
    let conv = nn::conv4(1, 5, 8);
    let params = Params::init(&conv, 0, Kind::Float, Device::Cpu).unwrap();
    let err = conv
        .forward(
            &params,
            &Tensor::zeros([2, 3, 28, 28], (Kind::Float, Device::Cpu)),
            true,
        )
        .unwrap_err();
    assert!(
        matches!(err, metaloop_runtime::Error::Shape { op: "Conv2d", .. }),
        "{err}"
    );
}
