//! What the fuzz targets share: the launcher's config reader and its error type (their source
//! files compiled here, as the launcher is a binary crate) and scratch dataset directories.
//!
//! Only the fuzz targets use this crate; it must not be a dependency of the workspace.

use std::path::{Path, PathBuf};

/// `launcher/src/config.rs`: TOML text and `--set key=value` overrides to a validated
/// `TrainConfig`, every mistake one line.
#[allow(dead_code)]
#[path = "../../launcher/src/config.rs"]
pub mod config;

/// `launcher/src/errors.rs`: the one-line bad-input error that the config reader returns.
#[allow(dead_code)]
#[path = "../../launcher/src/errors.rs"]
pub mod errors;

/// A scratch directory of this fuzzing process (removed and made anew on each call).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaloop-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The bytes of a `width`×`height` RGB PNG.
pub fn png_bytes(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 40) as u8, (y * 40) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding in memory");
    out.into_inner()
}

/// Writes `bytes` to `path`, creating its folder.
pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("a folder in the scratch directory");
    }
    std::fs::write(path, bytes).expect("a file in the scratch directory");
}

/// True for a plain file or folder name: 1 to 24 of `[A-Za-z0-9._-]`, not `.` or `..`. Fuzzed
/// names are kept to these so that a target never writes outside its scratch directory.
pub fn plain_name(name: &[u8]) -> bool {
    (1..=24).contains(&name.len())
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}
