//! Multi-host test on one machine: two network namespaces joined by a veth pair act as two hosts,
//! mpirun starts one rank on each over TCP, and the ranks all-reduce and broadcast through
//! `comm::Mpi`. Skips with a message where `ip netns` is not allowed (not root, no iproute2).

mod common;

use common::netns::{TwoHosts, HOST_ADDRS};
use metaloop_runtime::comm::{Communicator, Mpi};
use std::process::Command;
use tch::Tensor;

/// The inode of this process's network namespace: equal for two processes on one "host".
fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

fn namespaces_listed() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn all_reduce_with_one_rank_on_each_of_two_hosts() {
    if !common::under_mpirun() {
        let hosts = match TwoHosts::new() {
            Ok(h) => h,
            Err(why) => {
                println!("skipped: two-host test needs `ip netns` ({why})");
                return;
            }
        };
        let names = hosts.namespaces.clone();
        let exe = std::env::current_exe().unwrap();
        let test = "all_reduce_with_one_rank_on_each_of_two_hosts";
        let out = hosts.run(
            &exe,
            &[
                "--exact",
                test,
                "--nocapture",
                "--test-threads=1",
                "--color=never",
            ],
        );
        drop(hosts);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "mpirun across two hosts failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert_eq!(
            // libtest writes "test result: ok" and ". 1 passed; 0 failed; ..." separately, and the
            // two ranks' writes may interleave between them: count the second piece.
            stdout.matches("1 passed; 0 failed").count(),
            2,
            "both ranks must pass:\n{stdout}\n{stderr}"
        );
        for r in 0..2 {
            let line = format!("rank {r} of 2 on {}", HOST_ADDRS[r]);
            assert!(stdout.contains(&line), "no `{line}` in:\n{stdout}");
        }
        let left = namespaces_listed();
        for ns in names {
            assert!(!left.contains(&ns), "{ns} was not removed:\n{left}");
        }
        return;
    }

    let comm = Mpi::init().unwrap();
    assert_eq!(comm.size(), 2);
    let r = comm.rank();
    // One rank per host: each is alone on its node, so its local rank (its GPU) is 0.
    assert_eq!((comm.local_rank(), comm.local_size()), (0, 1));

    // The two ranks live in different network namespaces: their inodes differ.
    let mut inodes = Tensor::zeros([2], (tch::Kind::Double, tch::Device::Cpu));
    let _ = inodes.get(r as i64).fill_(netns_inode() as f64);
    comm.all_reduce_sum(&mut inodes).unwrap();
    let inodes = Vec::<f64>::try_from(&inodes).unwrap();
    assert_ne!(inodes[0], inodes[1], "both ranks are in one namespace");

    // Host r has address HOST_ADDRS[r] (mpirun maps ranks by node, in hostfile order).
    let out = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(
        addrs.contains(&format!("inet {}/", HOST_ADDRS[r])),
        "{addrs}"
    );
    println!("rank {r} of 2 on {}", HOST_ADDRS[r]);

    // A meta-gradient-sized all-reduce over TCP, in f32 and f64.
    let m = 100_000;
    let base = Tensor::arange(m, (tch::Kind::Double, tch::Device::Cpu)) / m as f64;
    let mut g = &base * (r as f64 + 1.0);
    comm.all_reduce_sum(&mut g).unwrap();
    assert!(g.allclose(&(&base * 3.0), 1e-12, 1e-12, false));
    let mut g = base.to_kind(tch::Kind::Float) * (r as f64 + 1.0);
    comm.all_reduce_sum(&mut g).unwrap();
    assert!(g.allclose(&(base.to_kind(tch::Kind::Float) * 3.0), 1e-6, 1e-6, false));

    let mut b = Tensor::from_slice(&[r as f64 + 5.0]);
    comm.broadcast(&mut b, 1).unwrap();
    assert_eq!(b.double_value(&[0]), 6.0);
    comm.barrier().unwrap();
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if common::under_mpirun() {
        return;
    }
    let made = std::panic::catch_unwind(|| {
        let hosts = match TwoHosts::new() {
            Ok(h) => h,
            Err(why) => {
                println!("skipped: needs `ip netns` ({why})");
                return None;
            }
        };
        let names = hosts.namespaces.clone();
        assert!(namespaces_listed().contains(&names[1]));
        std::panic::panic_any(names);
    });
    match made {
        Ok(None) => {}
        Ok(Some(())) => unreachable!(),
        Err(payload) => {
            let names = payload
                .downcast::<[String; 2]>()
                .expect("the namespace names");
            let left = namespaces_listed();
            for ns in names.iter() {
                assert!(!left.contains(ns), "{ns} outlived the panic:\n{left}");
            }
        }
    }
}

/// The config of the two-host resume test (f64 on one thread: runs repeat bit for bit).
const RESUME_CONFIG: &str = "[run]\nname = \"s\"\ndtype = \"f64\"\nthreads = 1\n[task]\nkind = \"sinusoid\"\nshots = 5\nqueries = 5\n[model]\nhidden = [8]\n[outer]\nmeta_batch = 4\niterations = 20\n[eval]\nevery = 0\ntest_tasks = 4\n[log]\nevery = 1\ncheckpoint_every = 10\nkeep_checkpoints = 3\n";

/// `metaloop train --config c.toml [extra]` with one rank on each of two hosts, each rank in its
/// own directory `<base>/host<rank>` (its own out_dir: the hosts share no run directory). Two
/// network-namespace hosts where allowed, else plain mpirun on this host.
fn train_on_two_hosts(base: &std::path::Path, extra: &[&str]) -> std::process::Output {
    use common::bounded::OutputWithin;
    let wrapper = base.join("in-host-dir.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n# Runs metaloop in <base>/host<MPI rank>.\nbase=\"$1\"; shift\ncd \"$base/host$OMPI_COMM_WORLD_RANK\" && exec \"$@\"\n",
    )
    .unwrap();
    let exe = common::metaloop_binary();
    let mut args: Vec<String> = vec![wrapper.display().to_string(), base.display().to_string()];
    args.push(exe.display().to_string());
    args.extend(["train", "--config", "c.toml"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match TwoHosts::new() {
        Ok(hosts) => hosts.run(std::path::Path::new("/bin/sh"), &args),
        Err(why) => {
            println!("two-host resume on one host with plain mpirun (`ip netns`: {why})");
            let mut cmd = Command::new("mpirun");
            cmd.args(["-n", "2", "--oversubscribe", "--bind-to", "none"]);
            cmd.args(["--allow-run-as-root", "/bin/sh"]).args(&args);
            cmd.output_within_limit()
        }
    }
}

#[test]
fn resume_on_two_hosts_with_separate_out_dirs() {
    if common::under_mpirun() {
        return;
    }
    let base =
        std::env::temp_dir().join(format!("metaloop-two-host-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    for h in 0..2 {
        std::fs::create_dir_all(base.join(format!("host{h}"))).unwrap();
        std::fs::write(base.join(format!("host{h}/c.toml")), RESUME_CONFIG).unwrap();
    }
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(train_on_two_hosts(&base, &[]));
    // Rank 0 alone writes: host 1 has no run directory, so no checkpoint to read.
    let run = base.join("host0/runs/s");
    assert!(!base.join("host1/runs").exists());
    let finished = std::fs::read(run.join("model.safetensors")).unwrap();
    // A run killed after the checkpoint of iteration 10: its newer files removed.
    for f in [
        "checkpoints/ckpt-000000020.json",
        "checkpoints/ckpt-000000020.safetensors",
        "model.safetensors",
        "report.json",
    ] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    ok(train_on_two_hosts(&base, &["--resume"]));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["resumed_from"], 10);
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        finished
    );
    assert!(!base.join("host1/runs").exists());
    std::fs::remove_dir_all(&base).unwrap();
}
