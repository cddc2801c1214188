//! Lets the extension find libtorch inside the installed `torch` package at import: the wheel
//! puts `_native.so` in `site-packages/metaloop/`, beside `site-packages/torch/lib/`.
//! (`metaloop/__init__.py` imports torch first, so its libraries are usually loaded already.)

fn main() {
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
}
