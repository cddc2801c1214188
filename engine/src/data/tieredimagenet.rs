//! tieredImageNet (Ren et al. 2018) in either of the layouts users have:
//! - Ren et al.'s pickles: `root/{train,val,test}_images_png.pkl` (a list of PNG-encoded images,
//!   each a NumPy uint8 array or a byte string) and `root/{split}_labels.pkl` (a dict whose
//!   `label_specific` holds each image's class, with optional `label_specific_str` names);
//! - one folder per class under `root/{train,val,test}/` (the [`super::folder`] layout).
//!
//! Images are RGB, 84×84 (resized with Lanczos3 if another size), pixels in `[0, 1]`. A split's
//! classes are its `label_specific` values in increasing order, each with its images in file
//! order; a class is named `<split>/<label_specific_str>` (or `<split>/<label>`). Decoding runs on
//! rayon; the pickles are not cached (they are the decode's input already in one file each).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::cifar::{from_pixels, read_pickle};
use super::folder::{self, FolderConfig};
use super::images::{decode_bytes, ClassRef, ImageDataset, StoredClass};
use super::pickle::Value;
use super::{ImageSpec, Split};
use crate::{Error, Result};

const NAME: &str = "tieredimagenet";

/// Where tieredImageNet is.
#[derive(Debug, Clone)]
pub struct TieredImageNetConfig {
    /// The folder with the pickles, or with `train/`, `val/`, `test/` class folders.
    pub root: PathBuf,
    /// Decode cache for the folder layout; `None`: decode on every load.
    pub cache_dir: Option<PathBuf>,
    /// Target height and width (84 in Ren et al.).
    pub size: u32,
}

impl TieredImageNetConfig {
    /// 84×84, no cache.
    pub fn new(root: impl Into<PathBuf>) -> TieredImageNetConfig {
        TieredImageNetConfig {
            root: root.into(),
            cache_dir: None,
            size: 84,
        }
    }
}

/// Loads all three splits, from the pickles when `train_images_png.pkl` is there, else from the
/// class folders.
pub fn load(config: &TieredImageNetConfig) -> Result<ImageDataset> {
    let spec = ImageSpec::rgb(config.size);
    if !config.root.join("train_images_png.pkl").is_file() {
        let mut folders = FolderConfig::new(config.root.join("train"), spec);
        folders.val = Some(config.root.join("val"));
        folders.test = Some(config.root.join("test"));
        folders.cache_dir = config.cache_dir.clone();
        if !folders.train.is_dir() {
            return Err(Error::MissingDirectory {
                dataset: NAME,
                path: folders.train,
                hint: " (nor train_images_png.pkl beside it)".into(),
            });
        }
        return folder::load(&folders);
    }
    let mut pixels = Vec::new();
    let mut classes = Vec::new();
    let mut refs: [Option<Vec<ClassRef>>; 3] = [None, None, None];
    for split in Split::ALL {
        let (names, encoded) = read_split(&config.root, split)?;
        let first_image = pixels.len() / spec.image_bytes().max(1);
        let order: Vec<(usize, &Vec<u8>)> = encoded
            .iter()
            .flat_map(|(_, e)| e.iter().map(|(i, b)| (*i, b)))
            .collect();
        let path = config.root.join(format!("{split}_images_png.pkl"));
        decode_append(&mut pixels, &order, &path, &spec)?;
        let mut split_refs = Vec::new();
        let mut first = first_image;
        for (label, images) in &encoded {
            split_refs.push(ClassRef {
                class: classes.len(),
                rotation: 0,
            });
            classes.push(StoredClass {
                name: format!(
                    "{split}/{}",
                    names
                        .get(label)
                        .cloned()
                        .unwrap_or_else(|| label.to_string())
                ),
                first,
                count: images.len(),
            });
            first += images.len();
        }
        refs[split.index()] = Some(split_refs);
    }
    from_pixels(NAME, spec, pixels, classes, refs)
}

/// Decodes `images` ((index in `pkl`, encoded bytes)) to `spec` onto the end of `pixels`, in
/// parallel, a bounded chunk at a time: memory grows only with images that decode, whatever
/// number of items a (hostile) pickle lists.
fn decode_append(
    pixels: &mut Vec<u8>,
    images: &[(usize, &Vec<u8>)],
    pkl: &Path,
    spec: &ImageSpec,
) -> Result<()> {
    const CHUNK: usize = 4096;
    let bytes = spec.image_bytes().max(1);
    for chunk in images.chunks(CHUNK) {
        let start = pixels.len();
        pixels.resize(start + chunk.len() * bytes, 0);
        pixels[start..]
            .par_chunks_mut(bytes)
            .zip(chunk.par_iter())
            .try_for_each(|(out, (i, png))| {
                decode_bytes(&format!("{} image {i}", pkl.display()), png, spec, out)
            })?;
    }
    Ok(())
}

/// One class's encoded images: (index in the pickle, PNG bytes).
type Encoded = Vec<(usize, Vec<u8>)>;

/// One split's pickles: the class names by label, and each label's encoded images.
fn read_split(
    root: &Path,
    split: Split,
) -> Result<(BTreeMap<i64, String>, BTreeMap<i64, Encoded>)> {
    let images_path = root.join(format!("{split}_images_png.pkl"));
    let labels_path = root.join(format!("{split}_labels.pkl"));
    for path in [&images_path, &labels_path] {
        if !path.is_file() {
            return Err(Error::MissingFile {
                dataset: NAME,
                path: path.clone(),
            });
        }
    }
    let fail = |path: &Path, reason: String| Error::Pickle {
        path: path.to_path_buf(),
        reason,
    };
    let Value::List(list) = read_pickle(&images_path)? else {
        return Err(fail(&images_path, "not a list of images".into()));
    };
    let labels_value = read_pickle(&labels_path)?;
    let labels = labels_value
        .get("label_specific")
        .and_then(Value::ints)
        .ok_or_else(|| {
            fail(
                &labels_path,
                "no integer list or array `label_specific`".into(),
            )
        })?;
    if labels.len() != list.len() {
        return Err(fail(
            &labels_path,
            format!(
                "{} labels for the {} images of {}",
                labels.len(),
                list.len(),
                images_path.display()
            ),
        ));
    }
    let mut names = BTreeMap::new();
    if let Some(strs) = labels_value
        .get("label_specific_str")
        .and_then(Value::items)
    {
        for (label, name) in (0..).zip(strs) {
            if let Some(n) = name.text() {
                names.insert(label, n);
            }
        }
    }
    let mut by_label: BTreeMap<i64, Encoded> = BTreeMap::new();
    for (i, (item, label)) in list.into_iter().zip(labels).enumerate() {
        let png = match item {
            Value::Bytes(b) => std::rc::Rc::unwrap_or_clone(b),
            Value::Array(a) if a.dtype == "u1" || a.dtype == "i1" => {
                std::rc::Rc::unwrap_or_clone(a.data)
            }
            _ => {
                return Err(fail(
                    &images_path,
                    format!("item {i} is not an encoded image (bytes or a uint8 array)"),
                ))
            }
        };
        by_label.entry(label).or_default().push((i, png));
    }
    Ok((names, by_label))
}
