//! engine::model_file: a model file written by an LSLR run (`inner.lr` `[steps, G]`) and by a
//! Meta-SGD run (`inner.lr` `[P]`) reads back identically through every path that reads one:
//! `eval --best` and `plot` (`Trainer::load_model`), the adaptation figure's inner-loop rates
//! (`adaptation::overrides`), and resume (a checkpoint restored with `Trainer::restore`). A file
//! with a tensor the model does not have is refused, naming the tensor and the file.

use std::path::PathBuf;

use metaloop_engine::adaptation;
use metaloop_engine::checkpoint;
use metaloop_engine::config::{AlgorithmName, TrainConfig};
use metaloop_engine::model_file;
use metaloop_engine::rundir::RunDir;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;
use tch::{Device, Kind, Tensor};

/// A fresh scratch directory for `name`.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("metaloop-model-file-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(algorithm: AlgorithmName) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = algorithm;
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.inner_lr = 0.05;
    cfg.outer.lr = 0.05;
    cfg
}

/// Asserts that `a` and `b` hold the same names (a file keeps them sorted), with bitwise equal
/// values of the same dtype.
fn assert_same(what: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    let sorted = |t: &[(String, Tensor)]| {
        let mut t: Vec<(String, Tensor)> = t
            .iter()
            .map(|(n, x)| (n.clone(), x.shallow_clone()))
            .collect();
        t.sort_by(|p, q| p.0.cmp(&q.0));
        t
    };
    let (a, b) = (sorted(a), sorted(b));
    let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{what}");
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.kind(), y.kind(), "{what}: `{n}`");
        assert!(x.equal(y), "{what}: `{n}` differs");
    }
}

fn reads_back_through_every_path(
    algorithm: AlgorithmName,
    lr_shape: impl Fn(i64, i64) -> Vec<i64>,
) {
    let cfg = config(algorithm);
    let dir = scratch(&format!("{algorithm:?}"));
    let mut trained = Trainer::new(&cfg, Box::new(Local)).unwrap();
    for _ in 0..3 {
        trained.step().unwrap();
    }
    let run = RunDir::create(&dir, "").unwrap();
    let path = trained.write_model(&run).unwrap();
    let checkpoint = trained.save_checkpoint(&run).unwrap();
    let written = trained.model_tensors().unwrap();
    let theta = trained.model_params().layout();
    let lr = &written.iter().find(|(n, _)| n == "inner.lr").unwrap().1;
    assert_eq!(lr.size(), lr_shape(theta.numel(), theta.len() as i64));

    // The file itself.
    assert_same("the file", &model_file::read(&path).unwrap(), &written);
    // `eval --best` and `plot`: a fresh trainer loads the file.
    let mut loaded = Trainer::new(&cfg, Box::new(Local)).unwrap();
    loaded.load_model(&path).unwrap();
    assert_same("load_model", &loaded.model_tensors().unwrap(), &written);
    // The adaptation figure: its trainer on the CPU, and the learned rate as an override.
    let mut plotted = Trainer::builder(&cfg).device(Device::Cpu).build().unwrap();
    plotted.load_model(&path).unwrap();
    assert_same("plot", &plotted.model_tensors().unwrap(), &written);
    let overrides = adaptation::overrides(plotted.learned_hparams()).unwrap();
    let first_row = if lr.dim() == 2 {
        lr.get(0)
    } else {
        lr.shallow_clone()
    };
    assert_eq!(overrides.len(), 1);
    assert_eq!(overrides[0].0, "lr");
    assert!(
        overrides[0].1.equal(&first_row),
        "the adaptation figure's rates"
    );
    // Resume: the checkpoint holds the same tensors, and restores them.
    let ckpt = checkpoint::read(&checkpoint).unwrap();
    let in_checkpoint: Vec<(String, Tensor)> = ckpt
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("outer."))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    assert_same("checkpoint", &in_checkpoint, &written);
    let mut resumed = Trainer::new(&cfg, Box::new(Local)).unwrap();
    resumed
        .restore(ckpt.manifest.iteration, &ckpt.tensors)
        .unwrap();
    assert_same("restore", &resumed.model_tensors().unwrap(), &written);
    assert_same(
        "state",
        &resumed.state().unwrap(),
        &trained.state().unwrap(),
    );

    // One rule: a tensor the model does not have is refused, with its name and the file's.
    let mut extra = written;
    extra.push((
        "inner.momentum".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    let odd = dir.join("odd.safetensors");
    Tensor::write_safetensors(&extra, &odd).unwrap();
    let err = loaded.load_model(&odd).unwrap_err().to_string();
    assert!(
        err.contains("tensor `inner.momentum` is not one of this model's")
            && err.contains(&odd.display().to_string()),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_lslr_model_file_reads_back_identically_through_every_path() {
    // One rate per inner step and θ0 tensor.
    reads_back_through_every_path(AlgorithmName::Lslr, |_, groups| vec![2, groups]);
}

#[test]
fn a_meta_sgd_model_file_reads_back_identically_through_every_path() {
    // One rate per element of θ0.
    reads_back_through_every_path(AlgorithmName::Metasgd, |numel, _| vec![numel]);
}
