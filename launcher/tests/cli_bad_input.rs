//! Bad input to `metaloop`: exit code 2, exactly one line on stderr naming the file or key and
//! what was expected, and nothing written (no run directory).

mod common;

use common::bounded::OutputWithin;
use common::{entries, gray_png};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    common::scratch("bad", name)
}

const TINY: &str = "[run]\nname = \"tiny\"\n[model]\nhidden = [4]\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";

/// Runs `metaloop args` in a fresh directory holding `c.toml` (= `config`); asserts exit code 2,
/// one stderr line, and that the directory afterwards holds only `c.toml`, unchanged (see
/// [`rejects_in`]). Returns the line.
fn rejects(name: &str, config: &str, args: &[&str]) -> String {
    let dir = scratch(name);
    fs::write(dir.join("c.toml"), config).unwrap();
    let line = rejects_in(&dir, args);
    fs::remove_dir_all(&dir).unwrap();
    line
}

fn train(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["train", "--config", "c.toml"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_unknown_key_in_the_file_is_named_with_the_keys_allowed() {
    let line = rejects(
        "unknown-file",
        &TINY.replace("iterations = 2\n", "iterations = 2\nlrr = 0.1\n"),
        &train(&[]),
    );
    // The allowed keys in the order the config declares them (the list grows with the config).
    assert!(line.starts_with("metaloop: c.toml: unknown key `outer.lrr` (expected one of optimizer, lr, meta_batch, iterations"), "{line}");
    assert!(line.ends_with(')'), "{line}");
}

#[test]
fn an_unknown_key_in_a_set_is_named() {
    let line = rejects(
        "unknown-set",
        TINY,
        &train(&["--set", "algorithm.inner_lrr=0.1"]),
    );
    assert!(line.starts_with("metaloop: --set: unknown key `algorithm.inner_lrr` (expected one of name, inner_steps,"), "{line}");
}

#[test]
fn an_out_of_range_value_is_named_with_what_is_allowed() {
    let line = rejects("range", TINY, &train(&["--set", "algorithm.inner_lr=-1"]));
    assert_eq!(
        line,
        "metaloop: --set: algorithm.inner_lr: must be a finite number > 0, got -1"
    );
    let line = rejects(
        "range-file",
        &TINY.replace("meta_batch = 2", "meta_batch = 0"),
        &train(&[]),
    );
    assert_eq!(
        line,
        "metaloop: c.toml: outer.meta_batch: must be >= 1, got 0"
    );
}

#[test]
fn an_outer_option_of_another_optimizer_or_an_unknown_one_is_named() {
    let line = rejects(
        "outer-option",
        TINY,
        &train(&["--set", "outer.momentum=0.9"]),
    );
    assert!(
        line.ends_with("outer.momentum: not an option of outer.optimizer = \"adam\" (its options: betas, eps, weight_decay, amsgrad)"),
        "{line}"
    );
    let line = rejects(
        "outer-unknown",
        &TINY.replace(
            "iterations = 2\n",
            "iterations = 2\noptimizer = \"rmsprop\"\nmomentun = 0.9\n",
        ),
        &train(&[]),
    );
    assert!(
        line.starts_with("metaloop: c.toml: unknown key `outer.momentun`"),
        "{line}"
    );
    let line = rejects(
        "outer-warmup",
        TINY,
        &train(&["--set", "outer.warmup_iterations=2"]),
    );
    assert!(
        line.ends_with("outer.warmup_iterations: must be below outer.iterations (2), got 2"),
        "{line}"
    );
}

#[test]
fn a_misspelt_algorithm_is_named_with_the_algorithms_allowed() {
    let line = rejects(
        "algorithm",
        TINY,
        &train(&["--set", "algorithm.name=\"mamal\""]),
    );
    assert_eq!(
        line,
        "metaloop: --set: algorithm.name: must be one of \"maml\", \"fomaml\", \"metasgd\", \"anil\", \"reptile\", \"pretrain\", \"lslr\", \"imaml\", got \"mamal\""
    );
}

#[test]
fn a_wrong_type_is_named() {
    let line = rejects(
        "type",
        TINY,
        &train(&["--set", "outer.iterations=\"many\""]),
    );
    assert!(
        line.starts_with("metaloop: --set: outer.iterations: invalid type: string \"many\""),
        "{line}"
    );
}

#[test]
fn a_toml_syntax_error_gives_its_line() {
    let line = rejects("syntax", "[outer\niterations = 2\n", &train(&[]));
    assert!(
        line.starts_with("metaloop: c.toml: line 1, column"),
        "{line}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let line = rejects("no-config", TINY, &["train", "--config", "nope.toml"]);
    assert_eq!(line, "metaloop: nope.toml: no such file");
}

#[test]
fn a_missing_dataset_directory_is_named() {
    let config = "[run]\nname = \"omni\"\n[task]\nkind = \"omniglot\"\nroot = \"no/such/omniglot\"\nways = 5\nshots = 1\n[model]\nbackbone = \"conv4\"\n";
    let line = rejects("dataset", config, &train(&[]));
    assert!(
        line.contains("no/such/omniglot") && line.contains("no such directory"),
        "{line}"
    );
}

#[test]
fn resume_without_a_checkpoint_is_refused() {
    let line = rejects("resume", TINY, &train(&["--resume"]));
    assert_eq!(
        line,
        format!(
            "metaloop: --resume: no checkpoint in {}",
            Path::new("runs/tiny/checkpoints").display()
        )
    );
}

#[test]
fn eval_tasks_beyond_the_bound_are_refused() {
    for (tasks, bound) in [("1000000000000", 1 << 24), ("1", 1 << 24)] {
        let line = rejects(
            "eval-tasks",
            TINY,
            &["eval", "--checkpoint", "runs/x", "--tasks", tasks],
        );
        assert_eq!(
            line,
            format!("metaloop: eval --tasks: must be 2 to {bound}, got {tasks}")
        );
    }
}

#[test]
fn eval_of_a_missing_checkpoint_is_refused() {
    let checkpoint = "runs/x/checkpoints/ckpt-000000001.json";
    let line = rejects("eval", TINY, &["eval", "--checkpoint", checkpoint]);
    assert!(
        line.contains(checkpoint) && line.contains("no such file"),
        "{line}"
    );
}

#[test]
fn plot_of_a_directory_without_metrics_is_refused() {
    let line = rejects("plot", TINY, &["plot", "."]);
    assert!(
        line.contains("metrics.jsonl") && line.contains("no such file"),
        "{line}"
    );
}

#[test]
fn an_existing_run_directory_is_not_overwritten() {
    let dir = scratch("exists");
    fs::write(dir.join("c.toml"), TINY).unwrap();
    fs::create_dir_all(dir.join("runs/tiny")).unwrap();
    fs::write(dir.join("runs/tiny/mine.txt"), "keep").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
        .current_dir(&dir)
        .args(train(&[]))
        .output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("run directory already exists"), "{stderr}");
    assert_eq!(entries(&dir.join("runs/tiny")), ["mine.txt"]);
    fs::remove_dir_all(&dir).unwrap();
}

// Bad datasets and checkpoints. The dataset (and any earlier run) lives in the scratch directory
// beside the config; the command must leave every file there as it was: no run directory, no
// decode cache, no checkpoint.

/// Every file under `dir` with its size and modification time, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// Runs `metaloop args` in `dir`; asserts exit code 2, one stderr line, and that no file under
/// `dir` was added, removed or changed. Returns the line.
fn rejects_in(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaloop"));
    cmd.args(args);
    rejects_command(dir, cmd)
}

/// [`rejects_in`] for `metaloop args` under `ulimit -v kib`.
fn rejects_under_limit(dir: &Path, kib: u64, args: &[&str]) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("ulimit -v {kib}; exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_metaloop"))
        .args(args);
    rejects_command(dir, cmd)
}

/// Runs `cmd` in `dir`; the assertions of [`rejects_in`].
fn rejects_command(dir: &Path, mut cmd: Command) -> String {
    let before = tree(dir);
    let out = cmd.current_dir(dir).output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert_eq!(tree(dir), before, "files were written or changed");
    stderr.trim().to_string()
}

fn png(path: &Path, width: u32, height: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .save(path)
        .unwrap();
}

/// A 2-way 1-shot folder dataset config over `data/train` (Conv-4 on 8×8 images).
const FOLDER: &str = "[run]\nname = \"f\"\n[task]\nkind = \"folder\"\nroot = \"data/train\"\nways = 2\nshots = 1\nqueries = 1\nimage_size = 8\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";

/// `data/train/<class>/<i>.png` for classes a, b, c with 3 images of 10×12 each.
fn folder_dataset(name: &str) -> PathBuf {
    let dir = scratch(name);
    fs::write(dir.join("c.toml"), FOLDER).unwrap();
    for class in ["a", "b", "c"] {
        for i in 0..3 {
            png(&dir.join(format!("data/train/{class}/{i}.png")), 10, 12);
        }
    }
    dir
}

#[test]
fn an_empty_class_folder_is_named() {
    let dir = folder_dataset("empty-class");
    fs::create_dir(dir.join("data/train/d")).unwrap();
    let line = rejects_in(&dir, &train(&[]));
    assert_eq!(
        line,
        format!(
            "metaloop: class folder {} is empty (expected *.png, *.jpg or *.jpeg images)",
            Path::new("data/train/d").display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// A folder dataset whose `image` is changed by `damage`: the run names it as unreadable.
fn a_damaged_image_is_named(name: &str, image: &str, damage: impl FnOnce(&Path)) {
    let dir = folder_dataset(name);
    damage(&dir.join(image));
    let line = rejects_in(&dir, &train(&[]));
    let named = format!(
        "metaloop: {}: unreadable image: ",
        Path::new(image).display()
    );
    assert!(line.starts_with(&named), "{line}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_image_is_named() {
    a_damaged_image_is_named("unreadable", "data/train/b/1.png", |path| {
        fs::write(path, b"not a png at all").unwrap()
    });
}

#[test]
fn a_truncated_image_is_named() {
    a_damaged_image_is_named("truncated", "data/train/c/2.png", |path| {
        let bytes = fs::read(path).unwrap();
        fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    });
}

#[test]
fn a_wrongly_sized_image_is_named_with_the_sizes_allowed() {
    // The folder layout resizes any source size; Omniglot allows its 105×105 scans and images
    // already at the target size (28×28) only. MAML's split needs 1200 characters: 1200 folders
    // of one 28×28 drawing each, one of them 50×50.
    let dir = scratch("wrong-size");
    let config = "[run]\nname = \"o\"\n[task]\nkind = \"omniglot\"\nroot = \"omni\"\nways = 5\nshots = 1\nqueries = 1\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";
    fs::write(dir.join("c.toml"), config).unwrap();
    for (set, alphabet) in [
        ("images_background", "Alpha"),
        ("images_evaluation", "Beta"),
    ] {
        for c in 0..600 {
            let file = dir.join(format!("omni/{set}/{alphabet}/character{c:03}/1.png"));
            gray_png(&file, 28, 28, 255);
        }
    }
    let bad = Path::new("omni/images_evaluation/Beta/character123/1.png");
    gray_png(&dir.join(bad), 50, 50, 255);
    let line = rejects_in(&dir, &train(&[]));
    assert_eq!(
        line,
        format!(
            "metaloop: {}: 50×50 image, expected 105×105 or 28×28 (to be resized to 28×28)",
            bad.display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_csv_naming_a_missing_image_is_named_with_its_line() {
    let dir = scratch("csv-missing");
    let config = "[run]\nname = \"m\"\n[task]\nkind = \"miniimagenet\"\nroot = \"mini\"\nways = 2\nshots = 1\nqueries = 1\nimage_size = 8\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";
    fs::write(dir.join("c.toml"), config).unwrap();
    png(&dir.join("mini/images/n01a.png"), 12, 12);
    png(&dir.join("mini/images/n02a.png"), 12, 12);
    fs::write(
        dir.join("mini/train.csv"),
        "filename,label\nn01a.png,n01\nn01b.png,n01\nn02a.png,n02\n",
    )
    .unwrap();
    for split in ["val", "test"] {
        fs::write(
            dir.join(format!("mini/{split}.csv")),
            "filename,label\nn01a.png,n01\nn02a.png,n02\n",
        )
        .unwrap();
    }
    let line = rejects_in(&dir, &train(&[]));
    assert_eq!(
        line,
        format!(
            "metaloop: miniimagenet: {} line 3 names images/n01b.png, which does not exist",
            Path::new("mini/train.csv").display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// A finished 2-iteration sinusoid run `runs/<name>` with MLP widths `hidden`, config `<name>.toml`.
fn finished_run(dir: &Path, name: &str, hidden: &str) {
    let config = TINY
        .replace("name = \"tiny\"", &format!("name = \"{name}\""))
        .replace("hidden = [4]", &format!("hidden = {hidden}"));
    fs::write(dir.join(format!("{name}.toml")), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
        .current_dir(dir)
        .args([
            "--threads",
            "1",
            "train",
            "--config",
            &format!("{name}.toml"),
        ])
        .output_within_limit();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_checkpoint_whose_shapes_do_not_match_the_model_is_refused() {
    let dir = scratch("shapes");
    finished_run(&dir, "small", "[4]");
    finished_run(&dir, "wide", "[8]");
    let ckpt =
        |run: &str, ext: &str| dir.join(format!("runs/{run}/checkpoints/ckpt-000000002.{ext}"));
    // A foreign checkpoint under `wide`'s name: `small`'s tensors, with the manifest's config
    // hash set to `wide`'s (as a hand-copied checkpoint would be), so only the shapes differ.
    let wide_manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ckpt("wide", "json")).unwrap()).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ckpt("small", "json")).unwrap()).unwrap();
    manifest["config_hash"] = wide_manifest["config_hash"].clone();
    fs::copy(ckpt("small", "safetensors"), ckpt("wide", "safetensors")).unwrap();
    fs::write(
        ckpt("wide", "json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    // The first layer of 1-4-1 is [4, 1]; 1-8-1 needs [8, 1].
    let expected = format!(
        "metaloop: {}: checkpoint: tensor `0.weight` has shape [4, 1], the model needs [8, 1]",
        Path::new("runs/wide/checkpoints/ckpt-000000002.json").display()
    );
    assert_eq!(
        rejects_in(&dir, &["eval", "--checkpoint", "runs/wide"]),
        expected
    );
    assert_eq!(
        rejects_in(&dir, &["train", "--config", "wide.toml", "--resume"]),
        expected
    );

    // A run whose config.toml was edited after the fact: the checkpoint names another config.
    let config = dir.join("runs/small/config.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("hidden = [4]", "hidden = [8]")).unwrap();
    let line = rejects_in(&dir, &["eval", "--checkpoint", "runs/small"]);
    assert!(
        line.starts_with(&format!(
            "metaloop: {}: written by another config (hash ",
            Path::new("runs/small/checkpoints/ckpt-000000002.json").display()
        )) && line.ends_with(&format!(
            "than {}",
            Path::new("runs/small/config.toml").display()
        )),
        "{line}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_size_beyond_the_upper_bound_is_named() {
    let line = rejects(
        "too-wide",
        TINY,
        &train(&["--set", "model.hidden=[4000000000,4000000000]"]),
    );
    assert_eq!(
        line,
        "metaloop: --set: model.hidden: widths must be <= 65536, got 4000000000"
    );
}

#[test]
fn a_model_too_large_in_total_is_named_with_its_parameter_count() {
    // Each width is allowed; their product is not.
    let line = rejects(
        "too-many-params",
        TINY,
        &train(&["--set", "model.hidden=[65536,65536,65536]"]),
    );
    assert!(
        line.starts_with("metaloop: model.hidden: the model would have 8590"),
        "{line}"
    );
    assert!(
        line.ends_with("parameters, more than the 1073741824 allowed"),
        "{line}"
    );
    for (set, key) in [
        ("model.filters=65536", "model.filters"),
        ("model.backbone=\"resnet12\"", "model.widths"),
    ] {
        let dir = folder_dataset(key);
        let mut args = train(&["--set", set]);
        if key == "model.widths" {
            args.extend(["--set", "model.widths=[65536,65536,65536,65536]"]);
        }
        let line = rejects_in(&dir, &args);
        assert!(
            line.starts_with(&format!("metaloop: {key}: the model would have ")),
            "{line}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A zip archive with one stored entry `name` holding 5 bytes, whose zip64 extra field says it
/// unpacks to `claimed` bytes.
fn zip64_claiming(name: &str, claimed: u64) -> Vec<u8> {
    let data = b"hello";
    let crc = 0x3610_a686u32; // crc32(b"hello")
    let extra = [
        &1u16.to_le_bytes()[..],
        &8u16.to_le_bytes(),
        &claimed.to_le_bytes(),
    ]
    .concat();
    let u16le = |v: usize| (v as u16).to_le_bytes();
    let u32le = |v: usize| (v as u32).to_le_bytes();
    // What the local header and the central directory entry share, from "version needed" to
    // the extra field's length: zip64, stored, 1980-01-01, crc, sizes (unpacked: see extra).
    let common = [
        &u16le(45)[..],
        &u16le(0),
        &u16le(0),
        &u16le(0),
        &u16le(0x21),
        &crc.to_le_bytes(),
        &u32le(data.len()),
        &u32::MAX.to_le_bytes(),
        &u16le(name.len()),
        &u16le(extra.len()),
    ]
    .concat();
    let mut z = [
        &0x0403_4b50u32.to_le_bytes()[..],
        &common,
        name.as_bytes(),
        &extra,
        data,
    ]
    .concat();
    let cd = z.len();
    z.extend(
        [
            &0x0201_4b50u32.to_le_bytes()[..],
            &u16le(45),
            &common,
            &[0u8; 10], // comment length, disk, internal and external attributes
            &u32le(0),  // the local header's offset
            name.as_bytes(),
            &extra,
        ]
        .concat(),
    );
    let cd_size = z.len() - cd;
    z.extend(
        [
            &0x0605_4b50u32.to_le_bytes()[..],
            &[0u8; 4],
            &u16le(1),
            &u16le(1),
            &u32le(cd_size),
            &u32le(cd),
            &u16le(0),
        ]
        .concat(),
    );
    z
}

#[test]
fn a_zip_entry_claiming_2_pow_62_bytes_is_refused() {
    // MAML's split needs 1200 characters: the evaluation set as 1200 folders, the background
    // set as a zip with one entry whose zip64 size is 2^62 (which used to be allocated).
    let dir = scratch("zip64");
    let config = "[run]\nname = \"o\"\n[task]\nkind = \"omniglot\"\nroot = \"omni\"\nways = 5\nshots = 1\nqueries = 1\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";
    fs::write(dir.join("c.toml"), config).unwrap();
    for c in 0..1200 {
        let file = dir.join(format!("omni/images_evaluation/Beta/character{c:04}/1.png"));
        gray_png(&file, 28, 28, 255);
    }
    let entry = "images_background/Alpha/character01/1.png";
    fs::write(
        dir.join("omni/images_background.zip"),
        zip64_claiming(entry, 1 << 62),
    )
    .unwrap();
    let line = rejects_in(&dir, &train(&[]));
    assert_eq!(
        line,
        format!(
            "metaloop: {}: zip archive: entry {entry} unpacks to {} bytes, more than the {} allowed per image",
            Path::new("omni/images_background.zip").display(),
            1u64 << 62,
            64u64 << 20
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fifo_named_like_an_image_is_not_read() {
    // A FIFO would block the loader for ever; a symbolic link could lead anywhere. Neither is
    // an image: with them left out, class c has no image.
    let dir = folder_dataset("fifo");
    for i in 0..3 {
        fs::remove_file(dir.join(format!("data/train/c/{i}.png"))).unwrap();
    }
    let status = Command::new("mkfifo")
        .arg(dir.join("data/train/c/0.png"))
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink(
        dir.join("data/train/a/0.png"),
        dir.join("data/train/c/1.png"),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(rejects_in(&d, &train(&[])));
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the loader hangs on the FIFO");
    assert_eq!(
        line,
        format!(
            "metaloop: class folder {} is empty (expected *.png, *.jpg or *.jpeg images)",
            Path::new("data/train/c").display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_class_with_too_few_images_is_named_before_anything_is_written() {
    // Class c has one image; an episode needs shots + queries = 2 of each class it draws. Whether
    // a task ever draws c or not, the run must not start.
    let dir = folder_dataset("too-few");
    for i in 1..3 {
        fs::remove_file(dir.join(format!("data/train/c/{i}.png"))).unwrap();
    }
    let line = rejects_in(&dir, &train(&[]));
    assert_eq!(
        line,
        "metaloop: folder: class train/c has 1 images, an episode needs 2 (shots + queries)"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_ways_and_shots_out_of_range_are_named() {
    let line = rejects("eval-ways", TINY, &train(&["--set", "eval.ways=3"]));
    assert_eq!(
        line,
        "metaloop: --set: eval.ways: sinusoid regression has no classes: leave it 0 (eval.shots sets the support points)"
    );
    let dir = folder_dataset("eval-ways-one");
    let line = rejects_in(&dir, &train(&["--set", "eval.ways=1"]));
    assert_eq!(line, "metaloop: --set: eval.ways: must be >= 2, got 1");
    let line = rejects_in(&dir, &train(&["--set", "eval.shots=70000"]));
    assert_eq!(
        line,
        "metaloop: --set: eval.shots: must be <= 65536, got 70000"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_ways_beyond_the_classes_of_the_test_split_is_named_before_anything_is_written() {
    let dir = folder_dataset("eval-ways-classes");
    for class in ["a", "b", "c"] {
        for i in 0..3 {
            png(&dir.join(format!("data/test/{class}/{i}.png")), 10, 12);
        }
    }
    let config = FOLDER.replace(
        "root = \"data/train\"\n",
        "root = \"data/train\"\ntest_root = \"data/test\"\n",
    );
    fs::write(dir.join("c.toml"), config).unwrap();
    let line = rejects_in(&dir, &train(&["--set", "eval.ways=4"]));
    assert_eq!(
        line,
        "metaloop: eval.ways: folder: the test split has 3 classes, an episode needs 4 (ways)"
    );
    // Each class has 3 images: 2 shots + 1 query fit, 3 shots do not.
    let line = rejects_in(&dir, &train(&["--set", "eval.shots=3"]));
    assert!(
        line.starts_with("metaloop: eval.shots: folder: class test/")
            && line.ends_with("has 3 images, an episode needs 4 (shots + queries)"),
        "{line}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_best_of_a_run_without_validation_names_the_missing_file() {
    let dir = scratch("no-best");
    finished_run(&dir, "plain", "[4]");
    let line = rejects_in(&dir, &["eval", "--best", "runs/plain"]);
    assert_eq!(
        line,
        format!(
            "metaloop: --best: {}: no such file (a run writes it at each validation better than the earlier ones; eval.every = 0 never validates)",
            Path::new("runs/plain/model.best.safetensors").display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Runs `rejects_in` on a thread and fails if it takes longer than a minute (a read that blocks
/// on a FIFO would otherwise hold the test until nextest's limit).
fn rejects_within_a_minute(dir: &Path, args: &[&str]) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = tx.send(rejects_in(&d, &args));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("metaloop hangs")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_model_init_from_that_is_not_a_weights_file_is_named() {
    let dir = scratch("init-from");
    fs::write(dir.join("c.toml"), TINY).unwrap();
    fs::write(dir.join("text.safetensors"), "these are not weights\n").unwrap();
    // A safetensors header length of 2^60 bytes, then junk.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{\"a\":1}");
    fs::write(dir.join("huge.safetensors"), huge).unwrap();
    mkfifo(&dir.join("fifo.safetensors"));
    for (file, why) in [
        ("missing.safetensors", "no such file"),
        ("text.safetensors", "not a safetensors file"),
        ("huge.safetensors", "not a safetensors file"),
        ("fifo.safetensors", "not a regular file"),
        ("/dev/zero", "not a regular file"),
    ] {
        let set = format!("model.init_from=\"{file}\"");
        let line = rejects_within_a_minute(&dir, &train_with(&["--set", &set]));
        assert!(
            line.starts_with(&format!("metaloop: model.init_from: {file}: {why}")),
            "{file}: {line}"
        );
        // One statement of the cause, not a chain that repeats it.
        assert!(line.matches("HeaderTooLarge").count() <= 1, "{line}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn train_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", "c.toml"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_config_that_is_a_fifo_a_device_or_too_large_is_refused() {
    let dir = scratch("config-bounds");
    mkfifo(&dir.join("fifo.toml"));
    fs::write(dir.join("big.toml"), "# x\n".repeat(300_000)).unwrap();
    for (file, why) in [
        ("fifo.toml", "not a regular file".to_string()),
        ("/dev/zero", "not a regular file".to_string()),
        (
            "big.toml",
            format!("{} bytes, more than the {} allowed", 1_200_000, 1 << 20),
        ),
    ] {
        let line = rejects_within_a_minute(&dir, &["train", "--config", file]);
        assert_eq!(line, format!("metaloop: {file}: {why}"));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_of_a_checkpoint_that_is_a_fifo_is_refused() {
    let dir = scratch("eval-fifo");
    finished_run(&dir, "r", "[4]");
    let ckpts = dir.join("runs/r/checkpoints");
    let manifest = fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the finished run has a checkpoint");
    let tensors = manifest.with_extension("safetensors");
    fs::remove_file(&tensors).unwrap();
    mkfifo(&tensors);
    let arg = manifest.strip_prefix(&dir).unwrap().display().to_string();
    let line = rejects_within_a_minute(&dir, &["eval", "--checkpoint", &arg]);
    assert!(line.contains("not a regular file"), "{line}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn launch_reports_bad_input_once_before_mpirun_starts() {
    let dir = scratch("launch-bad");
    fs::write(
        dir.join("c.toml"),
        TINY.replace("meta_batch = 2", "meta_batch = 0"),
    )
    .unwrap();
    let args = ["launch", "-n", "2", "--", "train", "--config", "c.toml"];
    let line = rejects_in(&dir, &args);
    assert_eq!(
        line,
        "metaloop: c.toml: outer.meta_batch: must be >= 1, got 0"
    );
    // A run directory that exists already: the same one line.
    fs::write(dir.join("c.toml"), TINY).unwrap();
    fs::create_dir_all(dir.join("runs/tiny")).unwrap();
    let line = rejects_in(&dir, &args);
    assert!(line.contains("run directory already exists"), "{line}");
    let line = rejects_in(
        &dir,
        &[
            "launch",
            "-n",
            "2",
            "--",
            "eval",
            "--checkpoint",
            "runs/tiny",
            "--tasks",
            "1",
        ],
    );
    assert_eq!(line, "metaloop: eval --tasks: must be 2 to 16777216, got 1");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn launch_reports_a_bad_dataset_that_every_rank_finds_once() {
    // Found by the ranks, not by launch's own check: each rank loads the dataset.
    let dir = scratch("launch-dataset");
    let config = "[run]\nname = \"omni\"\nthreads = 1\n[task]\nkind = \"omniglot\"\nroot = \"no/such/omniglot\"\nways = 5\nshots = 1\n[model]\nbackbone = \"conv4\"\n";
    fs::write(dir.join("c.toml"), config).unwrap();
    let before = tree(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
        .current_dir(&dir)
        .args(["launch", "-n", "2", "--", "train", "--config", "c.toml"])
        .output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // mpirun adds its notice about the exit code; metaloop's own line comes once.
    let lines = common::metaloop_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("no/such/omniglot") && lines[0].contains("no such directory"),
        "{stderr}"
    );
    assert_eq!(tree(&dir), before, "files were written or changed");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_leaves_every_plot_whole() {
    // A file-size limit of 4 KiB (SIGXFSZ ignored, so a write beyond it fails with EFBIG) stands
    // in for a full disk: each plot is larger, so every write of one fails part-way.
    let dir = scratch("plots-full");
    finished_run(&dir, "r", "[4]");
    let plots = dir.join("runs/r/plots");
    let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert!(!before.is_empty(), "the finished run has plots");
    let script = format!(
        "trap '' XFSZ; ulimit -f 4; exec {} plot runs/r",
        env!("CARGO_BIN_EXE_metaloop")
    );
    let out = Command::new("bash")
        .current_dir(&dir)
        .args(["-c", &script])
        .output_within_limit();
    assert!(!out.status.success(), "the plots cannot fit in 4 KiB");
    for (path, bytes) in &before {
        assert_eq!(
            &fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    let left: Vec<String> = entries(&plots)
        .into_iter()
        .filter(|n| !n.ends_with(".png"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_refused_dataset_leaves_no_decode_cache() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("zero-byte", |d| {
            fs::write(d.join("data/train/a/0.png"), b"").unwrap()
        }),
        ("fake", |d| {
            fs::write(d.join("data/train/a/0.png"), b"GIF89a not a png").unwrap()
        }),
        ("too-few", |d| {
            for i in 1..3 {
                fs::remove_file(d.join(format!("data/train/c/{i}.png"))).unwrap();
            }
        }),
    ];
    for (name, damage) in cases {
        let dir = folder_dataset(&format!("cache-{name}"));
        damage(&dir);
        let cache = scratch(&format!("cache-{name}-dir"));
        let set = format!("task.cache_dir=\"{}\"", cache.display());
        rejects_in(&dir, &train_with(&["--set", &set]));
        assert_eq!(entries(&cache), Vec::<String>::new(), "{name}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&cache).unwrap();
    }
}

/// `outer.meta_batch` at its allowed maximum (2^24 tasks, 5 GiB of inputs) in a process limited
/// to 4 GB of address space: the memory planner's check refuses it before the run directory
/// exists, naming the budget it found, the smallest budget that would fit and the largest
/// meta-batch that would.
#[test]
fn a_meta_batch_beyond_the_memory_limit_is_refused_before_anything_is_written() {
    let dir = scratch("meta-batch-max");
    fs::write(
        dir.join("c.toml"),
        TINY.replace("meta_batch = 2", "meta_batch = 16777216"),
    )
    .unwrap();
    let line = rejects_under_limit(&dir, 4_000_000, &train(&[]));
    assert!(
        line.starts_with("metaloop: run.memory_budget_gib: a budget of "),
        "{line}"
    );
    let number_after = |word: &str| -> f64 {
        let rest = &line[line.find(word).unwrap_or_else(|| panic!("{line}")) + word.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (budget, needed) = (number_after("a budget of "), number_after("at least "));
    let largest = number_after("outer.meta_batch <= ");
    assert!(line.contains("GiB (ulimit -v)"), "{line}");
    assert!(budget < 4.0 && needed > 5.0, "{line}");
    assert!((1.0..16777216.0).contains(&largest), "{line}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A budget below what the process already holds: exit 2 naming the key, nothing written.
#[test]
fn a_memory_budget_too_small_for_one_task_is_refused() {
    let line = rejects(
        "budget-small",
        TINY,
        &train(&["--set", "run.memory_budget_gib=0.01"]),
    );
    assert!(
        line.starts_with("metaloop: run.memory_budget_gib: a budget of 0.01 GiB (run.memory_budget_gib) does not fit"),
        "{line}"
    );
    assert!(
        line.contains("a budget of at least ") && line.contains("outer.meta_batch <= none"),
        "{line}"
    );
    let bad = rejects(
        "budget-negative",
        TINY,
        &train(&["--set", "run.memory_budget_gib=-1"]),
    );
    assert_eq!(
        bad,
        "metaloop: --set: run.memory_budget_gib: must be \"auto\" or a number of GiB from 0 to 1048576, got -1"
    );
}
