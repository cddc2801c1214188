//! Multi-host test on one machine: two network namespaces joined by a veth pair act as two hosts,
//! mpirun starts one rank on each over TCP, and the ranks all-reduce and broadcast through
//! `comm::Mpi`. Skips with a message where `ip netns` is not allowed (not root, no iproute2).

mod common;

use common::netns::{TwoHosts, HOST_ADDRS};
use metaloop::runtime::comm::{Communicator, Mpi};
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
