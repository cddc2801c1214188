//! The caching CPU allocator (runtime::host_memory): freed tensor memory goes to its
//! free lists, is handed out again for the same size class, and is released on request; tensors
//! from it hold the values written to them. Its own test binary: the allocator is process-wide.

use metaloop_runtime::host_memory::{
    cache_host_allocations, empty_host_cache, host_cache_bytes, retain_freed_host_memory,
};
use tch::{Device, Kind, Tensor};

#[test]
fn freed_tensors_are_cached_reused_and_released() {
    retain_freed_host_memory();
    assert!(cache_host_allocations());
    empty_host_cache();
    assert_eq!(host_cache_bytes(), 0);
    let n = 1 << 20; // 4 MiB of f32
    let a = Tensor::ones([n], (Kind::Float, Device::Cpu));
    let ptr = a.data_ptr() as usize;
    drop(a);
    let cached = host_cache_bytes();
    assert!(
        cached >= 4 << 20,
        "a freed 4 MiB tensor should be cached, got {cached} bytes"
    );
    // Same size class: the same block comes back, with the new values written to it.
    let b = Tensor::arange(n, (Kind::Float, Device::Cpu));
    assert_eq!(
        b.data_ptr() as usize,
        ptr,
        "the cached block should be reused"
    );
    // (libtorch may free a few small temporaries meanwhile.)
    let now = host_cache_bytes();
    assert!(
        now <= cached - (4 << 20) + 4096,
        "the reused 4 MiB block should leave the cache: {cached} -> {now} bytes"
    );
    assert_eq!(b.double_value(&[12345]), 12345.0);
    // Data pointers keep c10's 64-byte alignment (vectorized kernels rely on it).
    for len in [1i64, 3, 17, 1000, 4099, 70_000] {
        let t = Tensor::zeros([len], (Kind::Double, Device::Cpu));
        assert_eq!(t.data_ptr() as usize % 64, 0, "{len} elements: misaligned");
        assert_eq!(t.sum(Kind::Double).double_value(&[]), 0.0);
    }
    drop(b);
    assert!(host_cache_bytes() > 0);
    empty_host_cache();
    assert_eq!(host_cache_bytes(), 0);
}

/// The process's address space (VmSize) in bytes.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kib << 10
}

/// Under a memory limit, a request that only fits once the free lists are released succeeds:
/// the allocator gives its cached blocks back and retries before reporting "can't allocate".
/// The limit (`ulimit -v`, the address space) applies to a child process running this test's
/// body: 1.6 GiB above the parent's current size; a cached 1 GiB block plus a fresh 1.25 GiB one
/// exceed it, the 1.25 GiB block alone does not.
#[test]
fn a_refused_allocation_releases_the_cache_and_retries() {
    const GIB: i64 = 1 << 30;
    if std::env::var_os("METALOOP_LIMITED_CHILD").is_some() {
        retain_freed_host_memory();
        assert!(cache_host_allocations());
        let cached = Tensor::zeros([GIB], (Kind::Int8, Device::Cpu));
        drop(cached);
        assert!(host_cache_bytes() >= GIB);
        let big = Tensor::ones([GIB + GIB / 4], (Kind::Int8, Device::Cpu));
        assert_eq!(big.int64_value(&[GIB]), 1);
        assert!(
            host_cache_bytes() < GIB,
            "the cached block should have been released"
        );
        return;
    }
    // Start the child from a process of about the same size (libtorch loaded, threads made).
    let _warm = Tensor::zeros([1024], (Kind::Float, Device::Cpu));
    let limit_kib = (vm_size() + (16 * GIB as u64) / 10) >> 10;
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {limit_kib} && exec \"$0\" --exact a_refused_allocation_releases_the_cache_and_retries --nocapture"
        ))
        .arg(&exe)
        .env("METALOOP_LIMITED_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the limited child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
