//! Cluster jobs: plain progress lines in a batch log, `config show`, `train --resume auto`, and
//! the provenance of a run (`run.json`).

mod common;

use common::{json, metaloop, ok, TINY_SINUSOID as TINY};
use metaloop_engine::config::TrainConfig;
use std::fs;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cluster", name)
}

#[test]
fn a_batch_log_shows_a_progress_line_every_log_every_iterations() {
    let dir = scratch("batch-log");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    // stderr is a pipe here, as in a Slurm job's output file.
    let out = metaloop(&dir, &["train", "--config", "tiny.toml"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("iteration "))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, it) in lines.iter().zip([2, 4, 6]) {
        let head = format!("iteration {it}/6: meta-loss ");
        assert!(line.starts_with(&head), "{line}");
        assert!(line.contains(" tasks/s, ETA "), "{line}");
        let eta = line.rsplit("ETA ").next().unwrap();
        assert_eq!(eta.split(':').count(), 3, "{line}");
    }
    assert!(lines[2].ends_with("ETA 0:00:00"), "{}", lines[2]);
}

#[test]
fn config_show_prints_the_resolved_config_with_defaults_and_writes_nothing() {
    let dir = scratch("config-show");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let args = ["config", "show", "--config", "tiny.toml"];
    let out = metaloop(
        &dir,
        &[&args[..], &["--set", "outer.iterations=9"]].concat(),
    );
    let shown: TrainConfig = toml::from_str(&ok(&out)).unwrap();
    let mut expected: TrainConfig = toml::from_str(TINY).unwrap();
    expected.outer.iterations = 9;
    assert_eq!(shown, expected);
    // Defaults the file does not name are shown too.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("keep_checkpoints = 2") && text.contains("inner_lr = "),
        "{text}"
    );
    assert_eq!(common::entries(&dir), ["tiny.toml"]);

    // A bad key: exit 2 and the same one line as `train`, nothing written.
    let bad = ["--set", "outer.lrr=1"];
    let show = metaloop(&dir, &[&args[..], &bad].concat());
    let train = metaloop(
        &dir,
        &[&["train", "--config", "tiny.toml"][..], &bad].concat(),
    );
    assert_eq!(show.status.code(), Some(2));
    assert_eq!(train.status.code(), Some(2));
    let line = String::from_utf8_lossy(&show.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("unknown key `outer.lrr`"), "{line}");
    assert_eq!(show.stderr, train.stderr);
    assert!(show.stdout.is_empty());
    assert_eq!(common::entries(&dir), ["tiny.toml"]);
}

fn iterations(run: &Path) -> Vec<u64> {
    common::metrics(run)
        .iter()
        .map(|l| l["iteration"].as_u64().unwrap())
        .collect()
}

#[test]
fn resume_auto_starts_fresh_then_continues_and_redoes_a_run_without_checkpoint() {
    let dir = scratch("resume-auto");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let auto = ["train", "--config", "tiny.toml", "--resume", "auto"];
    // No run directory: a fresh start.
    ok(&metaloop(&dir, &auto));
    let run = dir.join("runs/tiny");
    let report = json(&run.join("report.json"));
    assert!(report["resumed_from"].is_null(), "{report}");
    let model = fs::read(run.join("model.safetensors")).unwrap();

    // A finished run: it continues from its last checkpoint, with nothing left to train.
    ok(&metaloop(&dir, &auto));
    assert_eq!(json(&run.join("report.json"))["resumed_from"], 6);
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), model);

    // As if stopped before the first checkpoint: the directory, its metrics and its best model
    // are there, no checkpoint. The run starts again in it, to the same model (f64).
    for f in ["checkpoints", "model.safetensors", "report.json"] {
        let p = run.join(f);
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
            fs::create_dir(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    // A best model from before the stop, better than any the run will find: forgotten.
    let mut best = json(&run.join("best.json"));
    best["iteration"] = 99.into();
    best["value"] = 0.0.into();
    fs::write(run.join("best.json"), best.to_string()).unwrap();
    ok(&metaloop(&dir, &auto));
    assert!(json(&run.join("report.json"))["resumed_from"].is_null());
    assert_eq!(
        iterations(&run),
        [2, 3, 4, 6],
        "metrics redone, not duplicated"
    );
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), model);
    let best = json(&run.join("best.json"))["iteration"].as_u64().unwrap();
    assert!(best == 3 || best == 6, "best.json of iteration {best}");

    // Another config in the same directory: refused as plain --resume refuses it.
    fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let other = metaloop(&dir, &[&auto[..], &["--set", "outer.lr=0.5"]].concat());
    assert_eq!(other.status.code(), Some(2));
    let line = String::from_utf8_lossy(&other.stderr);
    assert!(
        line.contains("the config differs from") && line.contains("outer.lr"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_may_change_the_keys_that_change_no_result_only() {
    let dir = scratch("neutral");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let resume = ["train", "--config", "tiny.toml", "--resume"];
    ok(&metaloop(&dir, &resume[..3]));
    let run = dir.join("runs/tiny");
    let model = fs::read(run.join("model.safetensors")).unwrap();
    // Back to the checkpoint of iteration 3.
    for ext in ["json", "safetensors"] {
        fs::remove_file(run.join(format!("checkpoints/ckpt-000000006.{ext}"))).unwrap();
    }
    // A key that changes the result, or its rounding (the threads' summation order): refused,
    // named, nothing changed.
    let config = fs::read(run.join("config.toml")).unwrap();
    for (set, key) in [
        ("outer.lr=0.5", "outer.lr"),
        ("run.threads=2", "run.threads"),
    ] {
        let out = metaloop(&dir, &[&resume[..], &["--set", set]].concat());
        let line = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains("the config differs from")
                && line.ends_with(&format!("in {key} (resume with the run's own config)\n")),
            "{line}"
        );
    }
    assert_eq!(fs::read(run.join("config.toml")).unwrap(), config);
    // Every neutral key changed at once: accepted, and the same model.
    let neutral = [
        "log.every=1",
        "log.checkpoint_every=1",
        "log.keep_checkpoints=5",
        "log.tensorboard=false",
        "run.collective_timeout_s=30",
        "run.consistency_every=1",
        "task.cache_dir=\"elsewhere\"",
    ];
    let sets: Vec<&str> = neutral.iter().flat_map(|s| ["--set", *s]).collect();
    ok(&metaloop(&dir, &[&resume[..], &sets].concat()));
    assert_eq!(json(&run.join("report.json"))["resumed_from"], 3);
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), model);
    assert_eq!(
        iterations(&run),
        [2, 3, 4, 5, 6],
        "log.every = 1 after the resume"
    );
    // config.toml holds the values in use.
    let stored: TrainConfig =
        toml::from_str(&fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!((stored.log.every, stored.run.collective_timeout_s), (1, 30));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn launch_checks_and_runs_resume_auto_on_two_ranks() {
    let dir = scratch("launch-auto");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let launch = ["launch", "-n", "2", "--", "train", "--config", "tiny.toml"];
    let auto = [&launch[..], &["--resume", "auto"]].concat();
    // Rank 0 tells the other rank whether there is a checkpoint: fresh, then continued.
    ok(&metaloop(&dir, &auto));
    let run = dir.join("runs/tiny");
    assert!(json(&run.join("report.json"))["resumed_from"].is_null());
    ok(&metaloop(&dir, &auto));
    assert_eq!(json(&run.join("report.json"))["resumed_from"], 6);
    // launch's own check refuses another config before mpirun starts: one line, exit 2.
    fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let other = metaloop(&dir, &[&auto[..], &["--set", "outer.lr=0.5"]].concat());
    assert_eq!(other.status.code(), Some(2));
    let line = String::from_utf8_lossy(&other.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("the config differs from"), "{line}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_json_and_report_json_record_what_produced_the_run() {
    let dir = scratch("provenance");
    fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let launch = ["launch", "-n", "2", "--", "train", "--config", "tiny.toml"];
    ok(&metaloop(&dir, &launch));
    let run = dir.join("runs/tiny");
    let record = json(&run.join("run.json"));
    let report = json(&run.join("report.json"));
    let line: Vec<&str> = record["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(line[0].ends_with("metaloop"), "{line:?}");
    assert_eq!(
        line[1..],
        ["train", "--config", "tiny.toml", "--threads", "1"]
    );
    assert_eq!(record["metaloop_version"], env!("CARGO_PKG_VERSION"));
    let commit = record["git_commit"].as_str().unwrap();
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    assert!(record["libtorch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));
    assert_eq!(record["ranks"], 2);
    let places = record["places"].as_array().unwrap();
    assert_eq!(places.len(), 2);
    for (r, p) in places.iter().enumerate() {
        assert_eq!(p["rank"], r);
        assert_eq!(p["device"], "Cpu");
        assert!(!p["host"].as_str().unwrap().is_empty());
    }
    let (started, ended) = (
        record["started"].as_str().unwrap(),
        record["ended"].as_str().unwrap(),
    );
    assert!(
        started.len() == 20 && started.ends_with('Z') && started <= ended,
        "{started} {ended}"
    );
    assert_eq!(record["earlier"], serde_json::json!([]));
    // report.json carries the same fields.
    for key in [
        "command_line",
        "git_commit",
        "libtorch_version",
        "ranks",
        "places",
        "started",
        "ended",
    ] {
        assert_eq!(report[key], record[key], "{key}");
    }

    // A resume keeps the first invocation under `earlier`.
    ok(&metaloop(
        &dir,
        &["train", "--config", "tiny.toml", "--resume"],
    ));
    let record = json(&run.join("run.json"));
    assert_eq!(record["ranks"], 1);
    let earlier = record["earlier"].as_array().unwrap();
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0]["ranks"], 2);
    assert!(earlier[0].get("earlier").is_none());
    fs::remove_dir_all(&dir).unwrap();
}
