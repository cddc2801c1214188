//! `metaloop train`, `--resume`, `eval` and `plot` end to end on a tiny sinusoid run: the run
//! directory's files, resuming to the same parameters as an uninterrupted run, and evaluating a
//! checkpoint; and a tiny image run's predictions figure.

mod common;

use common::{json, metaloop, metrics, ok, TINY_SINUSOID as TINY};
use std::fs;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

#[test]
fn train_writes_config_metrics_checkpoints_report_model_and_plot() {
    let dir = scratch("train");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let stdout = ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    assert!(
        stdout.contains("meta-test: MSE before adaptation"),
        "{stdout}"
    );
    assert!(stdout.contains("mean ± 95% CI over 4 tasks"), "{stdout}");
    let run = dir.join("runs/tiny");
    assert!(
        stdout.contains(&format!(
            "plot: {}",
            Path::new("runs/tiny/plots/learning_curves.png").display()
        )),
        "{stdout}"
    );

    // config.toml: the resolved config, which reads back to the same values.
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("iterations = 6") && config.contains("dtype = \"f64\""),
        "{config}"
    );

    // metrics.jsonl: every log.every = 2 iterations, plus validation at 3 and 6.
    let lines = metrics(&run);
    let its: Vec<u64> = lines
        .iter()
        .map(|l| l["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(its, vec![2, 3, 4, 6]);
    for l in &lines {
        assert!(l["meta_loss"].as_f64().unwrap().is_finite());
        assert!(l["tasks_per_s"].as_f64().unwrap() > 0.0);
        assert!(l["grad_norm"].as_f64().unwrap() >= 0.0);
        assert!(l["query_accuracy"].is_null());
        // The peak resident memory since the previous line: at least libtorch's own.
        let peak = l["peak_mib"].as_f64().unwrap();
        assert!(peak > 10.0 && peak < 100_000.0, "peak_mib {peak}");
    }
    assert!(lines[0].get("val").is_none());
    assert_eq!(lines[1]["val"]["split"], "val");
    assert_eq!(lines[1]["val"]["tasks"], 3);

    // Checkpoints at 3 and 6, each with a manifest naming its tensors' sha256.
    for it in [3, 6] {
        let manifest = json(&run.join(format!("checkpoints/ckpt-{it:09}.json")));
        assert_eq!(manifest["iteration"], it);
        assert_eq!(manifest["sampler"]["iteration"], it);
        assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
        assert!(run
            .join(format!("checkpoints/ckpt-{it:09}.safetensors"))
            .is_file());
    }

    // report.json: the meta-test, the validations, the config hash.
    let report = json(&run.join("report.json"));
    assert_eq!(report["iterations"], 6);
    assert_eq!(report["test"]["split"], "test");
    assert_eq!(report["test"]["tasks"], 4);
    assert_eq!(report["test"]["metric"], "mse");
    assert!(report["test"]["loss_after"]["ci95"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["val"].as_array().unwrap().len(), 2);
    let run_peak = report["peak_mib"].as_f64().unwrap();
    for l in &lines {
        assert!(run_peak >= l["peak_mib"].as_f64().unwrap(), "{run_peak}");
    }
    assert_eq!(
        report["config_hash"],
        json(&run.join("checkpoints/ckpt-000000006.json"))["config_hash"]
    );

    // θ0 with PyTorch state_dict names.
    let model = tch::Tensor::read_safetensors(run.join("model.safetensors")).unwrap();
    let mut names: Vec<String> = model.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    );

    let png = fs::read(run.join("plots/learning_curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // `metaloop plot` redraws it and prints its path.
    // `plot` redraws the learning curves and, for a sinusoid run, the adaptation figure.
    let stdout = ok(&metaloop(&dir, &["plot", "runs/tiny"]));
    let plots: Vec<&str> = stdout.lines().collect();
    let expected: Vec<String> = ["learning_curves.png", "adaptation.png"]
        .iter()
        .map(|f| Path::new("runs/tiny/plots").join(f).display().to_string())
        .collect();
    assert_eq!(plots, expected);
    assert!(run.join("plots/adaptation.png").is_file());

    // `eval` on a manifest, and on the run directory (its latest checkpoint).
    let stdout = ok(&metaloop(
        &dir,
        &[
            "eval",
            "--checkpoint",
            "runs/tiny/checkpoints/ckpt-000000003.json",
            "--tasks",
            "5",
        ],
    ));
    assert!(
        stdout.contains("ckpt-000000003.json") && stdout.contains("MSE before adaptation"),
        "{stdout}"
    );
    assert!(stdout.contains("over 5 tasks"), "{stdout}");
    let stdout = ok(&metaloop(&dir, &["eval", "--checkpoint", "runs/tiny"]));
    assert!(
        stdout.contains("ckpt-000000006.json") && stdout.contains("over 4 tasks"),
        "{stdout}"
    );
    // The test split and seed are fixed: evaluating the final checkpoint repeats the report.
    let mean = report["test"]["loss_after"]["mean"].as_f64().unwrap();
    assert!(
        stdout.contains(&format!("after {mean:.3}")),
        "{stdout} vs {mean}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_continues_from_the_latest_checkpoint_to_the_same_parameters() {
    let dir = scratch("resume");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    let run = dir.join("runs/tiny");
    let uninterrupted = fs::read(run.join("model.safetensors")).unwrap();
    let lines_before = metrics(&run);

    // As if killed after iteration 5: the checkpoint of 6 and the final files never written,
    // and a torn metrics line.
    for f in [
        "checkpoints/ckpt-000000006.json",
        "checkpoints/ckpt-000000006.safetensors",
        "model.safetensors",
        "report.json",
    ] {
        fs::remove_file(run.join(f)).unwrap();
    }
    let mut text = fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.push_str("{\"iteration\": 7, \"meta_lo");
    fs::write(run.join("metrics.jsonl"), text).unwrap();

    let stdout = ok(&metaloop(
        &dir,
        &["train", "--config", "tiny.toml", "--resume"],
    ));
    assert!(stdout.contains("meta-test: MSE"), "{stdout}");
    let report = json(&run.join("report.json"));
    assert_eq!(report["resumed_from"], 3);
    assert_eq!(report["iterations"], 6);
    // Lines after the checkpoint were redone once, not duplicated.
    let its: Vec<u64> = metrics(&run)
        .iter()
        .map(|l| l["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(its, vec![2, 3, 4, 6]);
    assert_eq!(metrics(&run)[3]["meta_loss"], lines_before[3]["meta_loss"]);
    // f64 on CPU: bit-identical to the uninterrupted run.
    assert_eq!(
        fs::read(run.join("model.safetensors")).unwrap(),
        uninterrupted
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_skips_a_corrupt_newest_checkpoint_with_a_warning() {
    let dir = scratch("resume-corrupt");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    let run = dir.join("runs/tiny");
    let newest = run.join("checkpoints/ckpt-000000006.safetensors");
    let bytes = fs::read(&newest).unwrap();
    fs::write(&newest, &bytes[..bytes.len() - 10]).unwrap();
    let out = metaloop(&dir, &["train", "--config", "tiny.toml", "--resume"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("ckpt-000000006.safetensors"),
        "{stderr}"
    );
    assert_eq!(json(&run.join("report.json"))["resumed_from"], 3);
    fs::remove_dir_all(&dir).unwrap();
}

/// The learned inner rates of LSLR go into `model.safetensors` beside θ0 (`inner.lr`, one row
/// per inner step and one column per parameter tensor), and `metaloop eval` adapts with them:
/// it repeats the report's meta-test.
#[test]
fn lslr_saves_its_learned_rates_beside_theta_and_eval_uses_them() {
    let dir = scratch("lslr");
    fs::write(dir.join("c.toml"), TINY).unwrap();
    ok(&metaloop(
        &dir,
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "algorithm.name=\"lslr\"",
            "--set",
            "algorithm.inner_steps=2",
        ],
    ));
    let run = dir.join("runs/tiny");
    let model = tch::Tensor::read_safetensors(run.join("model.safetensors")).unwrap();
    let mut names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    // MLP 1-8-8-1: three Linear layers, six tensors.
    assert_eq!(
        names,
        ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight", "inner.lr"]
    );
    let lr = &model.iter().find(|(n, _)| n == "inner.lr").unwrap().1;
    assert_eq!(lr.size(), [2, 6]);
    let report = json(&run.join("report.json"));
    let mean = report["test"]["loss_after"]["mean"].as_f64().unwrap();
    let stdout = ok(&metaloop(&dir, &["eval", "--checkpoint", "runs/tiny"]));
    assert!(
        stdout.contains(&format!("after {mean:.3}")),
        "{stdout} vs {mean}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The validations (iteration, MSE after adaptation) that `metrics.jsonl` logged.
fn validations(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter(|l| l.get("val").is_some())
        .map(|l| {
            (
                l["iteration"].as_u64().unwrap(),
                l["val"]["loss_after"]["mean"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The `meta-test:` line of a command's output.
fn meta_test_line(stdout: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with("meta-test:"));
    line.unwrap_or_else(|| panic!("no meta-test line in {stdout}"))
        .to_string()
}

/// Model selection: the best validation (lowest MSE after adaptation) leaves
/// `model.best.safetensors` and `best.json`; `eval --best` names its iteration and meta-tests
/// exactly what `eval --checkpoint` of that iteration's checkpoint does.
#[test]
fn the_best_validation_is_kept_and_eval_best_meta_tests_it() {
    let dir = scratch("best");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let stdout = ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    let run = dir.join("runs/tiny");
    let vals = validations(&run);
    assert_eq!(vals.len(), 2);
    let (it, value) = *vals.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let best = json(&run.join("best.json"));
    assert_eq!(best["iteration"], it);
    assert_eq!(best["metric"], "loss_after");
    assert_eq!(best["value"].as_f64(), Some(value));
    assert_eq!(json(&run.join("report.json"))["best"]["iteration"], it);
    assert!(
        stdout.contains(&format!(
            "model.best.safetensors: best model: iteration {it} (validation loss after adaptation"
        )),
        "{stdout}"
    );
    let names = |file: &str| {
        let mut n: Vec<String> = tch::Tensor::read_safetensors(run.join(file))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names("model.best.safetensors"), names("model.safetensors"));

    let by_best = ok(&metaloop(&dir, &["eval", "--best", "runs/tiny"]));
    assert!(
        by_best.contains(&format!("best model: iteration {it} ")),
        "{by_best}"
    );
    let ckpt = format!("runs/tiny/checkpoints/ckpt-{it:09}.json");
    let by_ckpt = ok(&metaloop(&dir, &["eval", "--checkpoint", &ckpt]));
    assert_eq!(meta_test_line(&by_best), meta_test_line(&by_ckpt));
    fs::remove_dir_all(&dir).unwrap();
}

/// A resumed run knows the best so far from `best.json`: a record better than any validation
/// it redoes stays, with its model file; a worse one is replaced by the redone validation.
#[test]
fn resume_keeps_a_better_best_and_replaces_a_worse_one() {
    let dir = scratch("best-resume");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    let run = dir.join("runs/tiny");
    let last = *validations(&run).last().unwrap();
    let resume_from_3 = |best_value: f64| {
        for f in [
            "checkpoints/ckpt-000000006.json",
            "checkpoints/ckpt-000000006.safetensors",
            "model.safetensors",
            "report.json",
        ] {
            let _ = fs::remove_file(run.join(f));
        }
        let record = format!(
            "{{\"iteration\": 1, \"metric\": \"loss_after\", \"value\": {best_value}, \"ci95\": 0.0, \"tasks\": 3}}"
        );
        fs::write(run.join("best.json"), &record).unwrap();
        let model = fs::read(run.join("model.best.safetensors")).unwrap();
        ok(&metaloop(
            &dir,
            &["train", "--config", "tiny.toml", "--resume"],
        ));
        (record, model)
    };

    // Better than the validation at 6 that the resume redoes: kept, file and record.
    let (record, model) = resume_from_3(1e-12);
    assert_eq!(fs::read_to_string(run.join("best.json")).unwrap(), record);
    assert_eq!(fs::read(run.join("model.best.safetensors")).unwrap(), model);

    // Worse: the validation at 6 replaces it, with the final θ0.
    resume_from_3(1e12);
    let best = json(&run.join("best.json"));
    assert_eq!(best["iteration"], 6);
    assert_eq!(best["value"].as_f64(), Some(last.1));
    assert_eq!(
        fs::read(run.join("model.best.safetensors")).unwrap(),
        fs::read(run.join("model.safetensors")).unwrap()
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// A tiny Meta-SGD run on 5-way 1-shot tasks of 28×28 RGB PNG folders (`data/train`,
/// `data/test`, no validation split), `runs/images`; a large outer lr, so that the learned inner
/// rates move far from `inner_lr` and a figure drawn without them differs.
const TINY_IMAGES: &str = r#"
[run]
name = "images"
[task]
kind = "folder"
root = "data/train"
test_root = "data/test"
cache_dir = "cache"
ways = 5
shots = 1
queries = 2
image_size = 28
[model]
backbone = "conv4"
filters = 8
[algorithm]
name = "metasgd"
inner_lr = 0.4
[outer]
meta_batch = 2
iterations = 3
lr = 0.05
[eval]
every = 0
test_tasks = 2
[log]
every = 1
checkpoint_every = 3
"#;

/// `class` drawn a `drawing`-th time: a colour per class, a block whose place depends on the
/// drawing.
fn write_image(path: &Path, class: u32, drawing: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let colour = [
        (class * 53 % 256) as u8,
        (class * 97 % 256) as u8,
        255 - class as u8,
    ];
    image::RgbImage::from_fn(28, 28, |x, y| {
        let block = (x / 7 + drawing) % 4 == class % 4 && y / 7 == class % 4;
        image::Rgb(if block { [0, 0, 0] } else { colour })
    })
    .save(path)
    .unwrap();
}

/// The width and height in a PNG's IHDR chunk (after checking the signature).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// An image run writes `plots/predictions.png` at the end of `train` (two meta-test tasks, two
/// queries per class), and `plot` redraws the same figure from `config.toml` and
/// `model.safetensors`, Meta-SGD's learned inner rates included.
#[test]
fn image_run_writes_the_predictions_figure_and_plot_redraws_it() {
    let dir = scratch("predictions");
    for (split, first, classes) in [("train", 0, 8), ("test", 20, 6)] {
        for c in first..first + classes {
            for d in 0..4 {
                write_image(&dir.join(format!("data/{split}/c{c:02}/{d}.png")), c, d);
            }
        }
    }
    fs::write(dir.join("images.toml"), TINY_IMAGES).unwrap();
    let stdout = ok(&metaloop(&dir, &["train", "--config", "images.toml"]));
    let figure = Path::new("runs/images/plots/predictions.png");
    assert!(
        stdout.contains(&format!("plot: {}", figure.display())),
        "{stdout}"
    );
    let png = fs::read(dir.join(figure)).unwrap();
    // 5 classes of 200 px and the margins; per task a header (32), two labels (22), a support
    // row (114) and two query rows (134), tasks 16 px apart.
    let expected = (
        2 * 16 + 5 * 200,
        2 * 16 + 2 * (32 + 22 + 114 + 22 + 2 * 134) + 16,
    );
    assert_eq!(png_size(&png), expected);
    let decoded = image::load_from_memory(&png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), expected);

    fs::remove_file(dir.join(figure)).unwrap();
    let stdout = ok(&metaloop(&dir, &["plot", "runs/images"]));
    let plots: Vec<&str> = stdout.lines().collect();
    let expected: Vec<String> = ["learning_curves.png", "predictions.png"]
        .iter()
        .map(|f| Path::new("runs/images/plots").join(f).display().to_string())
        .collect();
    assert_eq!(plots, expected);
    assert!(
        fs::read(dir.join(figure)).unwrap() == png,
        "plot drew another figure"
    );

    // Without its dataset, `plot` exits 2 naming it and redraws nothing.
    fs::rename(dir.join("data"), dir.join("moved")).unwrap();
    fs::remove_file(dir.join(figure)).unwrap();
    let out = metaloop(&dir, &["plot", "runs/images"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("data/train"), "{stderr}");
    assert!(!dir.join(figure).exists());
    fs::remove_dir_all(&dir).unwrap();
}
