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
//! The cache lives outside the dataset by default ([`default_dir`]: the per-user cache), so that
//! a read-only dataset works; a cache that cannot be written is reported, not an error.
//!
//! One process per cache entry decodes at a time ([`lock`]): the other ranks of a node wait for
//! its cache instead of decoding the same images at once.
//!
//! Both files are written atomically (a temporary file in the same directory, then rename), data
//! first and index last: an index on disk means its data file is complete. A cache whose index
//! does not match what the loader expects, or whose data file has the wrong length, is ignored
//! and rewritten. This module must not decode images.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::images::{ClassSources, ImageSpec, StoredClass};
use crate::{Error, Result};

const FORMAT: u32 = 1;

/// The decode cache's directory: `configured` if not empty, else the per-user cache
/// (`$XDG_CACHE_HOME/metaloop/decoded`, or `~/.cache/metaloop/decoded`); `None` (no cache) when
/// neither is known.
pub fn default_dir(configured: &str) -> Option<PathBuf> {
    if !configured.is_empty() {
        return Some(PathBuf::from(configured));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("metaloop").join("decoded"))
}

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
    if Some(pixels.len()) != expected.images.checked_mul(spec.image_bytes()) {
        return None;
    }
    Some((pixels, data_path))
}

/// Waits for, then holds, the lock of one cache entry, so that of the processes that load one
/// dataset at once (the ranks of a node) one decodes and writes the cache while the others wait
/// and then read it. The lock is a `flock` on the entry's data file as it is before the write (an
/// empty file if there was none, which [`read`] ignores for its length); the atomic write renames
/// the new data over it, and the waiters then read that. `None` when the file cannot be opened
/// (then every process decodes for itself). Released when dropped.
pub(crate) fn lock(dir: &Path, dataset: &str, key: &str) -> Option<std::fs::File> {
    std::fs::create_dir_all(dir).ok()?;
    let (data_path, _) = paths(dir, dataset, key);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_path)
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// Removes the entry whose data file is `data_path` (the path [`write`] returned) and its index:
/// for a load whose dataset was then refused. Errors are ignored: what stays is a valid entry.
pub fn remove_entry(data_path: &Path) {
    let _ = std::fs::remove_file(data_path.with_extension("json"));
    let _ = std::fs::remove_file(data_path);
}

/// Removes the data file of an entry when it is still the empty file that [`lock`] made: for a
/// decode that failed, so that no empty entry stays behind.
pub(crate) fn discard_empty(dir: &Path, dataset: &str, key: &str) {
    let (data_path, _) = paths(dir, dataset, key);
    if std::fs::metadata(&data_path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = std::fs::remove_file(&data_path);
    }
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
    let atomic = |path: &Path, bytes: &[u8]| {
        crate::atomic::write_atomic(path, bytes).map_err(|e| Error::Cache {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    atomic(&data_path, pixels)?;
    atomic(&index_path, &json)?;
    Ok(data_path)
}
