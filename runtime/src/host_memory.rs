//! How the process's C allocator treats the memory libtorch frees on the CPU.
//!
//! libtorch allocates CPU tensors with the C allocator (glibc's `malloc` here). glibc serves every
//! block above its mmap threshold (at most 32 MiB, usually far less) with a fresh `mmap` and
//! returns it with `munmap` when freed, so every meta-iteration of a convolutional model would
//! map, page-fault in (zeroing each page) and unmap its activations again.
//! [`retain_freed_host_memory`] tells glibc to serve those blocks from its heap and keep freed
//! memory for the next iteration instead (the way PyTorch's CUDA caching allocator keeps device
//! memory). The cost is a higher resident peak: freed memory stays mapped.
//!
//! [`cache_host_allocations`] goes further: it makes a caching allocator (runtime/csrc/
//! host_allocator.cpp) libtorch's CPU allocator, which keeps freed tensor memory in free lists
//! per size class and hands it out again without calling malloc at all. It keeps, per size
//! class, as many blocks as were ever in use at once, so a process whose tensor shapes change
//! between phases can hold both phases' peaks; [`host_cache_bytes`] and [`empty_host_cache`]
//! report and release what it holds. When the system refuses a new block (a memory limit), the
//! allocator releases its free lists and tries once more before libtorch's "can't allocate
//! memory" error. What each setting saves is measured in benches/README.md.
//!
//! This is the only place that changes process-wide allocator settings; the launcher calls it
//! once at start-up (see its `METALOOP_HOST_MEMORY` switch). Its foreign calls live in
//! runtime::kernels (the one module with unsafe code); it never prints.

use crate::kernels::host_ffi;

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
pub fn retain_freed_host_memory() -> HostMemory {
    if host_ffi::retain_freed_blocks() {
        HostMemory::Retained
    } else {
        HostMemory::Unchanged
    }
}

/// Makes the caching allocator libtorch's CPU allocator for every tensor allocated from now on
/// (tensors allocated before keep their own deleter). Call it once, early, from the binary.
pub fn cache_host_allocations() -> bool {
    host_ffi::install_caching_allocator()
}

/// Bytes the caching allocator holds in its free lists (0 when it is not installed).
pub fn host_cache_bytes() -> i64 {
    host_ffi::cache_bytes()
}

/// Returns every block the caching allocator holds free to the system.
pub fn empty_host_cache() {
    host_ffi::empty_cache()
}

/// Returns every block the caching allocator holds free, and then the free memory of glibc's
/// heaps, to the system, so that the resident set is what live tensors and data use (e.g.
/// before measuring what a phase adds to it). The next allocations fault their pages in again.
pub fn release_free_host_memory() {
    host_ffi::empty_cache();
    host_ffi::trim_heap();
}
