//! Puts libtorch on the rpath of this crate's binaries and tests (see runtime/link_libtorch.rs).
include!("../runtime/link_libtorch.rs");

fn main() {
    link_libtorch(&libtorch_lib_from("DEP_METALOOP_RUNTIME_LIBTORCH_LIB"));
}
