//! The CUDA kernels of the fused optimizer steps: CUDA C (`cuda.cu`, the same per-element
//! arithmetic as `cpu`, behind runtime/csrc/step_params.h, the C declaration of a step's constants)
//! compiled with NVRTC at run time through cudarc (dynamic loading, so this
//! builds and loads on machines without CUDA), the module loaded once per device and cached, each
//! step launched on the stream the shim passes (libtorch's current stream when the shim has the
//! CUDA headers) in libtorch's primary context.
//!
//! It never allocates device memory and never synchronizes; without the `cuda-kernels` feature,
//! or without NVRTC or the driver, it reports "not available" instead of failing the build.

use super::ffi::KernelCall;
use super::StepKernel;

/// The CUDA C source: the step constants' C declaration, then the kernels.
pub(crate) const SOURCE: &str = concat!(
    include_str!("../../csrc/step_params.h"),
    include_str!("cuda.cu")
);

/// The kernel's exported name for (op, pass, dtype).
#[allow(dead_code)]
fn kernel_name(kernel: StepKernel, backward: bool, dtype: i32) -> String {
    let op = match kernel {
        StepKernel::Sgd => "sgd",
        StepKernel::Adam => "adam",
        StepKernel::Adamax => "adamax",
        StepKernel::Adagrad => "adagrad",
        StepKernel::RMSprop => "rmsprop",
        StepKernel::Adadelta => "adadelta",
        StepKernel::Rprop => "rprop",
    };
    let pass = if backward { "backward" } else { "forward" };
    let ty = if dtype == 0 { "f32" } else { "f64" };
    format!("metaloop_{op}_{pass}_{ty}")
}

#[cfg(feature = "cuda-kernels")]
mod imp {
    use crate::kernels::cuda::{kernel_name, SOURCE};
    use crate::kernels::ffi::{self, KernelCall, StepParams, MAX_IN, MAX_OUT};
    use crate::kernels::step::StepKernel;
    use cudarc::driver::{result, sys};
    use cudarc::nvrtc;
    use std::collections::HashMap;
    use std::ffi::{c_void, CString};
    use std::sync::{Mutex, OnceLock};

    /// The kernel arguments, passed by value; mirrors `struct Args` in cuda.cu.
    #[repr(C)]
    struct Args {
        input: [*const c_void; MAX_IN],
        mode: [i64; MAX_IN],
        grad_out: [*const c_void; MAX_OUT],
        out: [*mut c_void; MAX_IN],
        params: StepParams,
        numel: i64,
        row_len: i64,
        hp0: i64,
    }

    /// One device's loaded module: its primary context and its functions by name.
    struct DeviceModule {
        context: sys::CUcontext,
        functions: HashMap<String, sys::CUfunction>,
    }
    // SAFETY: CUDA driver handles may be used from any thread (the context is made current on the
    // calling thread before each launch).
    unsafe impl Send for DeviceModule {}

    fn modules() -> &'static Mutex<HashMap<i32, DeviceModule>> {
        static MODULES: OnceLock<Mutex<HashMap<i32, DeviceModule>>> = OnceLock::new();
        MODULES.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Makes libnvrtc loadable when the loader's search path lacks it: PyTorch's wheel keeps it
    /// beside libtorch (nvidia/cu13/lib), where cudarc's loader does not look.
    fn preload_nvrtc() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            // The builtins first: libnvrtc opens them by soname when it compiles.
            for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
                let path = std::path::Path::new(env!("METALOOP_WHEEL_CUDA_LIB")).join(name);
                if path.exists() {
                    if let Ok(c) = CString::new(path.display().to_string()) {
                        // SAFETY: a NUL-terminated path; dlopen either loads it or fails.
                        unsafe { ffi::metaloop_preload_library(c.as_ptr()) };
                    }
                }
            }
        });
    }

    fn nvrtc_present() -> bool {
        preload_nvrtc();
        // SAFETY: only tries to dlopen the library.
        unsafe { nvrtc::sys::is_culib_present() }
    }

    pub(crate) fn available() -> bool {
        // SAFETY: only tries to dlopen the library.
        nvrtc_present() && unsafe { sys::is_culib_present() }
    }

    fn compile() -> Result<nvrtc::Ptx, String> {
        if !nvrtc_present() {
            return Err("NVRTC (libnvrtc.so) cannot be loaded".to_string());
        }
        nvrtc::compile_ptx_with_opts(
            SOURCE,
            nvrtc::CompileOptions {
                name: Some("metaloop_fused_optim.cu".to_string()),
                ..Default::default()
            },
        )
        .map_err(|e| format!("NVRTC: {e:?}"))
    }

    pub(crate) fn compile_check() -> Result<usize, String> {
        Ok(compile()?.to_src().len())
    }

    fn load(device: i32) -> Result<DeviceModule, String> {
        if !available() {
            return Err("the CUDA driver or NVRTC cannot be loaded".to_string());
        }
        let ptx = compile()?;
        let src = CString::new(ptx.to_src()).map_err(|e| e.to_string())?;
        let err = |e: cudarc::driver::DriverError| format!("CUDA driver: {e:?}");
        // SAFETY: driver calls on valid handles; the PTX is NUL-terminated.
        unsafe {
            result::init().map_err(err)?;
            let dev = result::device::get(device).map_err(err)?;
            let context = result::primary_ctx::retain(dev).map_err(err)?;
            result::ctx::set_current(context).map_err(err)?;
            let module = result::module::load_data(src.as_ptr().cast()).map_err(err)?;
            let mut functions = HashMap::new();
            for kernel in StepKernel::ALL {
                for backward in [false, true] {
                    for dtype in [0, 1] {
                        let name = kernel_name(kernel, backward, dtype);
                        let c = CString::new(name.clone()).map_err(|e| e.to_string())?;
                        let f = result::module::get_function(module, c).map_err(err)?;
                        functions.insert(name, f);
                    }
                }
            }
            Ok(DeviceModule { context, functions })
        }
    }

    /// Launches one call.
    ///
    /// # Safety
    /// `call` must come from the shim, with device pointers of `call.device`.
    pub(crate) unsafe fn run(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
        if call.out_reduced.iter().any(|r| *r != 0) {
            return Err("partial-sum outputs are CPU only".to_string());
        }
        let name = kernel_name(kernel, call.pass == 1, call.dtype);
        let (context, function) = {
            let mut cache = modules()
                .lock()
                .map_err(|_| "kernel cache poisoned".to_string())?;
            let m = match cache.entry(call.device) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(load(call.device)?),
            };
            let f = *m
                .functions
                .get(&name)
                .ok_or_else(|| format!("no CUDA kernel {name}"))?;
            (m.context, f)
        };
        let mut args = Args {
            input: call.input,
            mode: call.in_mode,
            grad_out: call.grad_out,
            out: call.out,
            params: call.params,
            numel: call.numel,
            row_len: call.row_len,
            hp0: kernel.hparam_slot() as i64,
        };
        let threads: u32 = 256;
        let blocks = (call.numel as u64)
            .div_ceil(threads as u64)
            .clamp(1, 1 << 16) as u32;
        let mut params = [(&mut args as *mut Args).cast::<c_void>()];
        let err = |e: cudarc::driver::DriverError| format!("CUDA driver: {e:?}");
        // SAFETY: the function comes from the loaded module; `args` outlives the launch call
        // (the driver copies kernel parameters at launch).
        unsafe {
            result::ctx::set_current(context).map_err(err)?;
            result::launch_kernel(
                function,
                (blocks, 1, 1),
                (threads, 1, 1),
                0,
                call.stream as sys::CUstream,
                &mut params,
            )
            .map_err(err)
        }
    }
}

#[cfg(not(feature = "cuda-kernels"))]
mod imp {
    use crate::kernels::ffi::KernelCall;
    use crate::kernels::step::StepKernel;

    const MISSING: &str = "metaloop-runtime was built without the `cuda-kernels` feature";

    pub(crate) fn available() -> bool {
        false
    }
    pub(crate) fn compile_check() -> Result<usize, String> {
        Err(MISSING.to_string())
    }
    pub(crate) unsafe fn run(_: StepKernel, _: &KernelCall) -> Result<(), String> {
        Err(MISSING.to_string())
    }
}

pub(crate) use imp::{available, compile_check};

/// Launches one call on its CUDA device.
///
/// # Safety
/// `call` must come from the shim, with device pointers of `call.device`.
pub(crate) unsafe fn run(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    unsafe { imp::run(kernel, call) }
}
