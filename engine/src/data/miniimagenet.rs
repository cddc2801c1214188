//! miniImageNet in Ravi & Larochelle's layout: `root/images/` and `root/{train,val,test}.csv`,
//! each CSV with the header `filename,label` and one `<file in images/>,<wnid>` row per image.
//!
//! Images are RGB, resized to 84×84 (any source size) with Lanczos3, pixels in `[0, 1]` (no mean
//! or std normalization, as in MAML). A split's classes are its CSV's labels in byte order, each
//! holding its images in row order; a class is named `<split>/<label>`. Every row's file is
//! checked before any decoding, so a missing file is reported with its CSV line. This module only
//! lists; decoding is in [`super::images`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::images::{load_store, ClassRef, ClassSources, ImageDataset, ImageSource, ImageSpec};
use super::Split;
use crate::{Error, Result};

const NAME: &str = "miniimagenet";
const HEADER: &str = "filename,label";

/// Where miniImageNet is.
#[derive(Debug, Clone)]
pub struct MiniImageNetConfig {
    /// The folder holding `images/` and the three CSVs.
    pub root: PathBuf,
    /// Where decoded pixels are cached; `None`: decode on every load.
    pub cache_dir: Option<PathBuf>,
    /// Target height and width (84 in Ravi & Larochelle and MAML).
    pub size: u32,
}

impl MiniImageNetConfig {
    /// 84×84, no cache.
    pub fn new(root: impl Into<PathBuf>) -> MiniImageNetConfig {
        MiniImageNetConfig {
            root: root.into(),
            cache_dir: None,
            size: 84,
        }
    }
}

/// Loads all three splits of miniImageNet.
pub fn load(config: &MiniImageNetConfig) -> Result<ImageDataset> {
    let images_dir = config.root.join("images");
    if !images_dir.is_dir() {
        return Err(Error::MissingDirectory {
            dataset: NAME,
            path: images_dir,
            hint: String::new(),
        });
    }
    let mut classes: Vec<ClassSources> = Vec::new();
    let mut splits: [Option<Vec<ClassRef>>; 3] = [None, None, None];
    for split in Split::ALL {
        let csv = config.root.join(format!("{split}.csv"));
        let mut refs = Vec::new();
        for (label, images) in read_csv(&csv, &images_dir)? {
            refs.push(ClassRef {
                class: classes.len(),
                rotation: 0,
            });
            classes.push(ClassSources {
                name: format!("{split}/{label}"),
                images,
            });
        }
        splits[split.index()] = Some(refs);
    }
    let spec = ImageSpec::rgb(config.size);
    let (store, report) = load_store(NAME, classes, &spec, config.cache_dir.as_deref())?;
    ImageDataset::new(NAME, store, splits, false, report)
}

/// Row `row` (line `line` of `csv`, not empty) as its label and the path of its image, which must
/// be a plain file name inside `images_dir` and exist.
fn csv_row<'r>(
    csv: &std::path::Path,
    images_dir: &std::path::Path,
    line: usize,
    row: &'r str,
) -> Result<(&'r str, std::path::PathBuf)> {
    let fields: Vec<&str> = row.split(',').map(str::trim).collect();
    let (file, label) = match fields[..] {
        [file, label] if !file.is_empty() && !label.is_empty() => (file, label),
        _ => {
            return Err(Error::CsvRow {
                dataset: NAME,
                path: csv.to_path_buf(),
                line,
                found: row.to_string(),
            })
        }
    };
    // Names are plain file names inside images/: a path (`../x`, `/etc/x`) would read files
    // outside the dataset.
    if file.contains(['/', '\\']) || file == "." || file == ".." {
        return Err(Error::CsvPath {
            dataset: NAME,
            path: csv.to_path_buf(),
            line,
            file: file.to_string(),
        });
    }
    let path = images_dir.join(file);
    if !path.is_file() {
        return Err(Error::CsvMissingImage {
            dataset: NAME,
            csv: csv.to_path_buf(),
            line,
            file: format!("images/{file}"),
        });
    }
    Ok((label, path))
}

/// One split's CSV: label -> images in row order, labels sorted.
fn read_csv(
    csv: &std::path::Path,
    images_dir: &std::path::Path,
) -> Result<BTreeMap<String, Vec<ImageSource>>> {
    if !csv.is_file() {
        return Err(Error::MissingFile {
            dataset: NAME,
            path: csv.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(csv).map_err(|source| Error::Io {
        path: csv.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map_or("", |(_, l)| l)
        .trim_start_matches('\u{feff}')
        .trim();
    if header != HEADER {
        return Err(Error::CsvHeader {
            dataset: NAME,
            path: csv.to_path_buf(),
            found: header.to_string(),
            expected: HEADER,
        });
    }
    let mut classes: BTreeMap<String, Vec<ImageSource>> = BTreeMap::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let row = line.trim();
        if row.is_empty() {
            continue;
        }
        let (label, path) = csv_row(csv, images_dir, line_no, row)?;
        classes
            .entry(label.to_string())
            .or_default()
            .push(ImageSource::file(path)?);
    }
    if classes.is_empty() {
        return Err(Error::DatasetSplit {
            dataset: NAME,
            reason: format!("{} lists no image", csv.display()),
        });
    }
    Ok(classes)
}
