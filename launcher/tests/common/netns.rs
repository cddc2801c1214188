//! Two "hosts" on one machine for multi-host tests: two network namespaces joined by a veth pair,
//! 10.77.0.1 and 10.77.0.2, and mpirun reaching the second one through `ip netns exec` instead of
//! ssh. MPI traffic goes over TCP between the two addresses only (no shared memory), so a job that
//! passes here assumes neither one host nor shared memory.
//!
//! Needs root and iproute2 (`cargo xtask setup` installs it); [`TwoHosts::new`] says why not
//! otherwise, so that tests can skip with a message. Namespaces are named per process and per
//! instance, removed on drop (also when a test panics), and stale ones left by killed runs are
//! removed at the next start.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The two hosts' addresses, in one /24 that exists only inside the namespaces.
pub const HOST_ADDRS: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const SUBNET: &str = "10.77.0.0/24";
const PREFIX: &str = "metaloop-";

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined by a veth pair, with an mpirun launcher agent and a hostfile.
pub struct TwoHosts {
    /// The namespaces of host 0 (where mpirun runs) and host 1.
    pub namespaces: [String; 2],
    /// A scratch directory with `agent.sh` and `hostfile`, removed on drop.
    pub dir: PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}): install iproute2 (`cargo xtask setup`)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces of earlier test processes that no longer exist (killed before their drop).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl TwoHosts {
    /// Makes the two hosts, or says why it cannot (not root, no iproute2, namespaces refused).
    pub fn new() -> Result<TwoHosts, String> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            return Err("network namespaces need root".into());
        }
        ip(&["-V"])?;
        remove_stale();
        let pid = std::process::id();
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let hosts = TwoHosts {
            namespaces: [
                format!("{PREFIX}{pid}-{n}-a"),
                format!("{PREFIX}{pid}-{n}-b"),
            ],
            dir: std::env::temp_dir().join(format!("{PREFIX}netns-{pid}-{n}")),
        };
        // From here on, drop cleans up whatever was made.
        hosts.build(pid, n)?;
        Ok(hosts)
    }

    fn build(&self, pid: u32, n: usize) -> Result<(), String> {
        let [a, b] = &self.namespaces;
        // Interface names are limited to 15 bytes and live in the root namespace until moved.
        let veth = [format!("ml{pid}x{n}a"), format!("ml{pid}x{n}b")];
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ])?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            ip(&["link", "set", &veth[i], "netns", ns])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", HOST_ADDRS[i]),
                "dev",
                &veth[i],
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", &veth[i], "up"])?;
        }

        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        // mpirun's launcher agent: called as `agent <host> <command...>` like ssh, it runs the
        // command (Open MPI's orted) in that host's namespace, with this process's environment.
        let agent = format!(
            "#!/bin/sh\n\
             # mpirun's plm_rsh_agent for the two-namespace hosts: like ssh, but `ip netns exec`.\n\
             host=\"$1\"; shift\n\
             case \"$host\" in\n\
             \x20 {h0}) ns={a} ;;\n\
             \x20 {h1}) ns={b} ;;\n\
             \x20 *) echo \"agent.sh: unknown host $host\" >&2; exit 1 ;;\n\
             esac\n\
             exec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n",
            h0 = HOST_ADDRS[0],
            h1 = HOST_ADDRS[1],
        );
        let agent_path = self.agent();
        std::fs::write(&agent_path, agent).map_err(|e| format!("{}: {e}", agent_path.display()))?;
        Command::new("chmod")
            .arg("+x")
            .arg(&agent_path)
            .status()
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The launcher agent script.
    pub fn agent(&self) -> PathBuf {
        self.dir.join("agent.sh")
    }

    /// Writes a hostfile with `slots` slots on each host and returns its path.
    pub fn hostfile(&self, slots: usize) -> PathBuf {
        let path = self.dir.join("hostfile");
        let text: String = HOST_ADDRS
            .iter()
            .map(|h| format!("{h} slots={slots}\n"))
            .collect();
        std::fs::write(&path, text).expect("write the hostfile");
        path
    }

    /// An mpirun command, run inside host 0, that starts `ranks_per_host` ranks of `program` on
    /// each host, with MPI over TCP between the two addresses only. Add the program's arguments
    /// (and `.env(..)`, `.current_dir(..)`: the ranks inherit this process's environment).
    pub fn mpirun(&self, ranks_per_host: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespaces[0], "mpirun"]);
        cmd.arg("-n").arg((2 * ranks_per_host).to_string());
        cmd.arg("--hostfile").arg(self.hostfile(ranks_per_host));
        cmd.args([
            "--map-by",
            "node",
            "--bind-to",
            "none",
            "--allow-run-as-root",
        ]);
        cmd.arg("--mca").arg("plm_rsh_agent").arg(self.agent());
        // ob1 with TCP and self only: no shared memory between the ranks, no UCX or InfiniBand.
        cmd.args(["--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]);
        cmd.args(["--mca", "btl_tcp_if_include", SUBNET]);
        cmd.args(["--mca", "oob_tcp_if_include", SUBNET]);
        cmd.arg(program);
        cmd
    }

    /// Runs `program args` under [`TwoHosts::mpirun`] with one rank on each host.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        use super::bounded::OutputWithin;
        self.mpirun(1, program).args(args).output_within_limit()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth end inside it, and so the pair.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program args` under mpirun with one rank on each of two namespace hosts. `None`, with a
/// printed message, where network namespaces are not allowed (the test should then skip).
pub fn run_on_two_hosts(program: &Path, args: &[&str]) -> Option<Output> {
    match TwoHosts::new() {
        Ok(hosts) => Some(hosts.run(program, args)),
        Err(why) => {
            println!("skipped: two-host test needs `ip netns` ({why})");
            None
        }
    }
}
