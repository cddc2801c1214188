//! miniImageNet's loader with arbitrary `train.csv` bytes, beside real `images/a.png` ..
//! `images/d.png` and valid `val.csv` / `test.csv`: it must load or return an error, never panic.
//! Inputs with a `/` are skipped: a row may name any path (the loader joins it to `images/`),
//! and the fuzzer must not read the machine's files.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metaloop_engine::data::miniimagenet::{self, MiniImageNetConfig};
use metaloop_fuzz::{png_bytes, scratch, write};

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = scratch("miniimagenet");
        for name in ["a", "b", "c", "d"] {
            write(&root.join(format!("images/{name}.png")), &png_bytes(3, 3));
        }
        write(&root.join("images/bad.png"), b"not a png");
        for split in ["val", "test"] {
            write(
                &root.join(format!("{split}.csv")),
                b"filename,label\na.png,n01\nb.png,n02\n",
            );
        }
        root
    })
}

fuzz_target!(|data: &[u8]| {
    if data.contains(&b'/') {
        return;
    }
    let root = root();
    write(&root.join("train.csv"), data);
    let mut config = MiniImageNetConfig::new(root);
    config.size = 4;
    let _ = miniimagenet::load(&config);
});
