//! Bounded reading of source images: plain files and zip entries, each capped in size, and zip
//! archives capped in total, so that no archive makes a load allocate what it claims. It never
//! decodes.

use std::collections::hash_map::{Entry, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// The largest image file or zip entry read, in bytes: a larger one is an error (exit code 2),
/// never an allocation of the size an archive claims.
pub(crate) const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// The most bytes the image entries of one zip archive may unpack to, together.
pub(crate) const MAX_ZIP_TOTAL_BYTES: u64 = 16 << 30;

/// Checks the unpacked size that a zip archive declares for the image entry `name` against the
/// per-entry cap, and adds it to `total`, checked against the per-archive cap.
pub(crate) fn check_zip_entry(
    archive: &Path,
    name: &str,
    size: u64,
    total: &mut u64,
) -> Result<()> {
    let too_big = |reason: String| Error::Zip {
        path: archive.to_path_buf(),
        reason,
    };
    if size > MAX_IMAGE_FILE_BYTES {
        return Err(too_big(format!(
            "entry {name} unpacks to {size} bytes, more than the {MAX_IMAGE_FILE_BYTES} allowed per image"
        )));
    }
    *total = total
        .checked_add(size)
        .filter(|t| *t <= MAX_ZIP_TOTAL_BYTES)
        .ok_or_else(|| {
            too_big(format!(
                "its image entries unpack to more than {MAX_ZIP_TOTAL_BYTES} bytes together"
            ))
        })?;
    Ok(())
}

/// Where one source image is: a file, or an entry of a zip archive.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    File(PathBuf),
    Zip {
        archive: Arc<PathBuf>,
        entry: String,
    },
}

/// One source image and a fingerprint of its identity and version (path, size, mtime; for zip
/// entries the archive's size and mtime and the entry's CRC), hashed into the cache key.
#[derive(Debug, Clone)]
pub(crate) struct ImageSource {
    pub origin: Origin,
    pub fingerprint: String,
}

impl ImageSource {
    /// A file, fingerprinted by its path, size and modification time.
    pub fn file(path: PathBuf) -> Result<ImageSource> {
        // Not following a symbolic link: only regular files are read.
        let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() || meta.len() > MAX_IMAGE_FILE_BYTES {
            return Err(Error::UnreadableImage {
                path: path.display().to_string(),
                reason: format!(
                    "not a regular file of at most {MAX_IMAGE_FILE_BYTES} bytes ({} bytes)",
                    meta.len()
                ),
            });
        }
        let fingerprint = format!("{}\t{}\t{}", path.display(), meta.len(), mtime_ns(&meta));
        Ok(ImageSource {
            origin: Origin::File(path),
            fingerprint,
        })
    }

    /// How errors name this image: the path, or `archive.zip:entry`.
    pub fn display(&self) -> String {
        match &self.origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Zip { archive, entry } => format!("{}:{entry}", archive.display()),
        }
    }
}

/// Nanoseconds since the epoch of a file's last modification (0 where the platform has none).
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Reads an image file of at most [`MAX_IMAGE_FILE_BYTES`].
pub(crate) fn read_image_file(source: &ImageSource, path: &Path) -> Result<Vec<u8>> {
    let unreadable = |reason: String| Error::UnreadableImage {
        path: source.display(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    read_capped(file, 0).map_err(unreadable)
}

/// Reads at most [`MAX_IMAGE_FILE_BYTES`] from `r`, `expected` bytes being the likely size.
fn read_capped(r: impl Read, expected: u64) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(expected.min(MAX_IMAGE_FILE_BYTES) as usize);
    r.take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(format!(
            "more than the {MAX_IMAGE_FILE_BYTES} bytes allowed per image"
        ));
    }
    Ok(bytes)
}

/// Open zip archives, by path, kept across the batches of one load.
pub(crate) type Archives = HashMap<Arc<PathBuf>, zip::ZipArchive<std::fs::File>>;

/// Reads the zip entries among `sources`, each bounded by [`MAX_IMAGE_FILE_BYTES`]; `None` for
/// plain files, which the parallel decoder reads itself.
pub(crate) fn read_zip_entries(
    sources: &[&ImageSource],
    archives: &mut Archives,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut out: Vec<Option<Vec<u8>>> = vec![None; sources.len()];
    for (i, source) in sources.iter().enumerate() {
        let Origin::Zip { archive, entry } = &source.origin else {
            continue;
        };
        let zip = match archives.entry(archive.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(open_zip(archive)?),
        };
        let unreadable = |reason: String| Error::UnreadableImage {
            path: source.display(),
            reason,
        };
        let file = zip.by_name(entry).map_err(|e| unreadable(e.to_string()))?;
        let size = file.size();
        check_zip_entry(archive, entry, size, &mut 0)?;
        out[i] = Some(read_capped(file, size).map_err(unreadable)?);
    }
    Ok(out)
}

/// Opens a zip archive, naming it in errors.
pub(crate) fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    zip::ZipArchive::new(file).map_err(|e| Error::Zip {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
