//! The caching CPU allocator (runtime::host_memory): freed tensor memory goes to its
//! free lists, is handed out again for the same size class, and is released on request; tensors
//! from it hold the values written to them. Its own test binary: the allocator is process-wide.

use metaloop::runtime::host_memory::{
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
