//! The TensorBoard event writer (engine::tensorboard), read back by TensorBoard's own reader
//! (`EventAccumulator` from the `tensorboard` package that `cargo xtask setup` installs in the
//! set-up venv): every scalar, tag, step and value must come back.
//!
//! Python is run here not to make fixtures but because reading the file with TensorBoard itself
//! is the property under test.

use std::path::PathBuf;
use std::process::Command;

use metaloop_engine::tensorboard::{tags, TensorBoard};

fn venv_python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("metaloop/torch-2.11.0/bin/python")
}

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out))
"#;

#[test]
fn tensorboard_reads_back_every_scalar() {
    let python = venv_python();
    let importable = Command::new(&python)
        .args([
            "-c",
            "import tensorboard.backend.event_processing.event_accumulator",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        eprintln!(
            "SKIPPED: {} cannot import tensorboard (run `cargo xtask setup`)",
            python.display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("metaloop-tensorboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let lr = format!("{}lr", tags::HPARAM_PREFIX);
    let mut expected: Vec<(String, u64, f64)> = Vec::new();
    let mut tb = TensorBoard::create(&dir).unwrap();
    for step in [1u64, 2, 3, 10, 1000, 1 << 40] {
        let s = step as f64;
        let values = [
            (tags::META_LOSS, 3.0 / s.ln_1p()),
            (tags::QUERY_ACCURACY, 0.2 + 0.7 * (1.0 - 1.0 / s)),
            (tags::TASKS_PER_S, 1234.5 + s.sqrt()),
            (tags::GRAD_NORM, 1e-3 * s.sqrt()),
            (lr.as_str(), 0.4 - 1e-3 * s.ln()),
        ];
        tb.scalars(step, &values).unwrap();
        expected.extend(values.iter().map(|(t, v)| (t.to_string(), step, *v)));
        if step % 10 == 0 {
            tb.scalar(tags::VAL_LOSS_BEFORE, step, -2.5 * s).unwrap();
            tb.scalar(tags::VAL_LOSS_AFTER, step, 0.125).unwrap();
            expected.push((tags::VAL_LOSS_BEFORE.into(), step, -2.5 * s));
            expected.push((tags::VAL_LOSS_AFTER.into(), step, 0.125));
        }
    }
    // A second writer in the same directory (a resumed run) adds its own file.
    let mut resumed = TensorBoard::create(&dir).unwrap();
    assert_ne!(resumed.path(), tb.path());
    resumed
        .scalar(tags::VAL_ACCURACY_AFTER, 2000, 0.875)
        .unwrap();
    expected.push((tags::VAL_ACCURACY_AFTER.into(), 2000, 0.875));

    let out = Command::new(&python)
        .args(["-c", READER])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = read.as_object().unwrap();
    let tags_read: std::collections::BTreeSet<&String> = read.keys().collect();
    let tags_written: std::collections::BTreeSet<&String> =
        expected.iter().map(|(t, _, _)| t).collect();
    assert_eq!(tags_read, tags_written);
    let mut count = 0;
    for (tag, events) in read {
        for e in events.as_array().unwrap() {
            let step = e[0].as_u64().unwrap();
            let value = e[1].as_f64().unwrap();
            let want = expected
                .iter()
                .find(|(t, s, _)| t == tag && *s == step)
                .unwrap_or_else(|| panic!("{tag} at step {step} was never written"));
            // simple_value is a float32 field: the value read back is the f32 nearest the f64
            // (compared as f32: serde_json's default float parsing may be 1 ulp off in f64).
            assert_eq!(value as f32, want.2 as f32, "{tag} at step {step}");
            count += 1;
        }
    }
    assert_eq!(count, expected.len(), "every scalar read back once");
    std::fs::remove_dir_all(&dir).unwrap();
}
