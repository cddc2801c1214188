//! The folder-per-class loader on an arbitrary tree. Each input line is `class/file` (a valid
//! 5×3 PNG), `class/file=bytes` (a file holding those bytes), or `class/` (an empty folder); names
//! outside `[A-Za-z0-9._-]{1,24}` are skipped. The loader must return a dataset or an error,
//! never panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metaloop_engine::data::folder::{self, FolderConfig};
use metaloop_engine::data::ImageSpec;
use metaloop_fuzz::{plain_name, png_bytes, scratch, write};

fn png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| png_bytes(5, 3))
}

fuzz_target!(|data: &[u8]| {
    let root = scratch("folder");
    let train = root.join("train");
    std::fs::create_dir_all(&train).expect("a scratch folder");
    for line in data.split(|b| *b == b'\n') {
        let (path, content) = match line.iter().position(|b| *b == b'=') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        let Some(slash) = path.iter().position(|b| *b == b'/') else {
            continue;
        };
        let (class, file) = (&path[..slash], &path[slash + 1..]);
        if !plain_name(class) {
            continue;
        }
        let class_dir = train.join(String::from_utf8_lossy(class).as_ref());
        if file.is_empty() {
            let _ = std::fs::create_dir_all(&class_dir);
            continue;
        }
        if !plain_name(file) || class_dir.is_file() {
            continue;
        }
        let file = class_dir.join(String::from_utf8_lossy(file).as_ref());
        if file.is_dir() {
            continue;
        }
        write(&file, content.unwrap_or(png()));
    }
    let _ = folder::load(&FolderConfig::new(&train, ImageSpec::rgb(4)));
    let _ = std::fs::remove_dir_all(&root);
});
