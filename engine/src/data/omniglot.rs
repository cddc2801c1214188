//! Omniglot (Lake et al. 2015) in its standard layout, with MAML's meta-training split.
//!
//! Reads `root/images_background/` and `root/images_evaluation/`
//! (`<alphabet>/<character>/*.png`), or, where a folder is absent, `root/images_background.zip` /
//! `root/images_evaluation.zip` (entries `images_background/<alphabet>/<character>/*.png`; the
//! leading folder may be left out). Images are grayscale, resized from 105×105 to 28×28 with
//! Lanczos3 (PIL's `LANCZOS`, MAML's choice; 28×28 sources are taken as they are; any other size
//! is an error), and inverted so that ink is 1.0 and paper 0.0, as in MAML's data generator.
//!
//! The split, exactly: all 1623 characters of both folders are pooled (as in MAML, whose
//! `omniglot_resized` folder holds both), named `<folder>/<alphabet>/<character>` and sorted by
//! name (byte order; MAML used `os.listdir`'s order, which no machine repeats); the list is then
//! shuffled with [`TaskRng::from_seed`]`(shuffle_seed)` (Fisher–Yates from the end; default seed 1,
//! MAML's `random.seed(1)`). The first `train_characters` (1100) are meta-train, the next
//! `val_characters` (100) meta-val (together MAML's 1200 meta-training characters), the rest
//! (423) meta-test. With `rotations`, each character becomes four classes rotated by 0°, 90°,
//! 180° and 270° (counterclockwise), within its own split, so no rotation of a test character is
//! ever seen in training. Decoding is in [`super::images`]; this module only lists and splits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::folder::{class_images, file_name, is_image_name, nonempty_subdirectories};
use super::images::{
    check_zip_entry, load_store, mtime_ns, open_zip, ClassRef, ClassSources, ImageDataset,
    ImageSource, ImageSpec, Origin, Resize,
};
use super::TaskRng;
use crate::{Error, Result};

const NAME: &str = "omniglot";

/// The two standard folders (or zips) of Omniglot.
pub const SETS: [&str; 2] = ["images_background", "images_evaluation"];

/// Where Omniglot is and how to split it.
#[derive(Debug, Clone)]
pub struct OmniglotConfig {
    /// The folder holding `images_background` and `images_evaluation` (folders or zips).
    pub root: PathBuf,
    /// Where decoded pixels are cached; `None`: decode on every load.
    pub cache_dir: Option<PathBuf>,
    /// Meta-training characters (MAML: 1100, i.e. 1200 minus 100 for validation).
    pub train_characters: usize,
    /// Meta-validation characters, right after the training ones (MAML: 100).
    pub val_characters: usize,
    /// Seed of the shuffle before splitting (MAML: 1).
    pub shuffle_seed: u64,
    /// Target height and width (MAML: 28).
    pub size: u32,
    /// Four rotations per character as separate classes (MAML, after Santoro et al.).
    pub rotations: bool,
}

impl OmniglotConfig {
    /// MAML's settings for the data under `root`, without a cache.
    pub fn new(root: impl Into<PathBuf>) -> OmniglotConfig {
        OmniglotConfig {
            root: root.into(),
            cache_dir: None,
            train_characters: 1100,
            val_characters: 100,
            shuffle_seed: 1,
            size: 28,
            rotations: true,
        }
    }
}

/// Loads Omniglot and splits it (see the module's notes).
pub fn load(config: &OmniglotConfig) -> Result<ImageDataset> {
    let mut characters: Vec<ClassSources> = Vec::new();
    for set in SETS {
        let dir = config.root.join(set);
        let zip = config.root.join(format!("{set}.zip"));
        if dir.is_dir() {
            characters.extend(list_folder(set, &dir)?);
        } else if zip.is_file() {
            characters.extend(list_zip(set, &zip)?);
        } else {
            return Err(Error::MissingDirectory {
                dataset: NAME,
                path: dir,
                hint: format!(" (nor {set}.zip beside it)"),
            });
        }
    }
    characters.sort_by(|a, b| a.name.cmp(&b.name));
    let total = characters.len();
    let (n_train, n_val) = (config.train_characters, config.val_characters);
    if n_train == 0 || n_train + n_val > total {
        return Err(Error::DatasetSplit {
            dataset: NAME,
            reason: format!(
                "{total} characters found under {}, the split needs {n_train} train (> 0) + \
                 {n_val} val, the rest test",
                config.root.display()
            ),
        });
    }
    let mut order: Vec<usize> = (0..total).collect();
    TaskRng::from_seed(config.shuffle_seed).shuffle(&mut order);
    let rotations = if config.rotations { 4 } else { 1 };
    let refs = |chars: &[usize]| -> Vec<ClassRef> {
        chars
            .iter()
            .flat_map(|&class| (0..rotations).map(move |rotation| ClassRef { class, rotation }))
            .collect()
    };
    let splits = [
        Some(refs(&order[..n_train])),
        Some(refs(&order[n_train..n_train + n_val])),
        Some(refs(&order[n_train + n_val..])),
    ];
    let spec = ImageSpec {
        channels: 1,
        height: config.size,
        width: config.size,
        resize: Resize::Lanczos3,
        source_sizes: vec![(105, 105), (config.size, config.size)],
    };
    let (store, report) = load_store(NAME, characters, &spec, config.cache_dir.as_deref())?;
    ImageDataset::new(NAME, store, splits, true, report)
}

/// Characters of an unpacked set folder: `dir/<alphabet>/<character>/*.png`.
fn list_folder(set: &str, dir: &Path) -> Result<Vec<ClassSources>> {
    let alphabets = nonempty_subdirectories(NAME, dir, "omniglot", "alphabet folders")?;
    let mut out = Vec::new();
    for alphabet in alphabets {
        let characters = nonempty_subdirectories(NAME, &alphabet, "alphabet", "character folders")?;
        for character in characters {
            out.push(ClassSources {
                name: format!("{set}/{}/{}", file_name(&alphabet), file_name(&character)),
                images: class_images(&character)?,
            });
        }
    }
    Ok(out)
}

/// Characters of a set zip: entries `[<set>/]<alphabet>/<character>/<file>.png`.
fn list_zip(set: &str, path: &Path) -> Result<Vec<ClassSources>> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stamp = format!("{}\t{}\t{}", path.display(), meta.len(), mtime_ns(&meta));
    let archive_path = Arc::new(path.to_path_buf());
    let mut zip = open_zip(path)?;
    let prefix = format!("{set}/");
    // (alphabet, character) -> images, sorted by key and, below, by entry name.
    let mut characters: BTreeMap<(String, String), Vec<ImageSource>> = BTreeMap::new();
    let mut unpacked = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| Error::Zip {
            path: path.to_path_buf(),
            reason: format!("entry {i}: {e}"),
        })?;
        let name = entry.name().to_string();
        let rel = name.strip_prefix(&prefix).unwrap_or(&name);
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| p.starts_with('.') || *p == "__MACOSX") {
            continue;
        }
        if entry.is_dir() {
            if parts.len() == 2 {
                characters
                    .entry((parts[0].to_string(), parts[1].to_string()))
                    .or_default();
            }
            continue;
        }
        if parts.len() != 3 || !is_image_name(parts[2]) {
            continue;
        }
        check_zip_entry(path, &name, entry.size(), &mut unpacked)?;
        let fingerprint = format!("{stamp}!{name}\t{}\t{}", entry.size(), entry.crc32());
        characters
            .entry((parts[0].to_string(), parts[1].to_string()))
            .or_default()
            .push(ImageSource {
                origin: Origin::Zip {
                    archive: archive_path.clone(),
                    entry: name,
                },
                fingerprint,
            });
    }
    if characters.is_empty() {
        return Err(Error::EmptyFolder {
            what: "omniglot",
            path: path.display().to_string(),
            expected: "<alphabet>/<character>/*.png entries",
        });
    }
    let mut out = Vec::with_capacity(characters.len());
    for ((alphabet, character), mut images) in characters {
        if images.is_empty() {
            return Err(Error::EmptyFolder {
                what: "class",
                path: format!("{}:{set}/{alphabet}/{character}", path.display()),
                expected: "*.png images",
            });
        }
        images.sort_by_key(|a| a.display());
        out.push(ClassSources {
            name: format!("{set}/{alphabet}/{character}"),
            images,
        });
    }
    Ok(out)
}
