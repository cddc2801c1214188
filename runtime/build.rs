//! Puts libtorch on the rpath of runtime's own tests, passes libtorch's lib dir on to the crates
//! that depend on runtime (as DEP_METALOOP_RUNTIME_LIBTORCH_LIB), and compiles the C++ shim of the
//! fused optimizer steps (runtime/csrc/fused_step.cpp) and the caching CPU allocator
//! (runtime/csrc/host_allocator.cpp) against libtorch's headers.
include!("link_libtorch.rs");

use std::path::{Path, PathBuf};

fn main() {
    let lib = libtorch_lib_from("DEP_TCH_LIBTORCH_LIB");
    link_libtorch(&lib);
    println!("cargo:libtorch_lib={lib}");
    compile_shim(Path::new(&lib));
    compile_host_allocator(Path::new(&lib));
}

/// Compiles the caching CPU allocator (runtime/csrc/host_allocator.cpp, runtime::host_memory),
/// BatchNorm's autograd function (runtime/csrc/batch_norm.cpp, runtime::kernels::batch_norm) and
/// the device statistics and precision switches (runtime/csrc/device_settings.cpp,
/// runtime::device_memory and runtime::precision; c10's device-generic allocator interface, so
/// no CUDA header) against libtorch's headers.
fn compile_host_allocator(libtorch_lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/host_allocator.cpp");
    println!("cargo:rerun-if-changed=csrc/batch_norm.cpp");
    println!("cargo:rerun-if-changed=csrc/device_settings.cpp");
    let include = libtorch_lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/host_allocator.cpp")
        .file("csrc/batch_norm.cpp")
        .file("csrc/device_settings.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("metaloop_host_allocator");
}

/// The directory holding `cuda_runtime_api.h`: the CUDA runtime of PyTorch's wheel
/// (`site-packages/nvidia/cu13/include` or `cu12`) or `$CUDA_HOME/include`.
fn cuda_include(libtorch_lib: &Path) -> Option<PathBuf> {
    let site = libtorch_lib.join("../..");
    let mut candidates = vec![
        site.join("nvidia/cu13/include"),
        site.join("nvidia/cuda_runtime/include"),
    ];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            candidates.push(PathBuf::from(home).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates
        .into_iter()
        // The wheel's nvidia/cu13/include lacks crt/host_defines.h, which cuda_runtime_api.h needs.
        .find(|d| d.join("cuda_runtime_api.h").exists() && d.join("crt/host_defines.h").exists())
}

/// Compiles the shim with the `cc` crate: C++17, the C++11 ABI of PyTorch's wheel. With
/// libtorch's CUDA headers and a CUDA runtime header at hand it asks libtorch for its current
/// CUDA stream (METALOOP_CUDA_STREAM, linking c10_cuda); otherwise kernels go to the legacy
/// default stream.
fn compile_shim(libtorch_lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/fused_step.cpp");
    println!("cargo:rerun-if-changed=csrc/message.h");
    println!("cargo:rerun-if-changed=csrc/step_params.h");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    let include = libtorch_lib.join("../include");
    let base = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("csrc/fused_step.cpp")
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            // at::parallel_for is inline: without OpenMP it runs the whole range on the calling
            // thread. With it, the shim's parallel regions go to libtorch's own libgomp (the
            // soname libtorch_cpu needs, found beside it; see `finish`), one OpenMP runtime.
            .flag("-fopenmp")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .warnings(false);
        build
    };
    let has_c10_cuda = libtorch_lib.join("libc10_cuda.so").exists()
        && include.join("c10/cuda/CUDAStream.h").exists();
    if has_c10_cuda {
        if let Some(cuda) = cuda_include(libtorch_lib) {
            let mut build = base();
            build.include(cuda).define("METALOOP_CUDA_STREAM", None);
            if build.try_compile("metaloop_fused_step").is_ok() {
                println!("cargo:rustc-link-lib=c10_cuda");
                return finish(libtorch_lib);
            }
            println!("cargo:warning=fused_step.cpp did not compile with the CUDA headers; CUDA kernels will use the legacy default stream");
        }
    }
    base().compile("metaloop_fused_step");
    finish(libtorch_lib);
}

fn finish(libtorch_lib: &Path) {
    // The OpenMP runtime of the shim's parallel regions: libgomp.so.1, which libtorch_cpu also
    // needs (PyTorch's wheel ships it beside libtorch; the rpath finds it there first).
    println!("cargo:rustc-link-search=native={}", libtorch_lib.display());
    println!("cargo:rustc-link-lib=dylib=gomp");
    // Where PyTorch's wheel keeps libnvrtc (runtime::kernels::cuda loads it from there when the
    // loader's search path lacks it).
    let nvrtc_dir = libtorch_lib.join("../../nvidia/cu13/lib");
    let nvrtc_dir = std::fs::canonicalize(&nvrtc_dir).unwrap_or(nvrtc_dir);
    println!(
        "cargo:rustc-env=METALOOP_WHEEL_CUDA_LIB={}",
        nvrtc_dir.display()
    );
}
