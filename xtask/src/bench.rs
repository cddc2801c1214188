//! `cargo xtask bench [--peers]`: metaloop's benchmark workloads, and with `--peers` the same
//! workloads in higher, torch.func and TorchOpt (benches/peers/peers.py), and higher's loop with
//! `import metaloop as higher`, in the same run with the
//! same thread count; one table of tasks/s, peak memory and metaloop's ratio to each peer.
//!
//! Every (tool, workload) runs in its own process, so each peak memory is that workload's own.
//! The raw results go to target/bench/results.jsonl.

use crate::{cargo, run_status, setup};
use anyhow::{bail, Context, Result};
use std::process::{Command, ExitCode};

const PEERS: [(&str, &str); 4] = [
    ("higher", "higher"),
    // higher's own loop with `import metaloop as higher` (metaloop's Python package).
    ("metaloop-higher", "import metaloop as higher"),
    ("torchfunc", "torch.func"),
    ("torchopt", "TorchOpt"),
];

/// The workloads of engine::bench and peers.py.
const WORKLOADS: [&str; 6] = [
    "sinusoid",
    "omniglot",
    "omniglot20",
    "miniimagenet-conv4",
    "miniimagenet-resnet12",
    "miniimagenet-resnet12-long",
];

struct Options {
    peers: bool,
    workloads: Vec<String>,
    iters: usize,
    warmup: usize,
    threads: usize,
    /// metaloop's memory modes ("full", "recompute"); the peers always track the full unroll.
    memory: Vec<String>,
    /// Overrides of every workload's meta-batch and inner steps.
    meta_batch: Option<usize>,
    steps: Option<usize>,
    /// Address-space limit of every benchmark process (`ulimit -v`), GiB: a workload that
    /// needs more is reported as out of memory instead of meeting the kernel's OOM killer.
    memory_limit_gib: Option<usize>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        peers: false,
        workloads: vec!["sinusoid".into(), "omniglot".into()],
        iters: 10,
        warmup: 3,
        threads: 2,
        memory: vec!["full".into()],
        meta_batch: None,
        steps: None,
        memory_limit_gib: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        let list = |v: String| v.split(',').map(str::to_string).collect::<Vec<_>>();
        let count = |name: &str, v: String| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{name}: expected a positive integer, got `{v}`"))
        };
        match a.as_str() {
            "--peers" => o.peers = true,
            "--workloads" => o.workloads = list(value(a)?),
            "--memory" => o.memory = list(value(a)?),
            "--iters" => o.iters = count(a, value(a)?)?,
            "--warmup" => o.warmup = count(a, value(a)?)?,
            "--threads" => o.threads = count(a, value(a)?)?,
            "--meta-batch" => o.meta_batch = Some(count(a, value(a)?)?),
            "--steps" => o.steps = Some(count(a, value(a)?)?),
            "--memory-limit-gib" => o.memory_limit_gib = Some(count(a, value(a)?)?),
            other => bail!("bench: unknown argument `{other}` (expected --peers, --workloads, --memory, --iters, --warmup, --threads, --meta-batch, --steps, --memory-limit-gib)"),
        }
    }
    for w in &o.workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!(
                "--workloads: unknown workload `{w}` (expected {})",
                WORKLOADS.join(", ")
            );
        }
    }
    for m in &o.memory {
        if !["full", "recompute"].contains(&m.as_str()) {
            bail!("--memory: unknown mode `{m}` (expected full, recompute)");
        }
    }
    if o.iters == 0
        || o.threads == 0
        || o.meta_batch == Some(0)
        || o.steps == Some(0)
        || o.memory_limit_gib == Some(0)
    {
        bail!("--iters, --threads, --meta-batch, --steps and --memory-limit-gib must be >= 1");
    }
    Ok(o)
}

/// One JSON result line of `metaloop bench --json` or peers.py.
#[derive(Debug)]
struct Row {
    /// "metaloop" (with its memory mode: "metaloop recompute") or the peer's name.
    peer: String,
    workload: String,
    /// NaN when the peer ran out of memory.
    tasks_per_s: f64,
    peak_mib: f64,
    oom: bool,
}

fn parse_row(line: &str) -> Option<Row> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let mut peer = v["peer"].as_str()?.to_string();
    if let Some(m) = v["memory"].as_str().filter(|m| *m != "full") {
        peer = format!("{peer} {m}");
    }
    let oom = v["oom"].as_bool().unwrap_or(false);
    Some(Row {
        peer,
        workload: v["workload"].as_str()?.to_string(),
        tasks_per_s: if oom {
            f64::NAN
        } else {
            v["tasks_per_s"].as_f64()?
        },
        // NaN (not measured) is written as null.
        peak_mib: v["peak_mib"].as_f64().unwrap_or(f64::NAN),
        oom,
    })
}

fn run_json(cmd: &mut Command, what: &str) -> Result<Row> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(parse_row)
        .with_context(|| format!("{what} printed no result line"))
}

/// The flags both `metaloop bench` and peers.py take: iterations, warm-up, threads and the
/// overrides.
fn common_args(o: &Options) -> Vec<String> {
    let args: Vec<String> = [
        ("--iters", o.iters),
        ("--warmup", o.warmup),
        ("--threads", o.threads),
    ]
    .iter()
    .chain(o.meta_batch.map(|m| ("--meta-batch", m)).iter())
    .chain(o.steps.map(|n| ("--steps", n)).iter())
    .flat_map(|(flag, v)| [flag.to_string(), v.to_string()])
    .collect();
    args
}

/// A benchmark process of `program`, under `--memory-limit-gib` when given (through the shell's
/// `ulimit -v`; the arguments added later reach `program` unchanged).
fn command(program: &std::path::Path, o: &Options) -> Command {
    match o.memory_limit_gib {
        None => Command::new(program),
        Some(gib) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", gib << 20))
                .arg(program);
            cmd
        }
    }
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let o = parse(args)?;
    let env = setup::run(o.peers)?;
    let root = setup::repo_root();
    let code = run_status(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "metaloop-launcher",
        "--bin",
        "metaloop",
    ]))?;
    if code != ExitCode::SUCCESS {
        bail!("building the metaloop binary failed");
    }
    let metaloop = root.join("target/release/metaloop");
    let mut rows = Vec::new();
    for w in &o.workloads {
        for memory in &o.memory {
            eprintln!("xtask: bench: metaloop {w} ({memory})");
            let mut cmd = command(&metaloop, &o);
            // --threads is the launcher's own flag (before the subcommand).
            cmd.args(["bench", "--workload", w, "--memory", memory, "--json"])
                .args(common_args(&o));
            rows.push(run_json(&mut cmd, &format!("metaloop bench {w} {memory}"))?);
        }
        if o.peers {
            for (peer, _) in PEERS {
                eprintln!("xtask: bench: {peer} {w}");
                let mut cmd = command(&env.python, &o);
                cmd.arg(root.join("benches/peers/peers.py"))
                    .args(["--peer", peer, "--workload", w])
                    .args(common_args(&o));
                rows.push(run_json(&mut cmd, &format!("peers.py {peer} {w}"))?);
            }
        }
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::json!({"peer": r.peer, "workload": r.workload, "tasks_per_s": r.tasks_per_s, "peak_mib": r.peak_mib, "oom": r.oom}).to_string())
        .collect();
    std::fs::write(dir.join("results.jsonl"), lines.join("\n") + "\n")?;
    print_table(&o, &rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table(o: &Options, rows: &[Row]) {
    println!(
        "\nsecond-order MAML, {} timed iterations (median) after {} warm-up, {} threads, CPU{}{}{}",
        o.iters,
        o.warmup,
        o.threads,
        o.meta_batch
            .map(|m| format!(", meta-batch {m}"))
            .unwrap_or_default(),
        o.steps
            .map(|n| format!(", {n} inner steps"))
            .unwrap_or_default(),
        o.memory_limit_gib
            .map(|g| format!(", ulimit -v {g} GiB"))
            .unwrap_or_default(),
    );
    let mut columns: Vec<(String, String)> = o
        .memory
        .iter()
        .map(|m| match m.as_str() {
            "full" => ("metaloop".to_string(), "metaloop".to_string()),
            m => (format!("metaloop {m}"), format!("metaloop {m}")),
        })
        .collect();
    if o.peers {
        columns.extend(
            PEERS
                .iter()
                .map(|(p, l)| (p.to_string(), format!("{l} (ratio)"))),
        );
    }
    let mut header = format!("{:<27}", "workload");
    for (_, label) in &columns {
        header.push_str(&format!(" {label:>28}"));
    }
    println!("{header}");
    for w in &o.workloads {
        let ours = rows
            .iter()
            .find(|r| &r.workload == w && r.peer.starts_with("metaloop"));
        let mut line = format!("{w:<27}");
        for (peer, _) in &columns {
            let cell = match rows.iter().find(|r| &r.workload == w && &r.peer == peer) {
                None => "-".to_string(),
                Some(r) if r.oom => format!("out of memory at {:.0} MiB", r.peak_mib),
                Some(r) => {
                    let mut c =
                        format!("{} t/s, {:.0} MiB", significant(r.tasks_per_s), r.peak_mib);
                    if let Some(ours) = ours.filter(|_| !peer.starts_with("metaloop")) {
                        c.push_str(&format!(" ({:.2}×)", ours.tasks_per_s / r.tasks_per_s));
                    }
                    c
                }
            };
            line.push_str(&format!(" {cell:>28}"));
        }
        println!("{line}");
    }
    println!("(ratio: metaloop's tasks/s (first memory mode) over the peer's; t/s: tasks per second; MiB: peak RSS)");
}

/// `x` with three significant digits (0.0206, 0.781, 21.1, 31012).
fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i64).max(0) as usize;
    format!("{x:.decimals$}")
}
