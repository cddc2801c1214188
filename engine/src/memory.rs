//! Peak memory: the most this process held since the last reading. On the CPU it is the resident
//! set's high-water mark (`VmHWM` in `/proc/self/status`), which writing "5" to
//! `/proc/self/clear_refs` resets to the current resident size (Linux). On CUDA it is the caching
//! allocator's peak of memory in tensors (`runtime::device_memory`), reset after each reading.
//!
//! Every reading also raises the run's peak ([`run_peak_mib`]), which is never reset. The
//! high-water mark belongs to the process: threads that read it share it. Nothing here prints.

use std::sync::atomic::{AtomicU64, Ordering};

use metaloop_runtime::device_memory;
use tch::Device;

/// The largest high-water mark any reading saw, KiB.
static RUN_PEAK_KIB: AtomicU64 = AtomicU64::new(0);

/// The peak since the last call (or since the process started), MiB, and starts a new one.
/// `None` where it is not measured: without `/proc`, or a libtorch without CUDA counters.
pub fn take_peak_mib(device: Device) -> Option<f64> {
    match device {
        Device::Cpu => {
            let kib = high_water_kib()?;
            RUN_PEAK_KIB.fetch_max(kib, Ordering::Relaxed);
            reset_high_water();
            Some(mib(kib))
        }
        Device::Cuda(_) => {
            let kib = device_peak_kib(device)?;
            RUN_PEAK_KIB.fetch_max(kib, Ordering::Relaxed);
            device_memory::reset_peak(device);
            Some(mib(kib))
        }
        _ => None,
    }
}

/// The largest peak of this process so far, MiB: the largest reading of [`take_peak_mib`] and
/// the peak since the last one. It resets nothing.
pub fn run_peak_mib(device: Device) -> Option<f64> {
    match device {
        Device::Cpu => {
            let kib = high_water_kib()?.max(RUN_PEAK_KIB.load(Ordering::Relaxed));
            Some(mib(kib))
        }
        Device::Cuda(_) => {
            let kib = device_peak_kib(device)?.max(RUN_PEAK_KIB.load(Ordering::Relaxed));
            Some(mib(kib))
        }
        _ => None,
    }
}

/// The memory this process holds now, bytes: the resident set on the CPU (`VmRSS`), the bytes in
/// tensors on CUDA. `None` where not measured.
pub fn current_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => status_kib("VmRSS:").map(|k| k * 1024),
        Device::Cuda(_) => device_memory::allocated_bytes(device),
        _ => None,
    }
}

/// Runs `f` and returns its result with the most memory held during it above what was held
/// when it started, bytes (`None` where not measured). It takes a peak reading before and
/// after ([`take_peak_mib`]), so the run's peak keeps both.
pub fn measure<R>(device: Device, f: impl FnOnce() -> R) -> (R, Option<u64>) {
    take_peak_mib(device);
    let start = current_bytes(device);
    let r = f();
    let peak = take_peak_mib(device).map(|m| (m * 1048576.0) as u64);
    let added = start.zip(peak).map(|(s, p)| p.saturating_sub(s));
    (r, added)
}

/// The resident set's high-water mark since the process started or its last reset, KiB.
pub fn high_water_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// A field of `/proc/self/status` in KiB (`VmHWM:`, `VmRSS:`, `VmSize:`).
pub fn status_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/self/status", field)
}

/// A field of `/proc/meminfo` in KiB (`MemAvailable:`).
pub fn meminfo_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/meminfo", field)
}

/// The number after `field` in a /proc file of `Field: value kB` lines.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the high-water mark to the current resident size. A kernel that refuses leaves the
/// mark as it is: later readings are then peaks since the process started.
fn reset_high_water() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The caching allocator's peak of memory in tensors on a CUDA `device` since its last reset,
/// KiB.
fn device_peak_kib(device: Device) -> Option<u64> {
    device_memory::peak_bytes(device).map(|b| b / 1024)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reset works on this kernel: after a large block is touched and freed, the next
    /// reading is far below the one that saw it, and the run's peak keeps it.
    #[test]
    fn peaks_reset_between_readings() {
        take_peak_mib(Device::Cpu).expect("VmHWM is readable on Linux");
        let block = vec![1u8; 256 << 20];
        assert_eq!(
            block.iter().step_by(4096).map(|b| *b as u64).sum::<u64>(),
            65536
        );
        drop(block);
        let with_block = take_peak_mib(Device::Cpu).unwrap();
        let after = take_peak_mib(Device::Cpu).unwrap();
        assert!(
            after + 200.0 < with_block,
            "the high-water mark did not reset: {with_block} MiB, then {after} MiB"
        );
        assert!(run_peak_mib(Device::Cpu).unwrap() >= with_block);
        assert_eq!(take_peak_mib(Device::Cuda(0)), None);
    }
}
