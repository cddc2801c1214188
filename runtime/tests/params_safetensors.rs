//! Params and safetensors files, both ways: a file written by PyTorch
//! (`safetensors.torch.save_file(model.state_dict())`, tests/fixtures/nn/gen_nn.py) loads with
//! its exact values, and `Params::save` writes the same names, dtypes, shapes and bytes, so
//! PyTorch's `load_state_dict` reads it. Mismatches name the tensor, the shapes or the path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::{Error, Params};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/nn")
        .join(name)
}

/// A fresh path in the system's temporary directory, unique per test and process.
fn temp_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "metaloop-{test}-{}.safetensors",
        std::process::id()
    ))
}

fn models() -> Vec<(&'static str, Box<dyn Module>)> {
    vec![
        ("mlp", Box::new(nn::mlp(&[1, 40, 40, 1]))),
        ("conv4", Box::new(nn::conv4(1, 5, 8))),
    ]
}

#[test]
fn pytorch_file_loads_with_exact_names_and_values() {
    for (name, model) in models() {
        for (kind, tag) in [(Kind::Double, "f64"), (Kind::Float, "f32")] {
            let path = fixture(&format!("{name}_{tag}.state.safetensors"));
            let params =
                Params::load(Arc::new(model.layout().unwrap()), &path, kind, Device::Cpu).unwrap();
            assert!(params.flat().is_leaf() && params.flat().requires_grad());
            assert_eq!(params.kind(), kind);
            let file = Tensor::read_safetensors(&path).unwrap();
            assert_eq!(file.len(), params.layout().len());
            for (pname, want) in file {
                let got = params.get(&pname).unwrap();
                assert_eq!(got.size(), want.size(), "{pname}");
                assert_eq!(got.kind(), want.kind(), "{pname}");
                assert!(got.equal(&want), "{name} {tag} {pname}: values differ");
            }
        }
    }
}

/// (name, dtype, shape, bytes) of every tensor in a safetensors file, sorted by name.
fn entries(path: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn saved_file_has_pytorchs_names_dtypes_shapes_and_bytes() {
    for (name, model) in models() {
        for (kind, tag) in [(Kind::Double, "f64"), (Kind::Float, "f32")] {
            let reference = fixture(&format!("{name}_{tag}.state.safetensors"));
            let params = Params::load(
                Arc::new(model.layout().unwrap()),
                &reference,
                kind,
                Device::Cpu,
            )
            .unwrap();
            let out = temp_path(&format!("save-{name}-{tag}"));
            params.save(&out).unwrap();
            let (got, want) = (entries(&out), entries(&reference));
            let bytes = std::fs::read(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            // PyTorch's save_file marks its files {"format": "pt"}; so does Params::save.
            let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(
                metadata
                    .metadata()
                    .as_ref()
                    .and_then(|m| m.get("format"))
                    .map(String::as_str),
                Some("pt")
            );
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((&g.0, g.1, &g.2), (&w.0, w.1, &w.2), "{name} {tag}");
                assert!(g.3 == w.3, "{name} {tag} {}: bytes differ", g.0);
            }
        }
    }
}

#[test]
fn init_save_load_round_trip_is_exact() {
    let model = nn::conv4(1, 5, 8);
    let params = Params::init(&model, 11, Kind::Float, Device::Cpu).unwrap();
    let out = temp_path("round-trip");
    params.save(&out).unwrap();
    let loaded = Params::load(params.layout().clone(), &out, Kind::Float, Device::Cpu).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(loaded.flat().equal(params.flat()));
    // Loading into another kind converts.
    let wide = Params::init(&model, 11, Kind::Double, Device::Cpu).unwrap();
    let out = temp_path("round-trip-f64");
    wide.save(&out).unwrap();
    let narrowed = Params::load(wide.layout().clone(), &out, Kind::Float, Device::Cpu).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(narrowed.flat().equal(&wide.flat().to_kind(Kind::Float)));
}

fn load_err(model: &dyn Module, path: &Path) -> Error {
    Params::load(
        Arc::new(model.layout().unwrap()),
        path,
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_err()
}

#[test]
fn mismatching_shape_names_the_tensor_and_both_shapes() {
    let path = fixture("mlp_f32.state.safetensors");
    let err = load_err(&nn::mlp(&[1, 40, 40, 2]), &path);
    let msg = err.to_string();
    assert!(matches!(err, Error::Safetensors { .. }), "{msg}");
    assert!(
        msg.contains("`4.weight`") && msg.contains("[1, 40]") && msg.contains("[2, 40]"),
        "{msg}"
    );
    assert!(msg.contains("mlp_f32.state.safetensors"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let path = fixture("mlp_f32.state.safetensors");
    let longer = nn::mlp(&[1, 40, 40, 1])
        .push(nn::Relu)
        .push(nn::Linear::new(1, 1));
    let err = load_err(&longer, &path);
    let msg = err.to_string();
    assert!(matches!(err, Error::Safetensors { .. }), "{msg}");
    assert!(
        msg.contains("`6.weight`") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn tensors_the_model_lacks_are_named() {
    let path = fixture("mlp_f32.state.safetensors");
    let err = load_err(&nn::mlp(&[1, 40, 40]), &path);
    let msg = err.to_string();
    assert!(
        msg.contains("\"4.weight\"") && msg.contains("\"4.bias\"") && msg.contains("unexpected"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let path = fixture("no_such_file.safetensors");
    let err = load_err(&nn::mlp(&[1, 2]), &path);
    assert!(
        matches!(&err, Error::Io { path: p, .. } if p == &path),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_file.safetensors"));
}

#[test]
fn malformed_file_is_a_safetensors_error_with_the_path() {
    let path = temp_path("malformed");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = load_err(&nn::mlp(&[1, 2]), &path);
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(&err, Error::Safetensors { path: p, .. } if p == &path),
        "{err}"
    );
}

#[test]
fn task_batched_params_are_saved_one_task_at_a_time() {
    let model = nn::mlp(&[1, 4, 1]);
    let params = Params::init(&model, 0, Kind::Float, Device::Cpu).unwrap();
    let tasks = params.expand_tasks(2).unwrap();
    let path = temp_path("tasks");
    assert!(matches!(
        tasks.save(&path).unwrap_err(),
        Error::Shape {
            op: "Params::save",
            ..
        }
    ));
    tasks.task(1).unwrap().save(&path).unwrap();
    let loaded = Params::load(params.layout().clone(), &path, Kind::Float, Device::Cpu).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(loaded.flat().equal(params.flat()));
}
