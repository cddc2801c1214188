//! How the process's C allocator treats the memory libtorch frees on the CPU.
//!
//! libtorch allocates CPU tensors with the C allocator (glibc's `malloc` here). glibc serves every
//! block above its mmap threshold (at most 32 MiB, usually far less) with a fresh `mmap` and
//! returns it with `munmap` when freed, so every meta-iteration of a convolutional model maps,
//! page-faults in (zeroing each page) and unmaps its activations again: measured with `perf` on
//! the omniglot benchmark workload, 29% of the time was the kernel's page-fault and unmap paths.
//! [`retain_freed_host_memory`] tells glibc to serve those blocks from its heap and keep freed
//! memory for the next iteration instead (the way PyTorch's CUDA caching allocator keeps device
//! memory). The cost is a higher resident peak: freed memory stays mapped.
//!
//! [`cache_host_allocations`] goes further: it makes a caching allocator (runtime/csrc/
//! host_allocator.cpp) libtorch's CPU allocator, which keeps freed tensor memory in free lists
//! per size class and hands it out again without calling malloc at all (malloc's bookkeeping
//! was 8% of the sinusoid benchmark's time). It keeps, per size class, as many blocks as were
//! ever in use at once, so a process whose tensor shapes change between phases can hold both
//! phases' peaks; [`host_cache_bytes`] and [`empty_host_cache`] report and release what it holds.
//!
//! This is the only place that changes process-wide allocator settings; the launcher calls it
//! once at start-up (see its `METALOOP_HOST_MEMORY` switch). It never prints.

/// What [`retain_freed_host_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMemory {
    /// glibc now keeps freed blocks of every size for reuse.
    Retained,
    /// Not glibc (or glibc refused a setting): the allocator's defaults are unchanged.
    Unchanged,
}

/// Makes glibc serve large blocks from its heap (no `mmap` per block) and never trim freed heap
/// memory below 2 GiB, so that libtorch's per-iteration activations reuse pages already mapped.
/// Call it once, before the first tensor is allocated, from the binary (it is process-wide).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn retain_freed_host_memory() -> HostMemory {
    // SAFETY: mallopt only sets allocator parameters; it is documented as safe to call at any
    // time, and these values are within glibc's accepted ranges.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
    };
    if ok {
        HostMemory::Retained
    } else {
        HostMemory::Unchanged
    }
}

/// Not glibc: nothing to change.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn retain_freed_host_memory() -> HostMemory {
    HostMemory::Unchanged
}

extern "C" {
    fn metaloop_install_caching_host_allocator() -> i32;
    fn metaloop_host_cache_bytes() -> i64;
    fn metaloop_host_cache_empty();
}

/// Makes the caching allocator libtorch's CPU allocator for every tensor allocated from now on
/// (tensors allocated before keep their own deleter). Call it once, early, from the binary.
pub fn cache_host_allocations() -> bool {
    // SAFETY: the shim's function takes no arguments and only registers a static allocator
    // object with c10, which is thread-safe.
    unsafe { metaloop_install_caching_host_allocator() == 1 }
}

/// Bytes the caching allocator holds in its free lists (0 when it is not installed).
pub fn host_cache_bytes() -> i64 {
    // SAFETY: reads a counter under the allocator's mutex.
    unsafe { metaloop_host_cache_bytes() }
}

/// Returns every block the caching allocator holds free to the system.
pub fn empty_host_cache() {
    // SAFETY: frees only blocks no tensor uses (they are in the free lists), under its mutex.
    unsafe { metaloop_host_cache_empty() }
}
