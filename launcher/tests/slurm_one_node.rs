//! A real one-node Slurm cluster on localhost (munged, slurmctld and slurmd, with a config written
//! here) runs the single-node template, cluster/slurm/single-node.sbatch, as a user's `sbatch`
//! would. The job gets its preemption signal (SIGTERM to the batch script, what
//! `--signal=B:TERM@120` sends), stops after an iteration with a checkpoint, requeues itself,
//! continues with `--resume auto`, and ends with the model of an uninterrupted run, byte for byte
//! (f64 on the CPU).
//!
//! It skips, with a message, where it cannot start the cluster: not root (slurmd runs jobs as
//! their user), or Slurm and munge not installed (`cargo xtask setup` installs them as root).
//! Differences from a site's use of the template, all through its own knobs or sbatch's options:
//! `MPI_MODULE=none` (no environment modules here), `METALOOP_BIN` (the test build), and
//! `--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1` on the command line (no GPUs here).
//! Slurm holds a requeued job for about two minutes before it may start again; the test moves
//! that start time to now with `scontrol update`, as an administrator can.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sinusoid regression, second order, f64: long enough (about 10 s) to be stopped mid-run.
const CONFIG: &str = r#"
[run]
name = "s"
dtype = "f64"
threads = 1
[task]
kind = "sinusoid"
shots = 10
queries = 10
[model]
hidden = [40, 40]
[outer]
meta_batch = 4
iterations = 600
[eval]
every = 0
test_tasks = 4
[log]
every = 50
checkpoint_every = 20
"#;

/// Why the cluster cannot start here, if it cannot.
fn unavailable() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("not root: slurmd must run as root to start jobs".into());
    }
    let on_path = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    let missing: Vec<&str> = [
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "srun",
        "scontrol",
        "scancel",
        "sinfo",
    ]
    .into_iter()
    .filter(|p| !on_path(p))
    .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "{} not installed (`cargo xtask setup` as root installs slurmctld, slurmd, slurm-client and munge)",
            missing.join(", ")
        ))
    }
}

/// The daemons of a one-node cluster; dropping it stops them.
struct Cluster {
    dir: PathBuf,
    daemons: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM first, so that slurmctld reaps its own helpers; SIGKILL after 10 s.
        for d in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let started = Instant::now();
            while d.try_wait().ok().flatten().is_none()
                && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// A TCP port free on localhost now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        for sub in ["state", "spool", "log"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let key = dir.join("munge.key");
        let mut random = vec![0u8; 1024];
        {
            use std::io::Read;
            fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut random)
                .unwrap();
        }
        fs::write(&key, random).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        let host = short_hostname();
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let d = dir.display();
        let conf = format!(
            "ClusterName=metaloop-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nAuthInfo=socket={d}/munge.sock\nCredType=cred/munge\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
             SlurmctldPort={}\nSlurmdPort={}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity\nJobAcctGatherType=jobacct_gather/none\n\
             SchedulerType=sched/builtin\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             ReturnToService=2\nJobRequeue=1\nMpiDefault=none\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port()
        );
        fs::write(dir.join("slurm.conf"), conf).unwrap();
        let spawn = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .env("SLURM_CONF", dir.join("slurm.conf"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
        };
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            daemons: Vec::new(),
        };
        cluster.daemons.push(spawn(
            Command::new("munged")
                .arg("-F")
                .arg("--force")
                .arg(format!("--socket={d}/munge.sock"))
                .arg(format!("--key-file={d}/munge.key"))
                .arg(format!("--pid-file={d}/munged.pid"))
                .arg(format!("--log-file={d}/log/munged.log"))
                .arg(format!("--seed-file={d}/munge.seed")),
        ));
        wait_for("munged's socket", Duration::from_secs(20), || {
            dir.join("munge.sock").exists().then_some(())
        });
        let conf = dir.join("slurm.conf");
        cluster.daemons.push(spawn(
            Command::new("slurmctld").arg("-D").arg("-f").arg(&conf),
        ));
        cluster
            .daemons
            .push(spawn(Command::new("slurmd").arg("-D").arg("-f").arg(&conf)));
        let started = Instant::now();
        loop {
            let out = cluster
                .slurm("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                break cluster;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "the one-node cluster did not come up in 60 s; logs:\n{}\n{}",
                    read(&dir.join("log/slurmctld.log")),
                    read(&dir.join("log/slurmd.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A Slurm client command for this cluster.
    fn slurm(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", self.dir.join("slurm.conf"));
        c
    }

    /// `scontrol show job`'s field `key` (JobState, Restarts, ...).
    fn job_field(&self, job: &str, key: &str) -> String {
        let out = self
            .slurm("scontrol")
            .args(["show", "job", job])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_default()
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// Polls `probe` every 200 ms until it gives a value; panics after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("cluster/slurm/single-node.sbatch")
}

#[test]
fn single_node_template_survives_preemption_and_requeue() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: the one-node Slurm cluster cannot start here: {why}");
        return;
    }
    let scratch = common::scratch("slurm", "requeue");
    let cluster = Cluster::start(&scratch.join("cluster"));
    let job_dir = scratch.join("job");
    let reference = scratch.join("reference");
    for d in [&job_dir, &reference] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("c.toml"), CONFIG).unwrap();
    }
    let bin = common::metaloop_binary();
    let out = cluster
        .slurm("sbatch")
        .args([
            "--parsable",
            "--gpus-per-node=0",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
        ])
        .arg(format!("--chdir={}", job_dir.display()))
        .arg(format!(
            "--export=ALL,METALOOP_BIN={},MPI_MODULE=none",
            bin.display()
        ))
        .args(["-o", "slurm-%j.out"])
        .arg(template())
        .arg("c.toml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let log = job_dir.join(format!("slurm-{job}.out"));

    // The preemption signal once a checkpoint exists.
    let checkpoints = job_dir.join("runs/s/checkpoints");
    wait_for(
        "the job's first checkpoint",
        Duration::from_secs(120),
        || {
            fs::read_dir(&checkpoints)
                .ok()?
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
                .then_some(())
        },
    );
    let sig = cluster
        .slurm("scancel")
        .args(["--batch", "--signal=TERM", &job])
        .status()
        .unwrap();
    assert!(sig.success());
    // The template requeues the job itself; Slurm then holds it for about two minutes.
    wait_for(
        "the job to requeue itself",
        Duration::from_secs(120),
        || {
            (cluster.job_field(&job, "Restarts") == "1"
                && cluster.job_field(&job, "JobState") == "PENDING")
                .then_some(())
        },
    );
    // Its first run must be gone from the node first: slurmd refuses to start a job whose
    // earlier run's step daemons (slurmstepd: [<job>.0], [<job>.batch]) are still finishing.
    wait_for(
        "the first run's step daemons to end",
        Duration::from_secs(120),
        || {
            let out = Command::new("pgrep")
                .args(["-f", &format!("slurmstepd: \\[{job}\\.")])
                .output()
                .unwrap();
            let idle = cluster
                .slurm("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .unwrap();
            (out.stdout.is_empty() && String::from_utf8_lossy(&idle.stdout).trim() == "idle")
                .then_some(())
        },
    );
    let released = cluster
        .slurm("scontrol")
        .args(["update", &format!("JobId={job}"), "StartTime=now"])
        .status()
        .unwrap();
    assert!(released.success());
    let state = wait_for("the requeued job to end", Duration::from_secs(300), || {
        let s = cluster.job_field(&job, "JobState");
        matches!(
            s.as_str(),
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL"
        )
        .then_some(s)
    });
    let text = read(&log);
    assert_eq!(state, "COMPLETED", "job log:\n{text}");
    assert!(
        text.contains("stopped by SIGTERM after iteration"),
        "job log:\n{text}"
    );
    assert!(
        text.contains(&format!("requeueing job {job}")),
        "job log:\n{text}"
    );
    assert!(text.contains("meta-test:"), "job log:\n{text}");

    // The uninterrupted run, on the same cluster and rank count.
    let out = cluster
        .slurm("srun")
        .args(["--mpi=pmix", "-n", "2"])
        .arg(&bin)
        .args(["train", "--config", "c.toml", "--threads", "1"])
        .current_dir(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "srun: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = fs::read(job_dir.join("runs/s/model.safetensors")).unwrap();
    let theirs = fs::read(reference.join("runs/s/model.safetensors")).unwrap();
    assert!(
        ours == theirs,
        "the preempted and requeued job's model differs from the uninterrupted run's"
    );
    drop(cluster);
    let _ = fs::remove_dir_all(&scratch);
}
