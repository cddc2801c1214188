//! The memory budget of a run (`run.memory_budget_gib`): how much the process may hold at its
//! peak, in the units engine::memory measures (the resident set on the CPU, the caching
//! allocator's bytes in tensors on CUDA).
//!
//! "auto" takes the smallest of what the system would still give this process:
//! - CUDA: the driver's free memory plus what the caching allocator holds unused
//!   (runtime::device_memory), plus what the process's tensors hold now;
//! - CPU: `MemAvailable` (/proc/meminfo) plus the process's resident set; the address-space
//!   limit (`ulimit -v`, RLIMIT_AS in /proc/self/limits) less the process's address space that
//!   is not resident (libraries, reserved stacks and heaps); the cgroup's memory limit less its
//!   usage, plus the process's resident set (cgroup v2 `memory.max` or v1
//!   `memory.limit_in_bytes`).
//!
//! The planner (engine::plan) keeps a margin below it. Nothing here prints; it reads only /proc
//! and /sys.

use std::path::{Path, PathBuf};

use tch::Device;

use crate::config::MemoryBudget;
use crate::memory;

/// Bytes in a GiB.
pub const GIB: f64 = (1u64 << 30) as f64;

/// A budget in bytes and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub bytes: u64,
    /// "run.memory_budget_gib", "CUDA free memory", "MemAvailable", "ulimit -v" or "cgroup
    /// memory limit".
    pub source: &'static str,
}

/// The budget `choice` names on `device`; `None` when planning is off (0), or "auto" finds no
/// figure (a device without counters, no /proc).
pub fn resolve(choice: MemoryBudget, device: Device) -> Option<Budget> {
    match choice {
        MemoryBudget::Gib(g) if g <= 0.0 => None,
        MemoryBudget::Gib(g) => Some(Budget {
            bytes: (g * GIB) as u64,
            source: "run.memory_budget_gib",
        }),
        MemoryBudget::Auto => match device {
            Device::Cpu => host(),
            Device::Cuda(_) => cuda(device),
            _ => None,
        },
    }
}

/// "auto" on a CUDA device.
fn cuda(device: Device) -> Option<Budget> {
    let free = metaloop_runtime::device_memory::available_bytes(device)?;
    let held = memory::current_bytes(device).unwrap_or(0);
    Some(Budget {
        bytes: free + held,
        source: "CUDA free memory",
    })
}

/// "auto" on the CPU: the smallest of the host's sources.
fn host() -> Option<Budget> {
    let rss = memory::status_kib("VmRSS:")? * 1024;
    let size = memory::status_kib("VmSize:").map_or(rss, |k| k * 1024);
    let mut sources = vec![];
    if let Some(avail) = memory::meminfo_kib("MemAvailable:") {
        sources.push((avail * 1024 + rss, "MemAvailable"));
    }
    if let Some(limit) = address_space_limit() {
        sources.push((limit.saturating_sub(size - size.min(rss)), "ulimit -v"));
    }
    if let Some((limit, usage)) = cgroup_limit() {
        sources.push((limit.saturating_sub(usage) + rss, "cgroup memory limit"));
    }
    sources
        .into_iter()
        .min_by_key(|(bytes, _)| *bytes)
        .map(|(bytes, source)| Budget { bytes, source })
}

/// The soft address-space limit (RLIMIT_AS) in bytes, `None` when unlimited.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line.trim_start_matches("Max address space")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory cgroup's limit and usage, bytes, when it has a limit.
fn cgroup_limit() -> Option<(u64, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path_of = |controller: &str| -> Option<String> {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            (names.split(',').any(|n| n == controller)).then(|| path.to_string())
        })
    };
    let v2 = path_of("").map(|p| Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/')));
    let v1 = path_of("memory")
        .map(|p| Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')));
    let candidates: [(Option<PathBuf>, &str, &str, &str); 2] = [
        (v2, "/sys/fs/cgroup", "memory.max", "memory.current"),
        (
            v1,
            "/sys/fs/cgroup/memory",
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
    ];
    for (dir, root, limit_file, usage_file) in candidates {
        for d in dir.into_iter().chain([PathBuf::from(root)]) {
            let read = |f: &str| -> Option<u64> {
                std::fs::read_to_string(d.join(f)).ok()?.trim().parse().ok()
            };
            // "max" (v2) does not parse; v1 writes a number near 2^63 for no limit.
            if let (Some(limit), Some(usage)) = (read(limit_file), read(usage_file)) {
                if limit < 1 << 60 {
                    return Some((limit, usage));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_the_budget_and_zero_is_off() {
        assert_eq!(resolve(MemoryBudget::Gib(0.0), Device::Cpu), None);
        let b = resolve(MemoryBudget::Gib(1.5), Device::Cpu).unwrap();
        assert_eq!(b.bytes, 3 << 29);
        assert_eq!(b.source, "run.memory_budget_gib");
    }

    #[test]
    fn auto_on_the_cpu_is_at_most_the_available_memory_and_above_the_resident_set() {
        let b = resolve(MemoryBudget::Auto, Device::Cpu).expect("/proc is readable on Linux");
        let rss = memory::current_bytes(Device::Cpu).unwrap();
        let avail = memory::meminfo_kib("MemAvailable:").unwrap() * 1024;
        assert!(b.bytes > rss / 2 && b.bytes <= avail + 2 * rss, "{b:?}");
        assert_eq!(resolve(MemoryBudget::Auto, Device::Cuda(0)), None);
    }
}
