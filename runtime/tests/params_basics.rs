//! Params basics: layout order and offsets, seeded init, views, set, grad, iteration order,
//! task dimension and the errors for unknown names and wrong shapes.

use std::sync::Arc;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::{Error, Params};
use tch::{Device, Kind, Tensor};

fn tiny() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Linear::new(2, 3))
        .push(nn::Tanh)
        .push(nn::Linear::new(3, 1))
}

#[test]
fn layout_follows_pytorch_order_and_packs_parameters() {
    let layout = tiny().layout().unwrap();
    let names: Vec<&str> = layout.names().collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
    let offsets: Vec<i64> = layout.specs().iter().map(|s| s.offset).collect();
    assert_eq!(offsets, [0, 6, 9, 12]);
    assert_eq!(layout.group_sizes(), [6, 3, 3, 1]);
    assert_eq!(layout.numel(), 13);
    assert_eq!(layout.get("2.weight").unwrap().shape, [1, 3]);
    assert!(layout.get("1.weight").is_none());
    let bare = nn::Linear::new(1, 1).no_bias().layout().unwrap();
    assert_eq!(bare.names().collect::<Vec<_>>(), ["weight"]);
}

#[test]
fn init_is_a_reproducible_leaf_with_pytorchs_distributions() {
    let model = nn::conv4(1, 5, 8);
    let a = Params::init(&model, 42, Kind::Double, Device::Cpu).unwrap();
    let b = Params::init(&model, 42, Kind::Double, Device::Cpu).unwrap();
    let c = Params::init(&model, 43, Kind::Double, Device::Cpu).unwrap();
    let f = Params::init(&model, 42, Kind::Float, Device::Cpu).unwrap();
    assert!(a.flat().is_leaf() && a.flat().requires_grad());
    assert_eq!(a.flat().size(), [model.layout().unwrap().numel()]);
    assert_eq!(
        (a.kind(), a.device(), a.tasks()),
        (Kind::Double, Device::Cpu, None)
    );
    assert!(a.flat().equal(b.flat()));
    assert!(!a.flat().equal(c.flat()));
    assert!(
        f.flat().equal(&a.flat().to_kind(Kind::Float)),
        "f32 init is the f64 draw, rounded"
    );
    // Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 8 * 3 * 3 = 72.
    let w = a.get("1.0.weight").unwrap();
    let bound = 1.0 / 72f64.sqrt();
    assert!(w.abs().max().double_value(&[]) <= bound);
    let var = w.var(true).double_value(&[]);
    assert!(
        (var - bound * bound / 3.0).abs() < 0.15 * bound * bound / 3.0,
        "variance {var}"
    );
    assert!(w.mean(Kind::Double).double_value(&[]).abs() < 0.1 * bound);
    // Linear bias: fan_in = 8 features.
    assert!(a.get("5.bias").unwrap().abs().max().double_value(&[]) <= 1.0 / 8f64.sqrt());
    // BatchNorm: weight 1, bias 0.
    assert!(a
        .get("2.1.weight")
        .unwrap()
        .equal(&Tensor::ones([8], (Kind::Double, Device::Cpu))));
    assert!(a
        .get("2.1.bias")
        .unwrap()
        .equal(&Tensor::zeros([8], (Kind::Double, Device::Cpu))));
}

#[test]
fn get_is_a_view_and_set_copies_without_a_graph() {
    let params = Params::init(&tiny(), 1, Kind::Float, Device::Cpu).unwrap();
    let w = params.get("2.weight").unwrap();
    assert_eq!(w.size(), [1, 3]);
    let value = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([1, 3]);
    params.set("2.weight", &value).unwrap();
    // The earlier view sees the new values: it shares the flat storage.
    assert!(w.equal(&value));
    assert!(params.flat().narrow(0, 9, 3).equal(&value.reshape([3])));
    assert!(params.flat().is_leaf() && params.flat().requires_grad());
    let err = params
        .set("2.weight", &Tensor::zeros([3], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "Params::set",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn grad_is_a_view_of_the_flat_gradient() {
    let params = Params::init(&tiny(), 1, Kind::Double, Device::Cpu).unwrap();
    assert!(params.grad("0.weight").is_none());
    let loss = (params.get("0.weight").unwrap() * 2.0).sum(Kind::Double)
        + params.get("2.bias").unwrap().square().sum(Kind::Double);
    loss.backward();
    assert!(params.grad("0.weight").unwrap().equal(&Tensor::full(
        [3, 2],
        2.0,
        (Kind::Double, Device::Cpu)
    )));
    assert!(params
        .grad("0.bias")
        .unwrap()
        .equal(&Tensor::zeros([3], (Kind::Double, Device::Cpu))));
    let b = params.get("2.bias").unwrap();
    assert!(params.grad("2.bias").unwrap().equal(&(b * 2.0)));
    assert!(params.grad("nope").is_none());
}

#[test]
fn iter_yields_every_parameter_in_layout_order() {
    let model = nn::conv4(1, 5, 8);
    let params = Params::init(&model, 5, Kind::Float, Device::Cpu).unwrap();
    let mut offset = 0;
    let names: Vec<String> = params
        .iter()
        .map(|(name, view)| {
            let spec = params.layout().get(name).unwrap();
            assert_eq!(view.size(), spec.shape);
            assert!(view
                .reshape([-1])
                .equal(&params.flat().narrow(0, offset, spec.numel)));
            offset += spec.numel;
            name.to_string()
        })
        .collect();
    assert_eq!(offset, params.layout().numel());
    assert_eq!(names, params.layout().names().collect::<Vec<_>>());
}

#[test]
fn unknown_names_are_errors_that_list_the_known_ones() {
    let params = Params::init(&tiny(), 1, Kind::Float, Device::Cpu).unwrap();
    match params.get("1.weight") {
        Err(Error::UnknownParam { name, known }) => {
            assert_eq!(name, "1.weight");
            assert!(known.contains("0.weight") && known.contains("2.bias"));
        }
        other => panic!("expected UnknownParam, got {other:?}"),
    }
    let err = params
        .set("weight", &Tensor::zeros([1], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownParam { .. }));
}

#[test]
fn from_flat_checks_the_size_and_task_views_carry_the_task_dimension() {
    let layout = Arc::new(tiny().layout().unwrap());
    let err = Params::from_flat(
        layout.clone(),
        Tensor::zeros([12], (Kind::Float, Device::Cpu)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "Params::from_flat",
                ..
            }
        ),
        "{err}"
    );
    let flat = Tensor::arange(3 * 13, (Kind::Float, Device::Cpu)).reshape([3, 13]);
    let tasks = Params::from_flat(layout, flat).unwrap();
    assert_eq!(tasks.tasks(), Some(3));
    let w = tasks.get("0.weight").unwrap();
    assert_eq!(w.size(), [3, 3, 2]);
    assert_eq!(w.double_value(&[1, 0, 0]), 13.0);
    assert_eq!(
        tasks.get("2.bias").unwrap().double_value(&[2]),
        2.0 * 13.0 + 12.0
    );
    // Set one value for every task, or one per task.
    tasks
        .set("2.bias", &Tensor::from_slice(&[-1.0f32]))
        .unwrap();
    assert!(tasks.get("2.bias").unwrap().equal(&Tensor::full(
        [3, 1],
        -1.0,
        (Kind::Float, Device::Cpu)
    )));
    tasks
        .set(
            "2.bias",
            &Tensor::from_slice(&[4.0f32, 5.0, 6.0]).reshape([3, 1]),
        )
        .unwrap();
    assert_eq!(
        tasks
            .task(2)
            .unwrap()
            .get("2.bias")
            .unwrap()
            .double_value(&[0]),
        6.0
    );
    assert!(matches!(
        tasks.task(3).unwrap_err(),
        Error::Shape {
            op: "Params::task",
            ..
        }
    ));
    assert!(matches!(
        tasks.expand_tasks(2).unwrap_err(),
        Error::Shape { .. }
    ));
}
