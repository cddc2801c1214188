//! The generic folder-per-class layout: `root/<class>/*.{png,jpg,jpeg}`, one root per split.
//!
//! Class folders and the images in them are taken in byte order of their names, so every machine
//! lists them alike; other files (and hidden entries) are ignored, and so are symbolic links,
//! FIFOs and devices: only real folders and regular files are read. A class is named
//! `<split>/<folder name>`. This module also holds the directory listing helpers that the
//! Omniglot loader shares. It must not decode images itself (see [`super::images`]).

use std::path::{Path, PathBuf};

use super::images::{load_store, ClassRef, ClassSources, ImageDataset, ImageSource, ImageSpec};
use super::Split;
use crate::{Error, Result};

/// Where a folder dataset is and how to decode it.
#[derive(Debug, Clone)]
pub struct FolderConfig {
    /// Meta-training classes: one folder per class.
    pub train: PathBuf,
    /// Meta-validation classes, if any.
    pub val: Option<PathBuf>,
    /// Meta-test classes, if any.
    pub test: Option<PathBuf>,
    /// Where decoded pixels are cached; `None`: decode on every load.
    pub cache_dir: Option<PathBuf>,
    /// Channels, target size and resizing.
    pub spec: ImageSpec,
    /// Adds each class rotated by 90°, 180° and 270° as three more classes (square images only).
    pub rotations: bool,
    /// Pixels as `1 − value / 255` (dark strokes on white become 1 on 0).
    pub invert: bool,
}

impl FolderConfig {
    /// Only a train split, no cache, no rotations, no inversion.
    pub fn new(train: impl Into<PathBuf>, spec: ImageSpec) -> FolderConfig {
        FolderConfig {
            train: train.into(),
            val: None,
            test: None,
            cache_dir: None,
            spec,
            rotations: false,
            invert: false,
        }
    }
}

/// Loads a folder dataset.
pub fn load(config: &FolderConfig) -> Result<ImageDataset> {
    const NAME: &str = "folder";
    let roots = [
        Some(&config.train),
        config.val.as_ref(),
        config.test.as_ref(),
    ];
    let mut classes = Vec::new();
    let mut splits: [Option<Vec<ClassRef>>; 3] = [None, None, None];
    for (split, root) in Split::ALL.into_iter().zip(roots) {
        let Some(root) = root else { continue };
        let dirs = nonempty_subdirectories(NAME, root, "dataset", "one folder per class")?;
        let mut refs = Vec::new();
        for dir in dirs {
            let name = format!("{split}/{}", file_name(&dir));
            let images = class_images(&dir)?;
            let class = classes.len();
            classes.push(ClassSources { name, images });
            let rotations = if config.rotations { 0..4 } else { 0..1 };
            refs.extend(rotations.map(|rotation| ClassRef { class, rotation }));
        }
        splits[split.index()] = Some(refs);
    }
    let (store, report) = load_store(NAME, classes, &config.spec, config.cache_dir.as_deref())?;
    ImageDataset::new(NAME, store, splits, config.invert, report)
}

/// The last component of a path, as text.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// True for names ending in .png, .jpg or .jpeg (any case).
pub(crate) fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e))
}

/// What a directory entry is, without following symbolic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// A regular file: the only kind of file a dataset reads.
    File,
    /// A symbolic link, FIFO, socket or device: never read (a FIFO named `x.png` would block the
    /// loader for ever; a link may lead outside the dataset).
    Other,
}

fn read_dir_sorted(path: &Path) -> Result<Vec<(String, PathBuf, Kind)>> {
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        out.push((name, path, kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The non-hidden subdirectories of `path`, sorted by name; an error naming `dataset` if `path`
/// is not a directory.
pub(crate) fn subdirectories(dataset: &'static str, path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Err(Error::MissingDirectory {
            dataset,
            path: path.to_path_buf(),
            hint: String::new(),
        });
    }
    Ok(read_dir_sorted(path)?
        .into_iter()
        .filter(|e| e.2 == Kind::Dir)
        .map(|e| e.1)
        .collect())
}

/// Like [`subdirectories`], with an error naming the folder as `what` and its `expected` contents
/// when it has none.
pub(crate) fn nonempty_subdirectories(
    dataset: &'static str,
    path: &Path,
    what: &'static str,
    expected: &'static str,
) -> Result<Vec<PathBuf>> {
    let dirs = subdirectories(dataset, path)?;
    if dirs.is_empty() {
        return Err(Error::EmptyFolder {
            what,
            path: path.display().to_string(),
            expected,
        });
    }
    Ok(dirs)
}

/// The images of one class folder, sorted by name; an error if it holds none.
pub(crate) fn class_images(dir: &Path) -> Result<Vec<ImageSource>> {
    let mut images = Vec::new();
    for (name, path, kind) in read_dir_sorted(dir)? {
        if kind == Kind::File && is_image_name(&name) {
            images.push(ImageSource::file(path)?);
        }
    }
    if images.is_empty() {
        return Err(Error::EmptyFolder {
            what: "class",
            path: dir.display().to_string(),
            expected: "*.png, *.jpg or *.jpeg images",
        });
    }
    Ok(images)
}
