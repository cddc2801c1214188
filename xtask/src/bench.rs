//! `cargo xtask bench [--peers]`: metaloop's benchmark workloads, and with `--peers` the same
//! workloads in higher, torch.func and TorchOpt (benches/peers/peers.py) in the same run with the
//! same thread count; one table of tasks/s, peak memory and metaloop's ratio to each peer.
//!
//! Every (tool, workload) runs in its own process, so each peak memory is that workload's own.
//! The raw results go to target/bench/results.jsonl.

use crate::{cargo, run_status, setup};
use anyhow::{bail, Context, Result};
use std::process::{Command, ExitCode};

const PEERS: [(&str, &str); 3] = [
    ("higher", "higher"),
    ("torchfunc", "torch.func"),
    ("torchopt", "TorchOpt"),
];

struct Options {
    peers: bool,
    workloads: Vec<String>,
    iters: usize,
    threads: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        peers: false,
        workloads: vec!["sinusoid".into(), "omniglot".into()],
        iters: 10,
        threads: 2,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--peers" => o.peers = true,
            "--workloads" => o.workloads = value("--workloads")?.split(',').map(str::to_string).collect(),
            "--iters" => o.iters = value("--iters")?.parse().context("--iters: expected a positive integer")?,
            "--threads" => o.threads = value("--threads")?.parse().context("--threads: expected a positive integer")?,
            other => bail!("bench: unknown argument `{other}` (expected --peers, --workloads, --iters, --threads)"),
        }
    }
    for w in &o.workloads {
        if !["sinusoid", "omniglot", "omniglot20"].contains(&w.as_str()) {
            bail!("--workloads: unknown workload `{w}` (expected sinusoid, omniglot, omniglot20)");
        }
    }
    if o.iters == 0 || o.threads == 0 {
        bail!("--iters and --threads must be >= 1");
    }
    Ok(o)
}

/// One JSON result line of `metaloop bench --json` or peers.py.
#[derive(Debug)]
struct Row {
    peer: String,
    workload: String,
    tasks_per_s: f64,
    peak_mib: f64,
}

fn parse_row(line: &str) -> Option<Row> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Row {
        peer: v["peer"].as_str()?.to_string(),
        workload: v["workload"].as_str()?.to_string(),
        tasks_per_s: v["tasks_per_s"].as_f64()?,
        // NaN (not measured) is written as null.
        peak_mib: v["peak_mib"].as_f64().unwrap_or(f64::NAN),
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
        eprintln!("xtask: bench: metaloop {w}");
        let mut cmd = Command::new(&metaloop);
        cmd.args([
            "bench",
            "--workload",
            w,
            "--iters",
            &o.iters.to_string(),
            "--threads",
            &o.threads.to_string(),
            "--json",
        ]);
        rows.push(run_json(&mut cmd, &format!("metaloop bench {w}"))?);
        if o.peers {
            for (peer, _) in PEERS {
                eprintln!("xtask: bench: {peer} {w}");
                let mut cmd = Command::new(&env.python);
                cmd.arg(root.join("benches/peers/peers.py")).args([
                    "--peer",
                    peer,
                    "--workload",
                    w,
                    "--iters",
                    &o.iters.to_string(),
                    "--threads",
                    &o.threads.to_string(),
                ]);
                rows.push(run_json(&mut cmd, &format!("peers.py {peer} {w}"))?);
            }
        }
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::json!({"peer": r.peer, "workload": r.workload, "tasks_per_s": r.tasks_per_s, "peak_mib": r.peak_mib}).to_string())
        .collect();
    std::fs::write(dir.join("results.jsonl"), lines.join("\n") + "\n")?;
    print_table(&o, &rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table(o: &Options, rows: &[Row]) {
    println!(
        "\nsecond-order MAML, {} timed iterations (median), {} threads, CPU",
        o.iters, o.threads
    );
    let mut header = format!("{:<11} {:>12} {:>9}", "workload", "metaloop", "peak MiB");
    if o.peers {
        for (_, label) in PEERS {
            header.push_str(&format!(" {:>24}", format!("{label} (ratio)")));
        }
    }
    println!("{header}");
    for w in &o.workloads {
        let Some(ours) = rows
            .iter()
            .find(|r| &r.workload == w && r.peer == "metaloop")
        else {
            continue;
        };
        let mut line = format!(
            "{:<11} {:>8.1} t/s {:>9.0}",
            w, ours.tasks_per_s, ours.peak_mib
        );
        if o.peers {
            for (peer, _) in PEERS {
                match rows.iter().find(|r| &r.workload == w && r.peer == peer) {
                    Some(p) => line.push_str(&format!(
                        " {:>24}",
                        format!(
                            "{:.1} t/s, {:.0} MiB ({:.2}×)",
                            p.tasks_per_s,
                            p.peak_mib,
                            ours.tasks_per_s / p.tasks_per_s
                        )
                    )),
                    None => line.push_str(&format!(" {:>24}", "-")),
                }
            }
        }
        println!("{line}");
    }
    println!("(ratio: metaloop's tasks/s over the peer's; t/s: tasks per second)");
}
