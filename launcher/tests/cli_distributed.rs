//! The `metaloop` binary under MPI: `metaloop launch -n 2 -- train` gives the same final report as
//! one rank and writes one run directory (rank 0 alone writes); with `run.reproducible` the same
//! model bytes on 1, 2 and 3 ranks and 1 or 2 workers; and a short meta-training
//! completes with one rank on each of two hosts (network namespaces over TCP).

mod common;

use common::bounded::OutputWithin;
use common::netns::TwoHosts;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The launcher's binary.
fn metaloop() -> PathBuf {
    common::metaloop_binary()
}

fn report_loss_after(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("report.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["test"]["loss_after"]["mean"].as_f64().unwrap()
}

fn train_args(out: &Path, name: &str) -> Vec<String> {
    [
        "--threads",
        "1",
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/sinusoid.toml"),
        "--set",
        "outer.iterations=30",
        "--set",
        "eval.test_tasks=50",
        "--set",
        "log.checkpoint_every=10",
        "--set",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("run.out_dir=\"{}\"", out.display()),
        "--set".into(),
        format!("run.name=\"{name}\""),
    ])
    .collect()
}

#[test]
fn two_ranks_give_the_report_of_one_and_write_one_run_directory() {
    let out = std::env::temp_dir().join(format!("metaloop-cli-distributed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let one = Command::new(metaloop())
        .args(train_args(&out, "one"))
        .output()
        .unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let mut two = Command::new(metaloop());
    two.args(["launch", "-n", "2", "--"])
        .args(train_args(&out, "two"));
    let two = two.output().unwrap();
    assert!(
        two.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&two.stdout),
        String::from_utf8_lossy(&two.stderr)
    );
    // Only rank 0 prints the report.
    assert_eq!(
        String::from_utf8_lossy(&two.stdout)
            .matches("meta-test:")
            .count(),
        1
    );
    let (a, b) = (
        report_loss_after(&out.join("one")),
        report_loss_after(&out.join("two")),
    );
    // f32: the all-reduce sums per-rank partial sums in another order (see engine/tests/distributed.rs).
    assert!((a - b).abs() <= 1e-5 * a.abs(), "1 rank: {a}, 2 ranks: {b}");
    // One metrics line per logged iteration: rank 1 wrote nothing.
    let metrics = std::fs::read_to_string(out.join("two/metrics.jsonl")).unwrap();
    let iterations: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["iteration"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut dedup = iterations.clone();
    dedup.dedup();
    assert_eq!(
        iterations, dedup,
        "metrics lines written twice: {iterations:?}"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn meta_training_completes_with_one_rank_on_each_of_two_hosts() {
    let hosts = match TwoHosts::new() {
        Ok(h) => h,
        Err(why) => {
            println!("skipped: two-host test needs `ip netns` ({why})");
            return;
        }
    };
    let out = std::env::temp_dir().join(format!("metaloop-two-hosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let args = train_args(&out, "two-hosts");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = hosts.run(&metaloop(), &args);
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.join("two-hosts/report.json").exists(),
        "no report: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert!(report_loss_after(&out.join("two-hosts")).is_finite());
    std::fs::remove_dir_all(&out).ok();
}

/// `run.reproducible` (docs/faults.md): the same f32 config (6 tasks, 200 Adam steps of
/// second-order MAML on a small MLP) writes byte-identical model.safetensors on 1, 2 and 3
/// ranks and on 1 and 2 workers per rank, under `metaloop launch` and under mpirun directly.
#[test]
fn reproducible_runs_write_the_same_model_bytes_on_any_ranks_and_workers() {
    let out =
        std::env::temp_dir().join(format!("metaloop-cli-reproducible-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = |how: &str, ranks: usize, workers: usize| -> Vec<u8> {
        let name = format!("{how}-{ranks}-{workers}");
        let args: Vec<String> = [
            "--threads".to_string(),
            workers.to_string(),
            "train".into(),
            "--config".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/sinusoid.toml").into(),
        ]
        .into_iter()
        .chain(
            [
                "run.reproducible=true".to_string(),
                format!("run.workers={workers}"),
                "outer.iterations=200".into(),
                "outer.meta_batch=6".into(),
                "model.hidden=[8, 8]".into(),
                "eval.every=100".into(),
                "eval.val_tasks=6".into(),
                "eval.test_tasks=12".into(),
                "log.checkpoint_every=100".into(),
                format!("run.out_dir=\"{}\"", out.display()),
                format!("run.name=\"{name}\""),
            ]
            .into_iter()
            .flat_map(|kv| ["--set".to_string(), kv]),
        )
        .collect();
        let mut cmd = if how == "launch" {
            let mut c = Command::new(metaloop());
            c.args(["launch", "-n", &ranks.to_string(), "--"]);
            c
        } else {
            let mut c = Command::new("mpirun");
            c.args([
                "-n",
                &ranks.to_string(),
                "--oversubscribe",
                "--allow-run-as-root",
            ]);
            c.args(["--bind-to", "none"]).arg(metaloop());
            c
        };
        let done = cmd.args(&args).output_within_limit();
        assert!(
            done.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::read(out.join(&name).join("model.safetensors")).unwrap()
    };
    let one = run("launch", 1, 1);
    for (how, ranks, workers) in [
        ("launch", 2, 1),
        ("launch", 3, 1),
        ("launch", 1, 2),
        ("mpirun", 2, 2),
        ("mpirun", 3, 1),
    ] {
        assert!(
            run(how, ranks, workers) == one,
            "{how} -n {ranks} with {workers} workers: other model bytes than launch -n 1"
        );
    }
    std::fs::remove_dir_all(&out).ok();
}

/// `algorithm.inner_clip_grad_norm`: every metrics line counts the (task, step) pairs clipped
/// since the line before, summed over ranks, workers and task chunks. With a bound of 1e-12
/// every inner gradient clips: 5 tasks × 2 steps × 3 iterations between lines, on 1 rank and
/// on 2 (3 + 2 tasks; also with `run.reproducible` and with 2 workers in chunks of 1), and 0
/// with clipping off.
#[test]
fn inner_clips_are_counted_over_ranks_between_metrics_lines() {
    let out = std::env::temp_dir().join(format!("metaloop-cli-inner-clips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = |name: &str, ranks: usize, extra: &[&str]| -> Vec<serde_json::Value> {
        let sets = [
            "outer.iterations=6",
            "outer.meta_batch=5",
            "algorithm.inner_steps=2",
            "log.every=3",
            "eval.every=0",
            "eval.test_tasks=4",
            "model.hidden=[8, 8]",
        ];
        let mut cmd = Command::new(metaloop());
        cmd.args(["launch", "-n", &ranks.to_string(), "--", "--threads", "2"]);
        cmd.args(["train", "--config"]).arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/sinusoid.toml"
        ));
        for kv in sets.iter().chain(extra) {
            cmd.args(["--set", kv]);
        }
        cmd.args(["--set", &format!("run.out_dir=\"{}\"", out.display())]);
        cmd.args(["--set", &format!("run.name=\"{name}\"")]);
        let done = cmd.output_within_limit();
        assert!(
            done.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
        let text = std::fs::read_to_string(out.join(name).join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let clip = "algorithm.inner_clip_grad_norm=1e-12";
    for (name, ranks, extra) in [
        ("one", 1, &[clip][..]),
        ("two", 2, &[clip][..]),
        (
            "chunks",
            2,
            &[clip, "run.workers=2", "run.task_chunk=1"][..],
        ),
        ("exact", 2, &[clip, "run.reproducible=true"][..]),
        ("off", 2, &[][..]),
    ] {
        let lines = run(name, ranks, extra);
        let want = if extra.is_empty() { 0 } else { 5 * 2 * 3 };
        let iterations: Vec<u64> = lines
            .iter()
            .map(|l| l["iteration"].as_u64().unwrap())
            .collect();
        assert_eq!(iterations, [3, 6], "{name}");
        for l in &lines {
            assert_eq!(l["inner_clips"].as_u64(), Some(want), "{name}: {l}");
            let norm = l.get("inner_clip_norm").and_then(|n| n.as_f64());
            assert_eq!(norm.is_some(), want > 0, "{name}: {l}");
            assert!(norm.is_none_or(|n| n > 1e-12), "{name}: {l}");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}
