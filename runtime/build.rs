//! Puts libtorch on the rpath of runtime's own tests, and passes libtorch's lib dir on to the
//! crates that depend on runtime (as DEP_METALOOP_RUNTIME_LIBTORCH_LIB).
include!("link_libtorch.rs");

fn main() {
    let lib = libtorch_lib_from("DEP_TCH_LIBTORCH_LIB");
    link_libtorch(&lib);
    println!("cargo:libtorch_lib={lib}");
}
