//! The on-disk decode cache: decoded, resized pixels of a whole dataset, so that a restart does
//! not decode again.
//!
//! Two files per dataset version under the caller's cache directory:
//! `<dataset>-<key>.u8` holds every image as raw u8 `[C, H, W]`, classes one after another in
//! the loader's order, and `<dataset>-<key>.json` a small index (format, key, channels, height,
//! width, images, and each class's name and image count). `key` is the first 128 bits (hex) of a
//! SHA-256 over the dataset name, the image spec (channels, target size, resize filter, allowed
//! source sizes) and, per class, its name and each image's path, size and modification time (for
//! zip entries: the archive's path, size and mtime and the entry's name, size and CRC). Any change
//! to the sources or the target gives a new key, so a stale cache is never read.
//!
//! Both files are written atomically (a temporary file in the same directory, then rename), data
//! first and index last: an index on disk means its data file is complete. A cache whose index
//! does not match what the loader expects, or whose data file has the wrong length, is ignored
//! and rewritten. This module must not decode images.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::images::{ClassSources, ImageSpec, StoredClass};
use crate::{Error, Result};

const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Index {
    format: u32,
    dataset: String,
    key: String,
    channels: usize,
    height: u32,
    width: u32,
    images: usize,
    classes: Vec<IndexClass>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct IndexClass {
    name: String,
    count: usize,
}

/// The cache key of a dataset's sources decoded to `spec`.
pub(crate) fn key(dataset: &str, spec: &ImageSpec, classes: &[ClassSources]) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "metaloop decode cache {FORMAT}\n{dataset}\n{}\n",
        spec.fingerprint()
    ));
    for class in classes {
        h.update(format!("class\t{}\t{}\n", class.name, class.images.len()));
        for image in &class.images {
            h.update(image.fingerprint.as_bytes());
            h.update(b"\n");
        }
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The data and index paths of a key.
pub fn paths(dir: &Path, dataset: &str, key: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{dataset}-{key}.u8")),
        dir.join(format!("{dataset}-{key}.json")),
    )
}

fn expected_index(dataset: &str, key: &str, spec: &ImageSpec, classes: &[StoredClass]) -> Index {
    Index {
        format: FORMAT,
        dataset: dataset.to_string(),
        key: key.to_string(),
        channels: spec.channels,
        height: spec.height,
        width: spec.width,
        images: classes.iter().map(|c| c.count).sum(),
        classes: classes
            .iter()
            .map(|c| IndexClass {
                name: c.name.clone(),
                count: c.count,
            })
            .collect(),
    }
}

/// The cached pixels and the data file's path, if a complete cache entry matching the expected
/// classes exists; `None` otherwise (missing, partial, or not matching: the caller decodes).
pub(crate) fn read(
    dir: &Path,
    dataset: &str,
    key: &str,
    spec: &ImageSpec,
    classes: &[StoredClass],
) -> Option<(Vec<u8>, PathBuf)> {
    let (data_path, index_path) = paths(dir, dataset, key);
    let index: Index = serde_json::from_slice(&std::fs::read(&index_path).ok()?).ok()?;
    let expected = expected_index(dataset, key, spec, classes);
    if index != expected {
        return None;
    }
    let pixels = std::fs::read(&data_path).ok()?;
    if pixels.len() != expected.images * spec.image_bytes() {
        return None;
    }
    Some((pixels, data_path))
}

/// Writes the pixels and index of a key atomically; returns the data file's path.
pub(crate) fn write(
    dir: &Path,
    dataset: &str,
    key: &str,
    spec: &ImageSpec,
    classes: &[StoredClass],
    pixels: &[u8],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Cache {
        path: dir.to_path_buf(),
        reason: format!("cannot create the cache directory: {e}"),
    })?;
    let (data_path, index_path) = paths(dir, dataset, key);
    let index = expected_index(dataset, key, spec, classes);
    let json = serde_json::to_vec_pretty(&index).map_err(|e| Error::Cache {
        path: index_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&data_path, pixels)?;
    write_atomic(&index_path, &json)?;
    Ok(data_path)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let err = |what: &str, e: std::io::Error| Error::Cache {
        path: path.to_path_buf(),
        reason: format!("{what} {}: {e}", tmp.display()),
    };
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| err("cannot create", e))?;
        file.write_all(bytes).map_err(|e| err("cannot write", e))?;
        file.sync_all().map_err(|e| err("cannot sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("cannot rename", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
