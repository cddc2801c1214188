//! `metaloop launch`: starts N ranks of a metaloop command under mpirun, with the flags this
//! machine needs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::errors::bad;

/// Replaces this process with mpirun starting `ranks` copies of this binary running `command`.
pub fn launch(ranks: usize, hostfile: Option<PathBuf>, command: &[String]) -> Result<()> {
    check(ranks, hostfile.as_ref(), command)?;
    let exe = std::env::current_exe()?;
    let mut mpirun = mpirun(ranks, hostfile);
    mpirun.arg(exe).args(command);
    let err = mpirun.exec();
    Err(anyhow::anyhow!(
        "cannot start mpirun ({err}): install Open MPI (cargo xtask setup)"
    ))
}

/// The checks of `launch`'s arguments.
fn check(ranks: usize, hostfile: Option<&PathBuf>, command: &[String]) -> Result<()> {
    if ranks == 0 {
        return Err(bad("--ranks: must be >= 1, got 0"));
    }
    if command.first().is_some_and(|c| c == "launch") {
        return Err(bad(
            "launch: the command after `--` cannot be `launch` itself",
        ));
    }
    if let Some(h) = hostfile {
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
