//! `metaloop launch`: starts N ranks of a metaloop command under mpirun, with the flags this
//! machine needs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use metaloop_engine::config::TrainConfig;

use crate::errors::bad;
use crate::restart::{self, Plan, Restart};
use crate::start::run_root;

/// What `launch` starts: `ranks` ranks of `command`, with a hostfile, and restarted at most
/// `max_restarts` times (`train` only; its config is `train`).
pub struct Job<'a> {
    pub ranks: usize,
    pub hostfile: Option<PathBuf>,
    pub command: &'a [String],
    pub max_restarts: u32,
    pub train: Option<&'a TrainConfig>,
}

/// Starts the job under mpirun. Without restarts this process becomes mpirun (exec), so that
/// signals and the exit code are mpirun's own; with them it stays, and restarts the job when it
/// fails (launcher::restart).
pub fn launch(job: Job) -> Result<()> {
    check(&job)?;
    let exe = std::env::current_exe()?;
    let (ranks, hostfile) = (job.ranks, job.hostfile.clone());
    let Some(cfg) = job.train.filter(|_| job.max_restarts > 0) else {
        let mut mpirun = mpirun(ranks, hostfile);
        mpirun.arg(exe).args(job.command);
        let err = mpirun.exec();
        return Err(anyhow::anyhow!(
            "cannot start mpirun ({err}): install Open MPI (cargo xtask setup)"
        ));
    };
    let plan = Plan {
        max: job.max_restarts,
        root: run_root(cfg),
        remote: job.hostfile.is_some(),
    };
    restart::supervise(&plan, job.command, |args, why: Option<&Restart>| {
        let mut cmd = mpirun(ranks, hostfile.clone());
        match why.and_then(|r| serde_json::to_string(r).ok()) {
            // -x: mpirun passes the variable to ranks on other hosts too.
            Some(json) => cmd.env(restart::ENV, json).args(["-x", restart::ENV]),
            None => cmd.env_remove(restart::ENV),
        };
        cmd.arg(&exe).args(args);
        cmd
    })
}

/// The checks of `launch`'s arguments.
fn check(job: &Job) -> Result<()> {
    if job.ranks == 0 {
        return Err(bad("--ranks: must be >= 1, got 0"));
    }
    if job.command.first().is_some_and(|c| c == "launch") {
        return Err(bad(
            "launch: the command after `--` cannot be `launch` itself",
        ));
    }
    if job.max_restarts > 0 && job.train.is_none() {
        return Err(bad(
            "--max-restarts: only `train` can be restarted (it continues with --resume auto)",
        ));
    }
    if let Some(h) = &job.hostfile {
        if !h.is_file() {
            return Err(bad(format!("--hostfile {}: no such file", h.display())));
        }
    }
    Ok(())
}

/// mpirun with `ranks` ranks and its flags, before the program.
fn mpirun(ranks: usize, hostfile: Option<PathBuf>) -> Command {
    let mut mpirun = Command::new("mpirun");
    mpirun.arg("-n").arg(ranks.to_string());
    // Rank threads, data loaders and libtorch's pools need every core, not one bound core.
    mpirun.args(["--bind-to", "none"]);
    // When a rank dies, or mpirun itself gets SIGTERM/SIGINT, mpirun sends the other ranks
    // SIGCONT, waits this many seconds, sends SIGTERM, waits again, then SIGKILL. Open MPI's 1 s
    // leaves a rank stopping on SIGTERM too little time for its last iteration and checkpoint;
    // 5 s gives it 5 s, and a dead rank still ends the job in about 10 s.
    if std::env::var_os("OMPI_MCA_odls_base_sigkill_timeout").is_none() {
        mpirun.args(["--mca", "odls_base_sigkill_timeout", "5"]);
    }
    if is_root() {
        mpirun.arg("--allow-run-as-root");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if hostfile.is_none() && ranks > cores {
        mpirun.arg("--oversubscribe");
    }
    if let Some(h) = hostfile {
        mpirun.arg("--hostfile").arg(h);
    }
    mpirun
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
