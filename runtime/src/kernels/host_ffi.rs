//! The foreign calls behind runtime::host_memory: glibc's `mallopt` and the caching CPU allocator
//! of runtime/csrc/host_allocator.cpp, each wrapped in a safe function.
//!
//! It only forwards; what the settings mean and when to call them is runtime::host_memory's
//! business. It never prints.

/// Sets glibc's allocator to serve every block from its heap and keep freed memory; false when
/// this is not glibc or glibc refused a setting.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn retain_freed_blocks() -> bool {
    // SAFETY: mallopt only sets allocator parameters; it is documented as safe to call at any
    // time, and these values are within glibc's accepted ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
    }
}

/// Not glibc: nothing to change.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn retain_freed_blocks() -> bool {
    false
}

/// Returns the free memory at the top and in the middle of glibc's heaps to the system
/// (`malloc_trim(0)`); false when nothing was returned or this is not glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn trim_heap() -> bool {
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps, under its locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Not glibc: nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim_heap() -> bool {
    false
}

extern "C" {
    fn metaloop_install_caching_host_allocator() -> i32;
    fn metaloop_host_cache_bytes() -> i64;
    fn metaloop_host_cache_empty();
}

/// Registers the caching allocator as libtorch's CPU allocator.
pub(crate) fn install_caching_allocator() -> bool {
    // SAFETY: the shim's function takes no arguments and only registers a static allocator
    // object with c10, which is thread-safe.
    unsafe { metaloop_install_caching_host_allocator() == 1 }
}

/// Bytes in the caching allocator's free lists.
pub(crate) fn cache_bytes() -> i64 {
    // SAFETY: reads a counter under the allocator's mutex.
    unsafe { metaloop_host_cache_bytes() }
}

/// Frees every block in the caching allocator's free lists.
pub(crate) fn empty_cache() {
    // SAFETY: frees only blocks no tensor uses (they are in the free lists), under its mutex.
    unsafe { metaloop_host_cache_empty() }
}
