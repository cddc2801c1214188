//! Puts libtorch on the rpath of the fuzz targets (see runtime/link_libtorch.rs).
include!("../runtime/link_libtorch.rs");

fn main() {
    link_libtorch(&libtorch_lib_from("DEP_METALOOP_RUNTIME_LIBTORCH_LIB"));
}
