//! Faults during `metaloop train`, with real signals: SIGTERM and SIGINT stop after an iteration
//! with its checkpoint (exit 143 / 130); SIGKILL of the process, of one rank or of every rank
//! loses only the work since the last checkpoint, and `--resume` ends with the parameters of an
//! uninterrupted run (f64 on CPU: the same bytes); a dead rank ends the whole mpirun job within a
//! bounded time; a checkpoint of 2 ranks resumes on 1 and one of 1 on 2 (elastic resume).
//!
//! Every run here is second-order MAML on sinusoid regression in f64 with one libtorch thread, so
//! that reruns repeat bit for bit. Each run directory is `runs/s` under its own scratch directory,
//! so that every run has the same resolved config.

mod common;

use common::bounded::OutputWithin;
use common::metaloop_lines;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// 600 iterations (about 5 s in a debug build): long enough to signal or kill mid-run.
const ITERATIONS: u64 = 600;

/// The config of every run; only `checkpoint_every` differs, which does not change training.
fn config(checkpoint_every: u64) -> String {
    format!(
        r#"
[run]
name = "s"
dtype = "f64"
threads = 1
consistency_every = 50
[task]
kind = "sinusoid"
shots = 10
queries = 10
[model]
hidden = [40, 40]
[outer]
meta_batch = 25
iterations = {ITERATIONS}
[eval]
every = 0
test_tasks = 4
[log]
every = 1
checkpoint_every = {checkpoint_every}
keep_checkpoints = 2
"#
    )
}

/// The outer keys of the scheduled runs: AdamW with a cosine schedule after a linear warm-up,
/// and clipping of the meta-gradient.
const SCHEDULED: &str = "optimizer = \"adamw\"\nlr = 0.003\nschedule = \"cosine\"\nwarmup_iterations = 100\nmin_lr = 1e-4\nclip_grad_norm = 2.0\n";

/// A scratch directory whose c.toml is `config(checkpoint_every)` with `SCHEDULED` under `[outer]`.
fn scheduled_scratch(name: &str, checkpoint_every: u64) -> PathBuf {
    let dir = common::scratch("faults", name);
    let text = config(checkpoint_every).replace("[outer]\n", &format!("[outer]\n{SCHEDULED}"));
    fs::write(dir.join("c.toml"), text).unwrap();
    dir
}

/// The (iteration, outer_lr, outer_clips) of every metrics line.
fn schedule_log(dir: &Path) -> Vec<(u64, f64, u64)> {
    fs::read_to_string(run_dir(dir).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let clips = v["outer_clips"].as_u64().unwrap();
            (
                v["iteration"].as_u64().unwrap(),
                v["outer_lr"].as_f64().unwrap(),
                clips,
            )
        })
        .collect()
}

#[test]
fn a_cosine_schedule_with_warm_up_and_clipping_resumes_after_sigkill_bit_identically() {
    let reference = scheduled_scratch("scheduled-reference", 100_000);
    ok(train(&reference, 1, &[]).output_within_limit());
    let want = schedule_log(&reference);
    assert_eq!(want.len() as u64, ITERATIONS);
    // Warm-up from lr/3 to lr over 100 iterations, then the cosine down to min_lr.
    assert!((want[0].1 - 0.001).abs() < 1e-15, "{:?}", want[0]);
    assert!((want[100].1 - 0.003).abs() < 1e-15, "{:?}", want[100]);
    assert!(want[599].1 < 1.1e-4, "{:?}", want[599]);
    let clips = want.last().unwrap().2;
    assert!(
        clips > 0,
        "no step clipped: the test would not exercise the clip count"
    );

    let dir = scheduled_scratch("scheduled-sigkill", 50);
    let mut child = spawn(train(&dir, 1, &[]));
    wait_until(&mut child, "iteration 170", || {
        logged(&dir).last().is_some_and(|&it| it >= 170)
    });
    signal(child.id(), "KILL");
    finish(child, Duration::from_secs(30));
    let last_complete = checkpoints(&dir)[0];
    assert!(last_complete >= 150, "{last_complete}");
    ok(train(&dir, 1, &["--resume"]).output_within_limit());
    assert_eq!(report(&dir)["resumed_from"], last_complete);
    assert_eq!(schedule_log(&dir), want);
    assert_eq!(model_bytes(&dir), model_bytes(&reference));
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&reference).unwrap();
}

fn scratch(name: &str, checkpoint_every: u64) -> PathBuf {
    let dir = common::scratch("faults", name);
    fs::write(dir.join("c.toml"), config(checkpoint_every)).unwrap();
    dir
}

/// `metaloop [launch -n ranks --] train --config c.toml [extra]` in `dir`.
fn train(dir: &Path, ranks: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaloop"));
    cmd.current_dir(dir);
    if ranks > 1 {
        cmd.args(["launch", "-n", &ranks.to_string(), "--"]);
    }
    cmd.args(["train", "--config", "c.toml"]).args(extra);
    cmd
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_dir(dir: &Path) -> PathBuf {
    dir.join("runs/s")
}

/// The iterations of `metrics.jsonl`'s complete lines.
fn logged(dir: &Path) -> Vec<u64> {
    fs::read_to_string(run_dir(dir).join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["iteration"].as_u64())
        .collect()
}

/// The iterations of the checkpoint manifests on disk, newest first.
fn checkpoints(dir: &Path) -> Vec<u64> {
    let mut its: Vec<u64> = fs::read_dir(run_dir(dir).join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix("ckpt-")?.strip_suffix(".json")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    its.sort_unstable_by(|a, b| b.cmp(a));
    its
}

/// Waits (at most 120 s) until `ready` holds, while `child` runs.
fn wait_until(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits for `child` (at most `limit`); returns its output and how long it took.
fn finish(mut child: Child, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (killed now)\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose parent is `parent`, as (pid, MPI rank).
fn ranks_of(parent: u32) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(rank) = rank {
            out.push((pid, rank));
        }
    }
    out.sort_by_key(|(_, rank)| *rank);
    out
}

/// The ranks mpirun (`launch`'s process: it execs mpirun) started, once both are up.
fn wait_for_ranks(child: &mut Child, n: usize) -> Vec<(u32, usize)> {
    let pid = child.id();
    wait_until(child, "the ranks to start", || ranks_of(pid).len() == n);
    ranks_of(pid)
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn model_bytes(dir: &Path) -> Vec<u8> {
    fs::read(run_dir(dir).join("model.safetensors")).unwrap()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run_dir(dir).join("report.json")).unwrap()).unwrap()
}

/// The final θ0 of an uninterrupted run with `ranks` ranks (computed once per test process).
fn uninterrupted(ranks: usize) -> Vec<u8> {
    static ONE: OnceLock<Vec<u8>> = OnceLock::new();
    static TWO: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = if ranks == 1 { &ONE } else { &TWO };
    cell.get_or_init(|| {
        let dir = scratch(&format!("reference-{ranks}"), 100);
        ok(train(&dir, ranks, &[]).output_within_limit());
        let bytes = model_bytes(&dir);
        fs::remove_dir_all(&dir).unwrap();
        bytes
    })
    .clone()
}

/// Largest absolute difference between the tensors of two safetensors files (same names).
fn max_diff(a: &[u8], b: &[u8], scratch: &Path) -> f64 {
    let (pa, pb) = (scratch.join("a.safetensors"), scratch.join("b.safetensors"));
    fs::write(&pa, a).unwrap();
    fs::write(&pb, b).unwrap();
    let (ta, tb) = (
        tch::Tensor::read_safetensors(&pa).unwrap(),
        tch::Tensor::read_safetensors(&pb).unwrap(),
    );
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0.0f64;
    for (name, x) in &ta {
        let y = &tb.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(x.kind(), tch::Kind::Double, "{name}");
        worst = worst.max((x - y).abs().max().double_value(&[]));
    }
    worst
}

/// Checks a run stopped by `signal_name`: exit code, the one message line, and that the only
/// checkpoint is that of the last completed (logged) iteration. Returns that iteration.
fn stopped_with_a_checkpoint(dir: &Path, out: &Output, code: i32, signal_name: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let last = *logged(dir).last().unwrap();
    assert!(last > 0 && last < ITERATIONS, "{last}");
    assert_eq!(checkpoints(dir), vec![last], "{stderr}");
    assert!(
        stderr.contains(&format!(
            "metaloop: stopped by {signal_name} after iteration {last} of {ITERATIONS}; checkpoint {}; continue with --resume",
            Path::new("runs/s/checkpoints").join(format!("ckpt-{last:09}.json")).display()
        )),
        "{stderr}"
    );
    last
}

#[test]
fn sigterm_writes_the_checkpoint_of_the_current_iteration_and_resume_finishes_the_run() {
    let dir = scratch("sigterm", 100_000);
    let mut child = spawn(train(&dir, 1, &[]));
    wait_until(&mut child, "the first metrics line", || {
        !logged(&dir).is_empty()
    });
    signal(child.id(), "TERM");
    let (out, took) = finish(child, Duration::from_secs(60));
    let stopped_at = stopped_with_a_checkpoint(&dir, &out, 143, "SIGTERM");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(!run_dir(&dir).join("report.json").exists());

    ok(train(&dir, 1, &["--resume"]).output_within_limit());
    assert_eq!(report(&dir)["resumed_from"], stopped_at);
    assert_eq!(logged(&dir), (1..=ITERATIONS).collect::<Vec<_>>());
    assert_eq!(model_bytes(&dir), uninterrupted(1));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_stops_with_exit_code_130_and_a_checkpoint() {
    let dir = scratch("sigint", 100_000);
    let mut child = spawn(train(&dir, 1, &[]));
    wait_until(&mut child, "the first metrics line", || {
        !logged(&dir).is_empty()
    });
    signal(child.id(), "INT");
    let (out, _) = finish(child, Duration::from_secs(60));
    stopped_with_a_checkpoint(&dir, &out, 130, "SIGINT");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_mid_run_resumes_from_the_last_complete_checkpoint_bit_identically() {
    let dir = scratch("sigkill", 50);
    let mut child = spawn(train(&dir, 1, &[]));
    // Past the first checkpoint, and a few iterations into the next interval.
    wait_until(&mut child, "iteration 70", || {
        logged(&dir).last().is_some_and(|&it| it >= 70)
    });
    signal(child.id(), "KILL");
    let (out, _) = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), None, "killed by a signal");
    let last_complete = checkpoints(&dir)[0];
    assert!(last_complete >= 50 && (last_complete / 50) * 50 == last_complete);

    ok(train(&dir, 1, &["--resume"]).output_within_limit());
    assert_eq!(report(&dir)["resumed_from"], last_complete);
    // Lines logged after the checkpoint were redone once: none lost, none twice.
    assert_eq!(logged(&dir), (1..=ITERATIONS).collect::<Vec<_>>());
    assert_eq!(model_bytes(&dir), uninterrupted(1));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_rank_ends_the_mpi_job_in_bounded_time_and_resume_gives_the_uninterrupted_parameters() {
    let dir = scratch("rank-kill", 50);
    // 1. SIGKILL of rank 1 alone: mpirun must end the job, rank 0 included (it is left waiting in
    //    an all-reduce), within 60 s (about 10 s: `launch` sets mpirun's kill timeout to 5 s).
    let mut child = spawn(train(&dir, 2, &[]));
    let ranks = wait_for_ranks(&mut child, 2);
    wait_until(&mut child, "the first checkpoint", || {
        !checkpoints(&dir).is_empty()
    });
    signal(ranks[1].0, "KILL");
    let (out, took) = finish(child, Duration::from_secs(60));
    assert!(!out.status.success());
    // mpirun may return while rank 0, already sent SIGKILL, is still being torn down.
    let start = Instant::now();
    while alive(ranks[0].0) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(ranks[0].0), "rank 0 survived the job");
    let took = took + start.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    let first = checkpoints(&dir)[0];

    // 2. SIGKILL of every process (a node lost): mpirun and both ranks at once.
    let mut child = spawn(train(&dir, 2, &["--resume"]));
    let ranks = wait_for_ranks(&mut child, 2);
    wait_until(&mut child, "a newer checkpoint", || {
        checkpoints(&dir).first().is_some_and(|&it| it > first)
    });
    for (pid, _) in &ranks {
        signal(*pid, "KILL");
    }
    signal(child.id(), "KILL");
    let (out, _) = finish(child, Duration::from_secs(60));
    assert!(!out.status.success());
    let start = Instant::now();
    while ranks.iter().any(|(pid, _)| alive(*pid)) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ranks.iter().all(|(pid, _)| !alive(*pid)));
    let second = checkpoints(&dir)[0];
    assert!(second > first);

    // 3. Resuming on 2 ranks ends with the bytes of an uninterrupted 2-rank run.
    ok(train(&dir, 2, &["--resume"]).output_within_limit());
    assert_eq!(report(&dir)["resumed_from"], second);
    assert_eq!(logged(&dir), (1..=ITERATIONS).collect::<Vec<_>>());
    assert_eq!(model_bytes(&dir), uninterrupted(2));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_to_one_rank_stops_every_rank_after_the_same_iteration_and_one_rank_resumes() {
    let dir = scratch("rank-term", 100_000);
    let mut child = spawn(train(&dir, 2, &[]));
    let ranks = wait_for_ranks(&mut child, 2);
    wait_until(&mut child, "the first metrics line", || {
        !logged(&dir).is_empty()
    });
    // Rank 1 alone is told to stop; rank 0 learns it through the all-reduce of the flags and
    // writes the checkpoint of the iteration both completed.
    signal(ranks[1].0, "TERM");
    let (out, _) = finish(child, Duration::from_secs(60));
    // mpirun ends with its own code when a rank exits non-zero; rank 0's message is the one line.
    assert!(!out.status.success());
    let stopped_at = stopped_with_a_checkpoint(&dir, &out, out.status.code().unwrap(), "SIGTERM");

    // Elastic: the 2-rank checkpoint resumes on 1 rank to the 1-rank run's parameters.
    ok(train(&dir, 1, &["--resume"]).output_within_limit());
    assert_eq!(report(&dir)["resumed_from"], stopped_at);
    let diff = max_diff(&model_bytes(&dir), &uninterrupted(1), &dir);
    assert!(diff <= 1e-10, "{diff:e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_and_one_of_one_rank_on_two() {
    // Deterministic interruption: a finished run with its last checkpoint, model and report
    // removed is a run killed after the checkpoint of iteration 300.
    let forget_the_end = |dir: &Path| {
        let run = run_dir(dir);
        for f in [
            format!("checkpoints/ckpt-{ITERATIONS:09}.json"),
            format!("checkpoints/ckpt-{ITERATIONS:09}.safetensors"),
            "model.safetensors".into(),
            "report.json".into(),
        ] {
            fs::remove_file(run.join(f)).unwrap();
        }
        assert_eq!(checkpoints(dir), vec![ITERATIONS / 2]);
    };
    let reference = uninterrupted(1);
    for (from, to) in [(2, 1), (1, 2)] {
        let dir = scratch(&format!("elastic-{from}-{to}"), ITERATIONS / 2);
        ok(train(&dir, from, &[]).output_within_limit());
        forget_the_end(&dir);
        ok(train(&dir, to, &["--resume"]).output_within_limit());
        assert_eq!(report(&dir)["resumed_from"], ITERATIONS / 2);
        // f64: another number of ranks sums the meta-gradient's per-task terms in another order.
        let diff = max_diff(&model_bytes(&dir), &reference, &dir);
        assert!(diff <= 1e-10, "{from} -> {to} ranks: {diff:e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

// Fail-stop across ranks: an error on one rank ends the whole job (MPI_Abort with the rank's exit
// code; mpirun exits with it), instead of leaving the others waiting in a collective while the
// failed rank waits in MPI_Finalize.

/// `mpirun` with `launch`'s flags, each rank started in `<base>/host<rank>` by a small shell
/// wrapper: ranks that see different files, as on nodes without a shared file system.
fn mpirun_per_rank_dirs(base: &Path, ranks: usize, args: &[&str]) -> Command {
    let wrapper = base.join("in-rank-dir.sh");
    fs::write(
        &wrapper,
        "#!/bin/sh\n# Runs the command in <base>/host<MPI rank>.\nbase=\"$1\"; shift\ncd \"$base/host$OMPI_COMM_WORLD_RANK\" && exec \"$@\"\n",
    )
    .unwrap();
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ]);
    cmd.args(["--allow-run-as-root", "sh"]);
    cmd.arg(&wrapper)
        .arg(base)
        .arg(env!("CARGO_BIN_EXE_metaloop"));
    cmd.args(args);
    cmd
}

#[test]
fn launch_into_an_existing_run_directory_exits_2_within_30_s() {
    let dir = scratch("exists-2-ranks", 100);
    fs::create_dir_all(run_dir(&dir)).unwrap();
    fs::write(run_dir(&dir).join("mine.txt"), "keep").unwrap();
    let (out, took) = finish(spawn(train(&dir, 2, &[])), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let lines = metaloop_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("run directory already exists"),
        "{stderr}"
    );
    assert_eq!(common::entries(&run_dir(&dir)), ["mine.txt"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_data_error_on_one_rank_ends_the_2_rank_job_within_30_s_with_the_error_printed_once() {
    let base = scratch("data-error-one-rank", 100);
    let config = "[run]\nname = \"f\"\nthreads = 1\n[task]\nkind = \"folder\"\nroot = \"data\"\nways = 2\nshots = 1\nqueries = 1\nimage_size = 8\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";
    for host in 0..2 {
        let d = base.join(format!("host{host}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("c.toml"), config).unwrap();
        for class in ["a", "b", "c"] {
            for i in 0..2 {
                common::gray_png(&d.join(format!("data/{class}/{i}.png")), 8, 8, 9);
            }
        }
    }
    // Rank 1's copy of the dataset has an image that does not decode.
    fs::write(base.join("host1/data/b/1.png"), b"not a png").unwrap();
    let cmd = mpirun_per_rank_dirs(&base, 2, &["train", "--config", "c.toml"]);
    let (out, took) = finish(spawn(cmd), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let lines = metaloop_lines(&stderr);
    assert_eq!(lines.len(), 1, "printed once: {stderr}");
    let named = format!(
        "metaloop: {}: unreadable image: ",
        Path::new("data/b/1.png").display()
    );
    assert!(lines[0].starts_with(&named), "{stderr}");
    // Rank 0, whose data are fine, wrote nothing either: every rank is set up before it writes.
    assert!(!base.join("host0/runs").exists());
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_second_run_on_a_busy_run_directory_exits_2_naming_the_holder() {
    let dir = scratch("busy", 50);
    let mut child = spawn(train(&dir, 1, &[]));
    wait_until(&mut child, "the first checkpoint", || {
        !checkpoints(&dir).is_empty()
    });
    for args in [
        vec!["train", "--config", "c.toml", "--resume"],
        vec!["eval", "--checkpoint", "runs/s"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_metaloop"))
            .current_dir(&dir)
            .args(&args)
            .output_within_limit();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "metaloop: {}: run directory in use by pid {} (wait for it to end, or choose another run.name)",
                Path::new("runs/s").display(),
                child.id()
            ),
            "{args:?}"
        );
    }
    signal(child.id(), "KILL");
    let _ = finish(child, Duration::from_secs(30));
    // The lock went with its holder: resuming now works.
    ok(train(&dir, 1, &["--resume"]).output_within_limit());
    assert_eq!(logged(&dir), (1..=ITERATIONS).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_whose_every_step_is_skipped_exits_0_with_warnings_a_skipped_field_and_a_plot() {
    let dir = scratch("all-skipped", 100);
    // An inner learning rate this large overflows every task's adapted weights: every outer
    // step of the 5 is skipped for non-finite values, 5 < outer.max_nonfinite_skips = 10.
    let sets = [
        "--set",
        "outer.iterations=5",
        "--set",
        "algorithm.inner_lr=1e300",
        "--set",
        "outer.max_nonfinite_skips=10",
    ];
    let out = ok(train(&dir, 1, &sets).output_within_limit());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("warning") && l.contains("outer step skipped"))
        .count();
    assert_eq!(warnings, 5, "{stderr}");
    let lines: Vec<serde_json::Value> = fs::read_to_string(run_dir(&dir).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["skipped"] == true), "{lines:?}");
    assert!(run_dir(&dir).join("plots/learning_curves.png").is_file());
    assert!(run_dir(&dir).join("report.json").is_file());

    // Skips in a row up to outer.max_nonfinite_skips stop the run with their own error.
    let dir2 = scratch("skips-stop", 100);
    let mut sets = sets;
    sets[5] = "outer.max_nonfinite_skips=3";
    let out = train(&dir2, 1, &sets).output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "3 outer steps in a row skipped for non-finite values (outer.max_nonfinite_skips)"
        ),
        "{stderr}"
    );
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn a_rank_stopped_with_sigstop_ends_the_job_through_the_collective_watchdog() {
    let dir = scratch("watchdog", 100_000);
    let mut child = spawn(train(&dir, 2, &["--set", "run.collective_timeout_s=3"]));
    let ranks = wait_for_ranks(&mut child, 2);
    wait_until(&mut child, "the first metrics line", || {
        !logged(&dir).is_empty()
    });
    signal(ranks[1].0, "STOP");
    let (out, took) = finish(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Rank 0 waits for the stopped rank in a collective: 3 s, then the job ends.
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        stderr.contains("metaloop: rank 0: collective ")
            && stderr.contains(" at iteration ")
            && stderr.contains("has not finished after 3 s"),
        "{stderr}"
    );
    let start = Instant::now();
    while ranks.iter().any(|(pid, _)| alive(*pid)) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, _) in &ranks {
        if alive(*pid) {
            signal(*pid, "KILL");
            panic!("rank pid {pid} outlived the job");
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}
