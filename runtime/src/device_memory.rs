//! Device memory as libtorch's CUDA caching allocator counts it: the bytes in tensors now, the
//! most at once since the last reset (the peak), and the bytes the allocator holds from the
//! driver. These are the numbers behind PyTorch's `torch.cuda.memory_allocated`,
//! `max_memory_allocated`, `memory_reserved`, `max_memory_reserved` and `reset_peak_memory_stats`,
//! so a figure here compares with a peer's figure there.
//!
//! How to use it (e.g. to measure one phase, or to plan memory):
//! 1. [`reset_peak`] before the phase (the peak becomes the current allocation);
//! 2. run the phase, then synchronise the device if the phase ends in queued kernels (the counters
//!    move when libtorch allocates and frees, on the host, not when kernels run);
//! 3. [`peak_bytes`] (or [`stats`] for every counter) after it.
//!
//! What the counters mean:
//! - They count the caching allocator's blocks, rounded up to its block sizes (512 bytes and
//!   up), per device and for the whole process (every thread and stream).
//! - Memory outside the allocator is not counted: the CUDA context, cuDNN/cuBLAS workspaces
//!   that libraries allocate themselves, NCCL's buffers and NVRTC modules.
//! - "Peak" is since the process started or since the last [`reset_peak`] of that device, by
//!   anyone in the process: two callers resetting the same device disturb each other.
//!
//! Where it answers `None`: the CPU (see `engine::bench::peak_rss_mib` for the host's resident
//! peak), a CUDA device index this process does not see, a libtorch without CUDA, or a process in
//! which CUDA was never initialised (nothing was allocated on the device yet; no counter to read).
//! It never initialises CUDA itself.
//!
//! The C side is runtime/csrc/device_settings.cpp, through c10's device-generic allocator
//! interface, so it builds without CUDA headers; its foreign calls live in runtime::kernels. This
//! module never prints.

use crate::kernels::device_ffi;
use crate::{Error, Result};
use tch::Device;

/// One device's counters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes in live tensors now.
    pub allocated: u64,
    /// The most bytes in live tensors at once since the last [`reset_peak`].
    pub peak_allocated: u64,
    /// Bytes the allocator holds from the driver now (live tensors and its cache).
    pub reserved: u64,
    /// The most bytes held from the driver at once since the last [`reset_peak`].
    pub peak_reserved: u64,
}

/// The CUDA device index of `device`, when it is a CUDA device this process sees.
fn cuda_index(device: Device) -> Option<i32> {
    match device {
        Device::Cuda(i) if (i as i64) < tch::Cuda::device_count() => i32::try_from(i).ok(),
        _ => None,
    }
}

/// Every counter of `device`; `Ok(None)` where none exists (see the module documentation).
pub fn stats(device: Device) -> Result<Option<DeviceMemory>> {
    let Some(index) = cuda_index(device) else {
        return Ok(None);
    };
    let raw = device_ffi::cuda_memory_stats(index).map_err(Error::Device)?;
    let bytes = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(raw.map(|s| DeviceMemory {
        allocated: bytes(s.allocated),
        peak_allocated: bytes(s.peak_allocated),
        reserved: bytes(s.reserved),
        peak_reserved: bytes(s.peak_reserved),
    }))
}

/// The most bytes in live tensors on `device` at once since the last [`reset_peak`]
/// (PyTorch's `torch.cuda.max_memory_allocated`); `None` where there is no counter.
pub fn peak_bytes(device: Device) -> Option<u64> {
    stats(device).ok().flatten().map(|s| s.peak_allocated)
}

/// [`peak_bytes`] in MiB.
pub fn peak_mib(device: Device) -> Option<f64> {
    peak_bytes(device).map(|b| b as f64 / (1u64 << 20) as f64)
}

/// The bytes a new allocation on `device` could still get: the driver's free memory
/// (PyTorch's `torch.cuda.mem_get_info()[0]`) plus what the caching allocator holds but no tensor
/// uses. `None` where there is no counter (see the module documentation).
pub fn available_bytes(device: Device) -> Option<u64> {
    let index = cuda_index(device)?;
    let (free, _total) = device_ffi::cuda_memory_info(index).ok().flatten()?;
    let held = stats(device)
        .ok()
        .flatten()
        .map_or(0, |s| s.reserved.saturating_sub(s.allocated));
    Some(u64::try_from(free).unwrap_or(0) + held)
}

/// The bytes in live tensors on `device` now (`torch.cuda.memory_allocated`).
pub fn allocated_bytes(device: Device) -> Option<u64> {
    stats(device).ok().flatten().map(|s| s.allocated)
}

/// Sets `device`'s peaks to its current values (PyTorch's `torch.cuda.reset_peak_memory_stats`).
/// Returns false where there is no counter (nothing to reset).
pub fn reset_peak(device: Device) -> bool {
    cuda_index(device).is_some_and(|i| device_ffi::cuda_memory_reset_peak(i).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim itself (the public functions never call it without a CUDA device): libtorch's
    /// CUDA allocator is registered (the CUDA wheel) but not initialised, so it answers
    /// "unavailable" rather than touching it.
    #[test]
    fn the_shim_answers_unavailable_where_cuda_is_not_initialised() {
        if tch::Cuda::device_count() > 0 {
            return;
        }
        assert_eq!(device_ffi::cuda_memory_stats(0), Ok(None));
        assert_eq!(device_ffi::cuda_memory_reset_peak(0), Ok(false));
    }
}
