//! CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018), read from CIFAR-100's
//! python version (`cifar-100-python/{train,test,meta}`, Python pickles) as users have it.
//!
//! Both use all 600 images of each of CIFAR-100's 100 fine classes (its train images, then its
//! test images, in file order), 32×32 RGB, pixels in `[0, 1]`. They differ in the split:
//! - CIFAR-FS: 64/16/20 fine classes named, one per line, in `train.txt`, `val.txt`, `test.txt`
//!   of a split folder (Bertinetto et al.'s `splits/bertinetto/`); classes in list order.
//! - FC100: by superclass, 12/4/4 of the 20 ([`FC100_SPLITS`], TADAM's split); classes in fine
//!   label order.
//!
//! A class is named `<split>/<fine label name>`. This module must not decode anything but the
//! pickles (the pixels are raw) nor print.

use std::path::{Path, PathBuf};

use super::images::{ClassRef, ImageDataset, ImageStore, LoadReport, StoredClass};
use super::pickle::{self, Value};
use super::{CacheStatus, ImageSpec, Resize, Split};
use crate::{Error, Result};

const SIDE: u32 = 32;
const PIXELS: usize = 3 * 32 * 32;
const FINE: usize = 100;
const COARSE: usize = 20;

/// FC100's superclasses (CIFAR-100 coarse label names) for train, val and test, as in Oreshkin et
/// al. 2018.
pub const FC100_SPLITS: [&[&str]; 3] = [
    &[
        "fish",
        "flowers",
        "food_containers",
        "fruit_and_vegetables",
        "household_electrical_devices",
        "household_furniture",
        "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes",
        "reptiles",
        "trees",
        "vehicles_1",
        "vehicles_2",
    ],
    &[
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    ],
    &["aquatic_mammals", "insects", "medium_mammals", "people"],
];

/// CIFAR-100 as read from its pickles: pixels by image, fine and coarse labels, label names.
struct Cifar100 {
    pixels: Vec<u8>,
    fine: Vec<usize>,
    coarse: Vec<usize>,
    fine_names: Vec<String>,
    coarse_names: Vec<String>,
}

/// The folder with `train`, `test` and `meta`: `root/cifar-100-python` if there, else `root`.
fn python_dir(dataset: &'static str, root: &Path) -> Result<PathBuf> {
    let nested = root.join("cifar-100-python");
    let dir = if nested.is_dir() {
        nested
    } else {
        root.to_path_buf()
    };
    for name in ["train", "test", "meta"] {
        if !dir.join(name).is_file() {
            return Err(Error::MissingFile {
                dataset,
                path: dir.join(name),
            });
        }
    }
    Ok(dir)
}

pub(crate) fn read_pickle(path: &Path) -> Result<Value> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    pickle::read(file).map_err(|reason| Error::Pickle {
        path: path.to_path_buf(),
        reason,
    })
}

fn pickle_error(path: &Path, reason: String) -> Error {
    Error::Pickle {
        path: path.to_path_buf(),
        reason,
    }
}

/// `key` of a pickled dict as labels in `0..bound`, `count` of them.
fn labels(path: &Path, v: &Value, key: &str, count: usize, bound: usize) -> Result<Vec<usize>> {
    let ints = v
        .get(key)
        .and_then(Value::ints)
        .ok_or_else(|| pickle_error(path, format!("no list of integers `{key}`")))?;
    if ints.len() != count {
        return Err(pickle_error(
            path,
            format!("`{key}` has {} labels for {count} images", ints.len()),
        ));
    }
    ints.into_iter()
        .map(|l| usize::try_from(l).ok().filter(|&l| l < bound))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| pickle_error(path, format!("`{key}` has a label outside 0..{bound}")))
}

fn names(path: &Path, v: &Value, key: &str, count: usize) -> Result<Vec<String>> {
    let names: Option<Vec<String>> = v
        .get(key)
        .and_then(Value::items)
        .map(|items| items.iter().filter_map(Value::text).collect());
    match names {
        Some(n) if n.len() == count => Ok(n),
        _ => Err(pickle_error(
            path,
            format!("`{key}` is not a list of {count} names"),
        )),
    }
}

fn read_cifar100(dataset: &'static str, root: &Path) -> Result<Cifar100> {
    let dir = python_dir(dataset, root)?;
    let mut out = Cifar100 {
        pixels: Vec::new(),
        fine: Vec::new(),
        coarse: Vec::new(),
        fine_names: Vec::new(),
        coarse_names: Vec::new(),
    };
    for name in ["train", "test"] {
        let path = dir.join(name);
        let v = read_pickle(&path)?;
        let Some(Value::Array(data)) = v.get("data") else {
            return Err(pickle_error(&path, "no array `data`".into()));
        };
        if data.dtype != "u1" || data.shape.len() != 2 || data.shape[1] != PIXELS {
            return Err(pickle_error(
                &path,
                format!(
                    "`data` is {} {:?}, expected uint8 [images, {PIXELS}]",
                    data.dtype, data.shape
                ),
            ));
        }
        let count = data.shape[0];
        out.fine
            .extend(labels(&path, &v, "fine_labels", count, FINE)?);
        out.coarse
            .extend(labels(&path, &v, "coarse_labels", count, COARSE)?);
        out.pixels.extend_from_slice(&data.data);
    }
    let path = dir.join("meta");
    let meta = read_pickle(&path)?;
    out.fine_names = names(&path, &meta, "fine_label_names", FINE)?;
    out.coarse_names = names(&path, &meta, "coarse_label_names", COARSE)?;
    Ok(out)
}

/// Builds the dataset from the fine classes of each split.
fn assemble(
    dataset: &'static str,
    cifar: Cifar100,
    splits: [Vec<usize>; 3],
) -> Result<ImageDataset> {
    let mut pixels = Vec::new();
    let mut classes = Vec::new();
    let mut refs: [Option<Vec<ClassRef>>; 3] = [None, None, None];
    for (split, fine_classes) in Split::ALL.into_iter().zip(splits) {
        let mut split_refs = Vec::new();
        for fine in fine_classes {
            let first = pixels.len() / PIXELS;
            for (i, _) in cifar.fine.iter().enumerate().filter(|&(_, &f)| f == fine) {
                pixels.extend_from_slice(&cifar.pixels[i * PIXELS..(i + 1) * PIXELS]);
            }
            split_refs.push(ClassRef {
                class: classes.len(),
                rotation: 0,
            });
            classes.push(StoredClass {
                name: format!("{split}/{}", cifar.fine_names[fine]),
                first,
                count: pixels.len() / PIXELS - first,
            });
        }
        refs[split.index()] = Some(split_refs);
    }
    let spec = ImageSpec {
        resize: Resize::Exact,
        ..ImageSpec::rgb(SIDE)
    };
    from_pixels(dataset, spec, pixels, classes, refs)
}

/// A dataset from pixels read by this load (`[images, C, H, W]` u8, no decode cache), their
/// classes and the splits' class references.
pub(crate) fn from_pixels(
    dataset: &'static str,
    spec: ImageSpec,
    pixels: Vec<u8>,
    classes: Vec<StoredClass>,
    refs: [Option<Vec<ClassRef>>; 3],
) -> Result<ImageDataset> {
    let images = pixels.len() / spec.image_bytes().max(1);
    let store = ImageStore {
        spec,
        pixels,
        classes,
    };
    let report = LoadReport {
        images,
        decoded: images,
        cache: CacheStatus::Disabled,
    };
    ImageDataset::new(dataset, store, refs, false, report)
}

/// CIFAR-FS: CIFAR-100 under `root` (or `root/cifar-100-python`), split by the class lists
/// `train.txt`, `val.txt`, `test.txt` in `split_dir`.
pub fn load_cifar_fs(root: &Path, split_dir: &Path) -> Result<ImageDataset> {
    const NAME: &str = "cifar-fs";
    let cifar = read_cifar100(NAME, root)?;
    let mut seen = vec![None; FINE];
    let mut splits: [Vec<usize>; 3] = Default::default();
    for split in Split::ALL {
        let list = split_dir.join(format!("{split}.txt"));
        let text = std::fs::read_to_string(&list).map_err(|source| Error::Io {
            path: list.clone(),
            source,
        })?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let name = line.trim();
            let bad = |reason: String| Error::DatasetSplit {
                dataset: NAME,
                reason: format!("{} line {}: {reason}", list.display(), i + 1),
            };
            let fine = cifar
                .fine_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| bad(format!("{name:?} is not a CIFAR-100 class")))?;
            if let Some(other) = seen[fine].replace(split) {
                return Err(bad(format!("{name:?} is already in the {other} split")));
            }
            splits[split.index()].push(fine);
        }
    }
    assemble(NAME, cifar, splits)
}

/// FC100: CIFAR-100 under `root` (or `root/cifar-100-python`), split by superclass
/// ([`FC100_SPLITS`]).
pub fn load_fc100(root: &Path) -> Result<ImageDataset> {
    const NAME: &str = "fc100";
    let cifar = read_cifar100(NAME, root)?;
    let mut splits: [Vec<usize>; 3] = Default::default();
    for (split, superclasses) in splits.iter_mut().zip(FC100_SPLITS) {
        let mut coarse = Vec::new();
        for name in superclasses {
            let c = cifar
                .coarse_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::DatasetSplit {
                    dataset: NAME,
                    reason: format!("meta has no superclass {name:?}"),
                })?;
            coarse.push(c);
        }
        // The fine classes of these superclasses, in fine label order.
        for fine in 0..FINE {
            let of = cifar
                .fine
                .iter()
                .zip(&cifar.coarse)
                .find(|&(&f, _)| f == fine)
                .map(|(_, &c)| c);
            if of.is_some_and(|c| coarse.contains(&c)) {
                split.push(fine);
            }
        }
    }
    assemble(NAME, cifar, splits)
}
