//! The foreign calls behind runtime::device_memory and runtime::precision: the C functions of
//! runtime/csrc/device_settings.cpp, each wrapped in a safe function.
//!
//! It only forwards; what the numbers and switches mean is the business of those two modules.
//! It never prints.

use std::os::raw::c_char;

/// The CUDA caching allocator's byte counters of one device (`MetaloopDeviceMemoryStats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DeviceMemoryStats {
    pub allocated: i64,
    pub peak_allocated: i64,
    pub reserved: i64,
    pub peak_reserved: i64,
}

extern "C" {
    fn metaloop_cuda_memory_stats(
        device: i32,
        out: *mut DeviceMemoryStats,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn metaloop_cuda_memory_reset_peak(device: i32, err: *mut c_char, err_len: usize) -> i32;
    fn metaloop_cuda_memory_info(
        device: i32,
        free_bytes: *mut i64,
        total_bytes: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn metaloop_set_tf32(
        cudnn: i32,
        cublas: i32,
        onednn: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

const ERR_LEN: usize = 512;

/// The message the shim wrote into `buf`.
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `Ok(Some(stats))`, `Ok(None)` when the CUDA allocator is absent or not initialised, or
/// libtorch's error.
pub(crate) fn cuda_memory_stats(device: i32) -> Result<Option<DeviceMemoryStats>, String> {
    let mut out = DeviceMemoryStats::default();
    let mut err = [0u8; ERR_LEN];
    // SAFETY: `out` and `err` are valid for writes of their sizes for the whole call; the shim
    // catches every C++ exception and writes at most err_len bytes (NUL included).
    let code =
        unsafe { metaloop_cuda_memory_stats(device, &mut out, err.as_mut_ptr().cast(), ERR_LEN) };
    match code {
        1 => Ok(Some(out)),
        0 => Ok(None),
        _ => Err(message(&err)),
    }
}

/// `Ok(true)` when the peaks were reset, `Ok(false)` when unavailable, or libtorch's error.
pub(crate) fn cuda_memory_reset_peak(device: i32) -> Result<bool, String> {
    let mut err = [0u8; ERR_LEN];
    // SAFETY: as above; the shim only calls the allocator's resetPeakStats under its own lock.
    let code = unsafe { metaloop_cuda_memory_reset_peak(device, err.as_mut_ptr().cast(), ERR_LEN) };
    match code {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(message(&err)),
    }
}

/// `Ok(Some((free, total)))` bytes of the device as the driver reports them, `Ok(None)` when
/// the CUDA allocator is absent or not initialised, or libtorch's error.
pub(crate) fn cuda_memory_info(device: i32) -> Result<Option<(i64, i64)>, String> {
    let (mut free, mut total) = (0i64, 0i64);
    let mut err = [0u8; ERR_LEN];
    // SAFETY: `free`, `total` and `err` are valid for writes for the whole call; the shim
    // catches every C++ exception and writes at most err_len bytes (NUL included).
    let code = unsafe {
        metaloop_cuda_memory_info(
            device,
            &mut free,
            &mut total,
            err.as_mut_ptr().cast(),
            ERR_LEN,
        )
    };
    match code {
        1 => Ok(Some((free, total))),
        0 => Ok(None),
        _ => Err(message(&err)),
    }
}

/// Sets libtorch's TF32 switches (`None`: leave it) and returns them as they are afterwards:
/// (cuDNN, cuBLAS, oneDNN).
pub(crate) fn set_tf32(
    cudnn: Option<bool>,
    cublas: Option<bool>,
    onednn: Option<bool>,
) -> Result<(bool, bool, bool), String> {
    let arg = |v: Option<bool>| v.map_or(-1, i32::from);
    let mut err = [0u8; ERR_LEN];
    // SAFETY: `err` is valid for ERR_LEN bytes; the shim sets process-wide flags of
    // at::globalContext() (plain stores) and catches every C++ exception.
    let bits = unsafe {
        metaloop_set_tf32(
            arg(cudnn),
            arg(cublas),
            arg(onednn),
            err.as_mut_ptr().cast(),
            ERR_LEN,
        )
    };
    if bits < 0 {
        return Err(message(&err));
    }
    Ok((bits & 1 != 0, bits & 2 != 0, bits & 4 != 0))
}
