//! ResNet-12 against a PyTorch ResNet-12 (MetaOptNet's, reduced widths 4-6-8-10; fixtures from
//! tests/fixtures/nn14/gen_nn14.py): its state_dict loads by name with
//! `nn::load_starting_weights` (BatchNorm buffers become running statistics), the logits match in
//! train mode (batch statistics) and in eval mode (the loaded running statistics), and so does the
//! meta-gradient through 2 task-batched inner SGD steps, with and without DropBlock. Also: the
//! starting-weights rules (fresh head at another number of ways, a mismatch names the tensor).

mod nn_support;

use std::sync::Arc;

use metaloop_runtime::nn::{load_starting_weights, Module, ResNet12};
use metaloop_runtime::{Error, Params};
use nn_support::{assert_close, check_forward, check_meta_gradient, fixture, io, load, TOL};
use tch::{Device, Kind, Tensor};

const WIDTHS: [i64; 4] = [4, 6, 8, 10];

fn small() -> ResNet12 {
    ResNet12::new(WIDTHS, 5, 3)
}

#[test]
fn pytorch_state_dict_names_load_and_give_the_same_logits() {
    check_forward(&small(), "resnet12");
}

#[test]
fn eval_mode_uses_the_loaded_running_statistics() {
    let model = small();
    let (params, mut running) = load(&model, "resnet12");
    // 4 BatchNorms per block (3 + the shortcut's), 2 statistics each.
    assert_eq!(running.len(), 4 * 4 * 2);
    let io = io("resnet12");
    let out = model
        .forward_with_state(&params, &io["input"], false, &mut running)
        .unwrap();
    assert_close("resnet12 eval logits", &out, &io["output_eval"], TOL);
}

#[test]
fn meta_gradient_through_two_inner_steps_matches_pytorch() {
    check_meta_gradient(&small(), "resnet12");
}

#[test]
fn dropblock_resnet_matches_pytorch() {
    let model = small().dropblock(0.3, 2).unwrap();
    check_forward(&model, "resnet12_dropblock");
    check_meta_gradient(&model, "resnet12_dropblock");
}

#[test]
fn default_widths_and_names() {
    let model = ResNet12::new(ResNet12::WIDTHS, 5, 3);
    let layout = model.layout().unwrap();
    assert_eq!(
        layout.get("layer1.0.conv1.weight").unwrap().shape,
        [64, 3, 3, 3]
    );
    assert_eq!(
        layout.get("layer4.0.downsample.0.weight").unwrap().shape,
        [640, 320, 1, 1]
    );
    assert_eq!(layout.get("layer4.0.bn3.bias").unwrap().shape, [640]);
    assert_eq!(layout.get("classifier.weight").unwrap().shape, [5, 640]);
    // 12 convolutions: 3 per block, plus the 4 shortcuts.
    let convs = layout.names().filter(|n| n.contains("conv")).count();
    assert_eq!(convs, 12);
    assert_eq!(model.head_names(), ["classifier.weight", "classifier.bias"]);
    // 84×84 miniImageNet images, task-batched: [T, B, 3, 84, 84] -> [T, B, 5].
    let small = ResNet12::new([8, 8, 8, 8], 5, 3);
    let params = Params::init(&small, 0, Kind::Float, Device::Cpu).unwrap();
    let x = Tensor::zeros([2, 3, 3, 84, 84], (Kind::Float, Device::Cpu));
    let y = small
        .forward(&params.expand_tasks(2).unwrap(), &x, true)
        .unwrap();
    assert_eq!(y.size(), [2, 3, 5]);
}

#[test]
fn starting_weights_keep_a_fresh_head_at_another_number_of_ways() {
    let ten = ResNet12::new(WIDTHS, 10, 3);
    let layout = Arc::new(ten.layout().unwrap());
    let path = fixture("resnet12.state.safetensors");
    let head = ten.head_names();
    let w = load_starting_weights(
        layout.clone(),
        &path,
        "",
        &head,
        5,
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(w.fresh, head);
    let fresh = Params::init_layout(layout, 5, Kind::Float, Device::Cpu).unwrap();
    let state: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    for (name, value) in w.params.iter() {
        let want = if head.iter().any(|h| h == name) {
            fresh.get(name).unwrap()
        } else {
            state[name].to_kind(Kind::Float)
        };
        assert_eq!((value - want).abs().max().double_value(&[]), 0.0, "{name}");
    }
    assert!(w.params.flat().requires_grad() && w.params.flat().is_leaf());
}

#[test]
fn starting_weights_mismatches_name_the_tensor() {
    let dir = std::env::temp_dir().join(format!("metaloop-resnet12-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = fixture("resnet12.state.safetensors");
    let state: Vec<(String, Tensor)> = Tensor::read_safetensors(&source).unwrap();
    let model = small();
    let layout = Arc::new(model.layout().unwrap());
    let head = model.head_names();
    let try_load = |edit: &dyn Fn(&str, &Tensor) -> Option<Tensor>, file: &str, prefix: &str| {
        let kept: Vec<(String, Tensor)> = state
            .iter()
            .filter_map(|(n, t)| edit(n, t).map(|t| (format!("{prefix}{n}"), t)))
            .collect();
        let path = dir.join(file);
        Tensor::write_safetensors(&kept, &path).unwrap();
        load_starting_weights(
            layout.clone(),
            &path,
            prefix,
            &head,
            0,
            Kind::Double,
            Device::Cpu,
        )
    };
    let reason = |r: metaloop_runtime::Result<_>| match r {
        Err(Error::StartingWeights { tensor, reason, .. }) => (tensor, reason),
        other => panic!("expected a StartingWeights error, got {other:?}"),
    };
    // A backbone tensor of another shape.
    let (tensor, why) = reason(try_load(
        &|n, t| {
            Some(if n == "layer2.0.conv2.weight" {
                t.narrow(0, 0, 2)
            } else {
                t.shallow_clone()
            })
        },
        "shape.safetensors",
        "",
    ));
    assert_eq!(tensor, "layer2.0.conv2.weight");
    assert!(
        why.contains("[2, 6, 3, 3]") && why.contains("[6, 6, 3, 3]"),
        "{why}"
    );
    // A missing backbone tensor.
    let (tensor, why) = reason(try_load(
        &|n, t| (n != "layer3.0.bn1.bias").then(|| t.shallow_clone()),
        "missing.safetensors",
        "",
    ));
    assert_eq!(tensor, "layer3.0.bn1.bias");
    assert!(why.contains("missing"), "{why}");
    // A tensor the model has no place for.
    let mut with_extra: Vec<(String, Tensor)> = state
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    with_extra.push((
        "projection.weight".into(),
        Tensor::zeros([3], (Kind::Double, Device::Cpu)),
    ));
    let path = dir.join("extra.safetensors");
    Tensor::write_safetensors(&with_extra, &path).unwrap();
    let (tensor, _) = reason(load_starting_weights(
        layout.clone(),
        &path,
        "",
        &head,
        0,
        Kind::Double,
        Device::Cpu,
    ));
    assert_eq!(tensor, "projection.weight");
    // A feature extractor saved under a prefix, without a head: the head is fresh.
    let w = try_load(
        &|n, t| (!n.starts_with("classifier")).then(|| t.shallow_clone()),
        "encoder.safetensors",
        "encoder.",
    )
    .unwrap();
    assert_eq!(w.fresh, head);
    std::fs::remove_dir_all(&dir).unwrap();
}
