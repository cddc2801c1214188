// Shared by the build scripts of every crate that links a binary, a test or an example against
// libtorch (`include!`d, not a crate, because build scripts cannot share a dependency cheaply).
//
// - An rpath to libtorch's lib dir, so binaries and tests run without LD_LIBRARY_PATH.
// - libtorch_cuda kept with `--no-as-needed`: nothing references it, so the default linker would
//   drop it, and `tch::Cuda::is_available()` would then read false on a GPU machine.

/// Emits the link arguments for this package's own binaries, tests, examples and benches.
fn link_libtorch(lib_dir: &str) {
    // The real directory in the per-user cache, not the clone's `.libtorch` link, so that a
    // binary keeps working when copied out of the clone or when the clone is deleted.
    let dir = std::fs::canonicalize(lib_dir).unwrap_or_else(|_| lib_dir.into());
    let lib_dir = dir.display().to_string();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={lib_dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Reads the libtorch lib dir that a dependency's build script exported under `var`.
fn libtorch_lib_from(var: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: the libtorch lib dir comes from torch-sys; run `cargo xtask setup`")
    })
}
