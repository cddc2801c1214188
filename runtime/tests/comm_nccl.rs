//! `comm::Nccl`: clear errors where NCCL cannot run (always tested), and all-reduce / broadcast of
//! CUDA tensors across ranks under mpirun (where the machine has CUDA devices; skipped otherwise).

mod mpi_support;

use metaloop_runtime::comm::{Communicator, Mpi, Nccl, NCCL_LIBRARY_ENV};
use metaloop_runtime::Error;
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// Set in the child process of `a_missing_library_is_a_clear_error`.
const CHILD: &str = "METALOOP_TEST_NCCL_CHILD";

#[test]
fn a_missing_library_is_a_clear_error() {
    if std::env::var_os(CHILD).is_none() {
        // The library path comes from the environment: set it in a child process of this very
        // test binary, so that no other test thread sees it.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_missing_library_is_a_clear_error",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(NCCL_LIBRARY_ENV, "/nonexistent/metaloop-test/libnccl.so.2")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed; 0 failed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let err = Nccl::check(Device::Cuda(0)).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, Error::NcclUnavailable(_)), "{err:?}");
    assert!(
        text.starts_with("NCCL not available: /nonexistent/metaloop-test/libnccl.so.2 not found"),
        "{text}"
    );
    assert!(text.contains(NCCL_LIBRARY_ENV), "{text}");
}

#[test]
fn nccl_needs_a_cuda_device() {
    let err = Nccl::check(Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::NcclUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("CUDA devices"), "{err}");
}

#[test]
fn init_without_a_gpu_fails_with_a_clear_error() {
    if mpi_support::under_mpirun() {
        return;
    }
    if tch::Cuda::device_count() > 0 {
        println!("skipped: this machine has CUDA devices (the mpirun test below covers them)");
        return;
    }
    // One rank (an MPI singleton): the library may load (libtorch's CUDA build carries NCCL), but
    // there is no device, and init says so instead of panicking or hanging.
    let mpi = Mpi::init().unwrap();
    let err = Nccl::init(mpi, Device::Cuda(0)).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, Error::NcclUnavailable(_)), "{err:?}");
    assert!(text.starts_with("NCCL not available: "), "{text}");
    assert!(
        text.contains("libnccl.so.2") || text.contains("CUDA device"),
        "{text}"
    );
}

#[test]
fn all_reduce_and_broadcast_on_gpus_under_mpirun() {
    if !mpi_support::under_mpirun() {
        let gpus = tch::Cuda::device_count();
        if gpus == 0 {
            println!("skipped: no CUDA device (NCCL all-reduce needs at least one GPU)");
            return;
        }
        // One rank per GPU, up to two.
        mpi_support::run_under_mpirun(
            gpus.min(2) as usize,
            "all_reduce_and_broadcast_on_gpus_under_mpirun",
        );
        return;
    }
    let mpi = Mpi::init().unwrap();
    let device = Device::Cuda(mpi.local_rank());
    let comm = Nccl::init(mpi, device).unwrap();
    let (r, n) = (comm.rank() as f64, comm.size() as f64);
    assert!(comm.version().unwrap() >= 21000);
    // Sum over ranks of (r + 1): n (n + 1) / 2.
    let total = n * (n + 1.0) / 2.0;

    for kind in [Kind::Float, Kind::Double] {
        let mut t = Tensor::ones([3, 5], (kind, device)) * (r + 1.0);
        comm.all_reduce_sum(&mut t).unwrap();
        assert_eq!(t.device(), device);
        assert_eq!(t.size(), vec![3, 5]);
        assert_eq!(t.eq(total).all().int64_value(&[]), 1, "{kind:?}");
    }

    // A large buffer (a conv4's meta-gradient is about 10^5 floats), element-wise distinct values.
    let m = 1 << 20;
    let base = Tensor::arange(m, (Kind::Float, device)) / m as f64;
    let mut t = &base * (r + 1.0);
    comm.all_reduce_sum(&mut t).unwrap();
    let want = &base * total;
    assert!(t.allclose(&want, 1e-6, 1e-6, false));

    // A non-contiguous tensor (a transposed view) is reduced in place all the same.
    let mut t = (Tensor::arange(6, (Kind::Double, device)).view([2, 3]) * (r + 1.0)).tr();
    assert!(!t.is_contiguous());
    comm.all_reduce_sum(&mut t).unwrap();
    let want = Tensor::arange(6, (Kind::Double, device)).view([2, 3]).tr() * total;
    assert_eq!(t.to_device(Device::Cpu), want.to_device(Device::Cpu));

    // CPU tensors go through MPI.
    let mut c = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
    comm.all_reduce_sum(&mut c).unwrap();
    assert_eq!(Vec::<f64>::try_from(&c).unwrap(), vec![total, 10.0 * total]);

    // Broadcast from the last rank.
    let root = comm.size() - 1;
    let mut b = Tensor::from_slice(&[r, r * 2.0]).to_device(device);
    comm.broadcast(&mut b, root).unwrap();
    let want = [root as f64, root as f64 * 2.0];
    assert_eq!(
        Vec::<f64>::try_from(&b.to_device(Device::Cpu)).unwrap(),
        want
    );
    assert!(comm.broadcast(&mut b, comm.size()).is_err());

    // Integer tensors are refused with the dtype named.
    let mut i = Tensor::ones([2], (Kind::Int64, device));
    let err = comm.all_reduce_sum(&mut i).unwrap_err();
    assert!(err.to_string().contains("Int64"), "{err}");
    comm.barrier().unwrap();
}
