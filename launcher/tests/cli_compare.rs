//! `metaloop compare` on two real tiny sinusoid runs trained by the binary with different
//! `--set` values, and `metaloop plot` writing `plots/adaptation.png` for a sinusoid run.

mod common;

use common::{json, metaloop, ok, scratch, TINY_SINUSOID};
use std::fs;

#[test]
fn compare_two_runs_and_plot_their_adaptation() {
    let dir = scratch("cmp", "two");
    let tiny = TINY_SINUSOID.replace("name = \"tiny\"", "name = \"a\"");
    fs::write(dir.join("tiny.toml"), tiny).unwrap();
    ok(&metaloop(&dir, &["train", "--config", "tiny.toml"]));
    ok(&metaloop(
        &dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "run.name=\"b\"",
            "--set",
            "algorithm.inner_lr=0.02",
        ],
    ));
    let text = ok(&metaloop(
        &dir,
        &["compare", "runs/a", "runs/b", "--out", "cmp/curves.png"],
    ));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("run")).unwrap();
    // Only the keys that differ: the name and the inner lr, not the shared ones.
    assert!(
        header.contains("algorithm.inner_lr") && header.contains("run.name"),
        "{text}"
    );
    assert!(
        !header.contains("outer.meta_batch") && !header.contains("task.shots"),
        "{text}"
    );
    let row_b = lines.iter().find(|l| l.starts_with("runs/b")).unwrap();
    assert!(row_b.contains("0.02") && row_b.contains("mse"), "{text}");
    // Meta-test results with their CI, as report.json has them.
    let report = json(&dir.join("runs/b/report.json"));
    let after = &report["test"]["loss_after"];
    let want = format!(
        "{:.4} ± {:.4}",
        after["mean"].as_f64().unwrap(),
        after["ci95"].as_f64().unwrap()
    );
    assert!(row_b.contains(&want), "{want} in {row_b}");
    assert!(text.contains("learning curves: cmp/curves.png"), "{text}");
    let img = image::open(dir.join("cmp/curves.png")).unwrap();
    assert!(img.width() > 0 && img.height() > 0);

    // Fewer than two runs, or a folder that is no run: one line, exit 2.
    let one = metaloop(&dir, &["compare", "runs/a"]);
    assert_eq!(one.status.code(), Some(2));
    let none = metaloop(&dir, &["compare", "runs/a", "nowhere"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("nowhere: not a run directory"));

    // The adaptation figure of a sinusoid run.
    let plotted = ok(&metaloop(&dir, &["plot", "runs/a"]));
    let png = dir.join("runs/a/plots/adaptation.png");
    assert!(plotted.contains("adaptation.png"), "{plotted}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 520, 440));
    fs::remove_dir_all(&dir).unwrap();
}
