//! `metaloop launch --max-restarts N`: a job whose rank is killed starts again with `--resume
//! auto` and ends with the model of an uninterrupted run (f64: the same bytes), each restart
//! printed once and recorded in `run.json`; bad input and a stop asked of `launch` itself are not
//! restarted.
//!
//! Every run is second-order MAML on sinusoids in f64 with one libtorch thread per rank, so that
//! reruns repeat bit for bit, in `runs/s` under its own scratch directory.

mod common;

use common::bounded::OutputWithin;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Long enough (a few seconds on 2 ranks) to kill a rank mid-run.
const ITERATIONS: u64 = 300;

fn config(checkpoint_every: u64) -> String {
    format!(
        "[run]\nname = \"s\"\ndtype = \"f64\"\nthreads = 1\n[task]\nkind = \"sinusoid\"\nshots = 10\nqueries = 10\n[model]\nhidden = [40, 40]\n[outer]\nmeta_batch = 25\niterations = {ITERATIONS}\n[eval]\nevery = 0\ntest_tasks = 4\n[log]\nevery = 1\ncheckpoint_every = {checkpoint_every}\nkeep_checkpoints = 2\n"
    )
}

fn scratch(name: &str, checkpoint_every: u64) -> PathBuf {
    let dir = common::scratch("restarts", name);
    fs::write(dir.join("c.toml"), config(checkpoint_every)).unwrap();
    dir
}

/// `metaloop launch -n 2 [launch_flags] -- train --config c.toml` in `dir`; its processes carry
/// `dir` in METALOOP_TEST_MARK, by which the test finds its ranks.
fn launch(dir: &Path, launch_flags: &[&str]) -> Command {
    let mut cmd = Command::new(common::metaloop_binary());
    cmd.current_dir(dir)
        .args(["launch", "-n", "2"])
        .args(launch_flags)
        .args(["--", "train", "--config", "c.toml"])
        .env("METALOOP_TEST_MARK", dir)
        .env_remove("METALOOP_RESTART");
    cmd
}

fn run_dir(dir: &Path) -> PathBuf {
    dir.join("runs/s")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status
    );
    stderr
}

/// The final θ0 of an uninterrupted 2-rank run (once per test process).
fn uninterrupted() -> Vec<u8> {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = scratch("reference", 50);
            ok(&launch(&dir, &[]).output_within_limit());
            let bytes = fs::read(run_dir(&dir).join("model.safetensors")).unwrap();
            fs::remove_dir_all(&dir).unwrap();
            bytes
        })
        .clone()
}

/// The pid of the live process of MPI rank `rank` whose environment holds `mark`.
fn rank_pid(mark: &Path, rank: usize) -> Option<u32> {
    let want_mark = format!("METALOOP_TEST_MARK={}", mark.display());
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let has = |v: &str| vars.contains(&v.as_bytes());
            (has(&want_mark) && has(&want_rank)).then_some(pid)
        })
}

/// Waits (at most 120 s) until `ready` gives a value, while `child` runs.
fn wait_for<T>(child: &mut Child, what: &str, ready: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the launch ended ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` (at most 180 s, then SIGKILL and a failed test), reading its output as it
/// comes: a pipe left unread fills up (64 KiB of progress lines), which blocks mpirun in a write
/// and with it the SIGTERM it should pass on to the ranks.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            kill(pid, "KILL");
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "still running after 180 s\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(status.unwrap().success(), "kill -{signal} {pid}");
}

fn has_checkpoint(dir: &Path) -> bool {
    fs::read_dir(run_dir(dir).join("checkpoints")).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
    })
}

fn logged(dir: &Path) -> Vec<u64> {
    common::metrics(&run_dir(dir))
        .iter()
        .map(|l| l["iteration"].as_u64().unwrap())
        .collect()
}

/// Starts a restartable job in `dir`, SIGKILLs rank 1 once `ready` holds, and waits for the
/// launch to end by itself. Returns its stderr and the one restart line.
fn kill_rank_1_when(dir: &Path, ready: impl Fn() -> bool) -> (String, String) {
    // mpirun ends the job 2 × this many seconds after a rank died (test speed only).
    let mut cmd = launch(dir, &["--max-restarts", "2"]);
    cmd.env("OMPI_MCA_odls_base_sigkill_timeout", "1");
    let mut child = spawn(cmd);
    let rank1 = wait_for(&mut child, "rank 1 to start", || rank_pid(dir, 1));
    wait_for(&mut child, "the moment to kill", || ready().then_some(()));
    kill(rank1, "KILL");
    let out = finish(child);
    let stderr = ok(&out);
    let restarts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("metaloop: restart"))
        .collect();
    assert_eq!(restarts.len(), 1, "{stderr}");
    let line = restarts[0].to_string();
    assert!(
        line.starts_with("metaloop: restart 1 of 2: a rank was ended by SIGKILL (exit code 137); "),
        "{line}"
    );
    (stderr, line)
}

/// The iteration of the checkpoint manifest named at the end of a restart line.
fn checkpoint_of(line: &str) -> (String, u64) {
    let path = line
        .rsplit("continuing from checkpoint ")
        .next()
        .unwrap()
        .to_string();
    let it = path
        .rsplit("ckpt-")
        .next()
        .unwrap()
        .strip_suffix(".json")
        .unwrap()
        .parse()
        .unwrap();
    (path, it)
}

#[test]
fn a_killed_rank_is_restarted_from_the_last_checkpoint_and_gives_the_uninterrupted_model() {
    let reference = uninterrupted();
    let dir = scratch("killed", 50);
    let (_, line) = kill_rank_1_when(&dir, || has_checkpoint(&dir));
    let (path, from) = checkpoint_of(&line);
    assert_eq!(
        path,
        Path::new("runs/s/checkpoints/")
            .join(format!("ckpt-{from:09}.json"))
            .display()
            .to_string()
    );
    assert!(from >= 50 && from < ITERATIONS, "{line}");
    let run = run_dir(&dir);
    let report = common::json(&run.join("report.json"));
    assert_eq!(report["resumed_from"], from);
    assert_eq!(logged(&dir), (1..=ITERATIONS).collect::<Vec<_>>());
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), reference);

    // run.json: the restarted invocation says why it started; the first one is under `earlier`.
    let record = common::json(&run.join("run.json"));
    let restart = &record["restart"];
    assert_eq!(restart["number"], 1);
    assert_eq!(restart["max"], 2);
    assert_eq!(restart["exit_code"], 137);
    assert_eq!(restart["reason"], "a rank was ended by SIGKILL");
    assert_eq!(restart["checkpoint"], path.as_str());
    assert_eq!(record["restarts"], serde_json::json!([restart]));
    assert_eq!(report["restarts"], record["restarts"]);
    let earlier = record["earlier"].as_array().unwrap();
    assert_eq!(earlier.len(), 1);
    assert!(earlier[0].get("restart").is_none() && earlier[0]["ended"].is_null());
    let args: Vec<&str> = record["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[1..],
        ["train", "--config", "c.toml", "--resume", "auto"]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_job_killed_before_its_first_checkpoint_starts_again_from_the_start() {
    let reference = uninterrupted();
    // Checkpoints only at the end (a key that changes no result): the kill comes before any.
    let dir = scratch("no-checkpoint", 0);
    let (_, line) = kill_rank_1_when(&dir, || {
        fs::read_to_string(run_dir(&dir).join("metrics.jsonl"))
            .is_ok_and(|m| m.lines().count() >= 3)
    });
    assert!(
        line.ends_with("; starting again from the start (no checkpoint yet)"),
        "{line}"
    );
    let run = run_dir(&dir);
    assert!(common::json(&run.join("report.json"))["resumed_from"].is_null());
    assert_eq!(
        logged(&dir),
        (1..=ITERATIONS).collect::<Vec<_>>(),
        "metrics redone once"
    );
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), reference);
    let record = common::json(&run.join("run.json"));
    assert!(record["restart"]["checkpoint"].is_null(), "{record}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_to_launch_stops_the_job_with_its_checkpoint_and_no_restart() {
    let dir = scratch("sigterm", 50);
    // mpirun passes SIGTERM on after its kill timeout (5 s under `launch`): a run that lasts.
    // A line every 50 iterations, not every one: ranks that print hundreds of lines a second keep
    // mpirun's output forwarding so busy that a rank blocked in a write can miss the 5 s before
    // mpirun's SIGKILL, and the stop's checkpoint is lost (seen here with `every = 1`).
    let long = config(50)
        .replace(
            &format!("iterations = {ITERATIONS}"),
            "iterations = 1000000",
        )
        .replace("every = 1\n", "every = 50\n");
    fs::write(dir.join("c.toml"), long).unwrap();
    let mut child = spawn(launch(&dir, &["--max-restarts", "2"]));
    wait_for(&mut child, "the first checkpoint", || {
        has_checkpoint(&dir).then_some(())
    });
    kill(child.id(), "TERM");
    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("metaloop: stopped by SIGTERM after iteration "),
        "{stderr}"
    );
    assert!(!stderr.contains("restart"), "{stderr}");
    assert!(!run_dir(&dir).join("report.json").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_found_by_the_ranks_is_printed_once_and_not_restarted() {
    let dir = common::scratch("restarts", "bad-input");
    // Class c has one image; an episode needs shots + queries = 2.
    let config = "[run]\nname = \"f\"\nthreads = 1\n[task]\nkind = \"folder\"\nroot = \"data\"\ncache_dir = \"cache\"\nways = 2\nshots = 1\nqueries = 1\nimage_size = 8\n[model]\nbackbone = \"conv4\"\nfilters = 4\n[outer]\nmeta_batch = 2\niterations = 2\n[eval]\nevery = 0\ntest_tasks = 2\n";
    fs::write(dir.join("c.toml"), config).unwrap();
    for (class, n) in [("a", 2), ("b", 2), ("c", 1)] {
        for i in 0..n {
            common::gray_png(&dir.join(format!("data/{class}/{i}.png")), 8, 8, 9);
        }
    }
    let out = launch(&dir, &["--max-restarts", "3"]).output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines = common::metaloop_lines(&stderr);
    assert_eq!(
        lines,
        ["metaloop: folder: class train/c has 1 images, an episode needs 2 (shots + queries)"],
        "{stderr}"
    );
    assert!(!dir.join("runs").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_restarts_is_for_train_and_a_bad_restart_record_is_refused() {
    let dir = scratch("flags", 50);
    let out = Command::new(common::metaloop_binary())
        .current_dir(&dir)
        .args([
            "launch",
            "-n",
            "2",
            "--max-restarts",
            "1",
            "--",
            "eval",
            "--checkpoint",
            "runs/s",
        ])
        .output_within_limit();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "metaloop: --max-restarts: only `train` can be restarted (it continues with --resume auto)\n"
    );
    let out = Command::new(common::metaloop_binary())
        .current_dir(&dir)
        .args(["train", "--config", "c.toml"])
        .env("METALOOP_RESTART", "{\"number\": 1}")
        .output_within_limit();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("metaloop: METALOOP_RESTART: not a restart record of `launch`"),
        "{stderr}"
    );
    assert_eq!(common::entries(&dir), ["c.toml"]);
    fs::remove_dir_all(&dir).unwrap();
}
