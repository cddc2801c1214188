//! `launch --max-restarts N`: runs the mpirun job, and when it fails starts it again with
//! `train --resume auto`, at most N times, as torchrun's `--max-restarts` does.
//!
//! A job is not started again after a success, after bad input (exit code 2: the same input
//! would fail the same way), or after a stop the user asked for: SIGTERM or SIGINT to `launch`
//! itself, which passes the signal on to mpirun once (a second one ends `launch` at once, as
//! launcher::signals does for `train`). mpirun runs in its own process group, so a Ctrl-C at the
//! terminal reaches it only through `launch`, once.
//!
//! Each restart prints one line (the reason, the exit code, the checkpoint it continues from)
//! and tells the restarted ranks why through `METALOOP_RESTART` (a JSON [`Restart`]), which
//! rank 0 records in the run's `run.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use metaloop_engine::checkpoint;
use metaloop_engine::rundir::{self, RunLock};
use serde::{Deserialize, Serialize};

use crate::errors::{bad, quiet, say};
use crate::signals::StopSignals;

/// The environment variable that tells a restarted job's ranks why it was restarted.
pub const ENV: &str = "METALOOP_RESTART";

/// One restart of a job, as `launch` made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// 1 for the first restart.
    pub number: u32,
    /// `--max-restarts`.
    pub max: u32,
    /// The failed job's exit code (128 + n when mpirun itself was ended by signal n).
    pub exit_code: i32,
    /// Why the job failed, in words.
    pub reason: String,
    /// The checkpoint manifest it continues from (null: the run starts again from the start).
    pub checkpoint: Option<String>,
    /// When `launch` restarted the job (UTC, RFC 3339).
    pub at: String,
}

impl Restart {
    /// The restart that `launch` announced to this process, if any: exit 2 when
    /// `METALOOP_RESTART` holds something else.
    pub fn from_env() -> Result<Option<Restart>> {
        let Some(text) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let text = text.to_string_lossy();
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad(format!("{ENV}: not a restart record of `launch` ({e})")))
    }
}

/// What `launch --max-restarts` needs beyond mpirun's flags.
pub struct Plan {
    /// `--max-restarts`.
    pub max: u32,
    /// The run directory of the `train` command.
    pub root: PathBuf,
    /// Whether the run directory may live on another host (a hostfile).
    pub remote: bool,
}

/// Runs the job that `mpirun(args, restart)` starts, and starts it again as the module says.
/// Ends with the exit code of its last run.
pub fn supervise(
    plan: &Plan,
    command: &[String],
    mpirun: impl Fn(&[String], Option<&Restart>) -> Command,
) -> Result<()> {
    let stop = StopSignals::install()?;
    let mut restart: Option<Restart> = None;
    loop {
        let args = match restart {
            Some(_) => resume_auto(command),
            None => command.to_vec(),
        };
        let status = run(mpirun(&args, restart.as_ref()), &stop)?;
        let code = exit_code(status);
        let number = restart.as_ref().map_or(0, |r| r.number);
        if code == 0 {
            return Ok(());
        }
        // A stop asked of `launch`: mpirun exits 1 after passing it on, so the code says which.
        if let Some(signal) = stop.received() {
            return Err(quiet((128 + signal) as u8));
        }
        if code == 2 {
            return Err(quiet(2));
        }
        let reason = reason(status);
        if number >= plan.max {
            say(&format!(
                "the job failed: {reason} (exit code {code}); no restart left (--max-restarts {})",
                plan.max
            ));
            return Err(quiet(code as u8));
        }
        wait_for_unlock(&plan.root);
        // A stop asked for while the job was down: no new start. (One asked for later reaches
        // the new job, as `run` passes it on.)
        if let Some(signal) = stop.received() {
            return Err(quiet((128 + signal) as u8));
        }
        let next = Restart {
            number: number + 1,
            max: plan.max,
            exit_code: code,
            reason,
            checkpoint: newest_checkpoint(&plan.root),
            at: checkpoint::rfc3339_utc(SystemTime::now()),
        };
        say(&announce(&next, plan.remote));
        restart = Some(next);
    }
}

/// Starts `cmd` and waits for it. The first stop signal that `launch` receives (before or
/// during the run) is passed on to it.
fn run(mut cmd: Command, stop: &StopSignals) -> Result<ExitStatus> {
    use std::os::unix::process::CommandExt;
    // Its own process group: a Ctrl-C at the terminal reaches it only through us.
    cmd.process_group(0).stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .context("cannot start mpirun: install Open MPI (cargo xtask setup)")?;
    let mut passed = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if let (Some(signal), false) = (stop.received(), passed) {
            // std has no safe kill(2) with a signal of choice; kill(1) is everywhere.
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
            passed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The exit code of a job: its own, or 128 + the signal that ended mpirun.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Why a job failed, from its exit status: mpirun exits with a rank's exit code, and with 128 +
/// n when a rank was ended by signal n.
fn reason(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(s)) => format!("mpirun was ended by {}", signal_name(s)),
        (Some(101), _) => "a rank panicked".into(),
        (Some(c), _) if c > 128 => format!("a rank was ended by {}", signal_name(c - 128)),
        _ => "a rank failed".into(),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.into()
}

/// The restart's line.
fn announce(r: &Restart, remote: bool) -> String {
    let from = match (&r.checkpoint, remote) {
        (Some(c), _) => format!("continuing from checkpoint {c}"),
        (None, false) => "starting again from the start (no checkpoint yet)".into(),
        (None, true) => "continuing from rank 0's newest checkpoint, if any".into(),
    };
    format!(
        "restart {} of {}: {} (exit code {}); {from}",
        r.number, r.max, r.reason, r.exit_code
    )
}

/// `command` (a `train` command) with `--resume auto` in place of any `--resume` it had.
fn resume_auto(command: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len() + 2);
    let mut args = command.iter().peekable();
    while let Some(a) = args.next() {
        if a.starts_with("--resume=") {
            continue;
        }
        if a == "--resume" {
            if args
                .peek()
                .is_some_and(|v| v.as_str() == "auto" || v.as_str() == "latest")
            {
                args.next();
            }
            continue;
        }
        out.push(a.clone());
    }
    out.extend(["--resume".to_string(), "auto".to_string()]);
    out
}

/// The newest checkpoint manifest of the run directory `root`, if any (the ranks check it, and
/// fall back to an older one when it is damaged).
fn newest_checkpoint(root: &Path) -> Option<String> {
    let list = checkpoint::list(&root.join(rundir::CHECKPOINTS)).ok()?;
    list.first().map(|(_, p)| p.display().to_string())
}

/// Waits (at most 60 s) until no process of the failed job holds the run directory's lock:
/// mpirun may return while a rank it killed is still ending.
fn wait_for_unlock(root: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if !matches!(
            RunLock::acquire_for_reading(root),
            Err(metaloop_engine::Error::RunDirBusy { .. })
        ) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_restart_resumes_auto_whatever_resume_the_command_had() {
        let expect = strings(&["train", "--config", "c.toml", "--resume", "auto"]);
        for tail in [
            &[][..],
            &["--resume"],
            &["--resume", "latest"],
            &["--resume", "auto"],
            &["--resume=latest"],
        ] {
            let cmd = [&["train", "--config", "c.toml"][..], tail].concat();
            assert_eq!(resume_auto(&strings(&cmd)), expect, "{tail:?}");
        }
        let cmd = strings(&["train", "--resume", "--config", "c.toml"]);
        assert_eq!(resume_auto(&cmd), expect);
    }

    #[test]
    fn the_reason_names_the_signal_or_the_failure() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(reason(exited(137)), "a rank was ended by SIGKILL");
        assert_eq!(reason(exited(101)), "a rank panicked");
        assert_eq!(reason(exited(1)), "a rank failed");
        assert_eq!(exit_code(exited(137)), 137);
        let killed = ExitStatus::from_raw(9);
        assert_eq!(reason(killed), "mpirun was ended by SIGKILL");
        assert_eq!(exit_code(killed), 137);
    }

    #[test]
    fn a_restart_record_reads_back_and_says_where_it_continues() {
        let r = Restart {
            number: 1,
            max: 3,
            exit_code: 137,
            reason: "a rank was ended by SIGKILL".into(),
            checkpoint: Some("runs/s/checkpoints/ckpt-000000050.json".into()),
            at: "2026-01-01T00:00:00Z".into(),
        };
        let back: Restart = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            announce(&r, false),
            "restart 1 of 3: a rank was ended by SIGKILL (exit code 137); continuing from checkpoint runs/s/checkpoints/ckpt-000000050.json"
        );
        let none = Restart {
            checkpoint: None,
            ..r
        };
        assert!(
            announce(&none, false).ends_with("starting again from the start (no checkpoint yet)")
        );
    }
}
