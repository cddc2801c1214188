//! The in-memory store: decoded u8 pixels of every class (from the decode cache or a fresh
//! decode), and the [`ImageDataset`] that episodes read, with its splits and rotations.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::archive::ImageSource;
use super::decode::decode_all;
use super::spec::{ClassSources, ImageSpec, StoredClass};
use crate::data::{cache, Split};
use crate::{Error, Result};

/// How a load went: images in the dataset, images decoded from source files by this load (0 when
/// the decode cache answered), and the cache's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub images: usize,
    pub decoded: usize,
    pub cache: CacheStatus,
}

/// What the decode cache did in a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache directory was given.
    Disabled,
    /// The pixels were read from this cache data file.
    Hit(PathBuf),
    /// The pixels were decoded and written to this cache data file.
    Written(PathBuf),
    /// The pixels were decoded, but the cache could not be written (why): a warning.
    Unwritable(String),
}

/// Decoded pixels of every class, one contiguous u8 buffer of `[images, C, H, W]`.
#[derive(Debug)]
pub(crate) struct ImageStore {
    pub spec: ImageSpec,
    pub pixels: Vec<u8>,
    pub classes: Vec<StoredClass>,
}

/// Decodes (or reads from the cache) every image of `classes` to `spec`.
pub(crate) fn load_store(
    dataset: &'static str,
    classes: Vec<ClassSources>,
    spec: &ImageSpec,
    cache_dir: Option<&Path>,
) -> Result<(ImageStore, LoadReport)> {
    spec.validate(dataset)?;
    let mut stored = Vec::with_capacity(classes.len());
    let mut first = 0;
    for class in &classes {
        stored.push(StoredClass {
            name: class.name.clone(),
            first,
            count: class.images.len(),
        });
        first += class.images.len();
    }
    let images = first;
    let key = cache::key(dataset, spec, &classes);
    let _decoding = cache_dir.and_then(|dir| cache::lock(dir, dataset, &key));
    if let Some(dir) = cache_dir {
        if let Some((pixels, path)) = cache::read(dir, dataset, &key, spec, &stored) {
            let report = LoadReport {
                images,
                decoded: 0,
                cache: CacheStatus::Hit(path),
            };
            let store = ImageStore {
                spec: spec.clone(),
                pixels,
                classes: stored,
            };
            return Ok((store, report));
        }
    }
    let sources: Vec<&ImageSource> = classes.iter().flat_map(|c| c.images.iter()).collect();
    let pixels = decode_all(dataset, &sources, spec).inspect_err(|_| {
        if let Some(dir) = cache_dir {
            cache::discard_empty(dir, dataset, &key);
        }
    })?;
    let cache = match cache_dir {
        Some(dir) => match cache::write(dir, dataset, &key, spec, &stored, &pixels) {
            Ok(path) => CacheStatus::Written(path),
            // The pixels are in memory: a cache that cannot be written only costs the next load.
            Err(e) => CacheStatus::Unwritable(e.to_string()),
        },
        None => CacheStatus::Disabled,
    };
    let report = LoadReport {
        images,
        decoded: images,
        cache,
    };
    let store = ImageStore {
        spec: spec.clone(),
        pixels,
        classes: stored,
    };
    Ok((store, report))
}

/// A class as episodes see it: a stored class, rotated by `rotation` × 90° counterclockwise (as
/// `numpy.rot90` / `torch.rot90(x, k, [-2, -1])`). Rotations 1..=3 make new classes (Omniglot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRef {
    pub class: usize,
    pub rotation: u8,
}

/// A decoded image dataset: pixels of every class, and per split the classes episodes draw from.
#[derive(Debug)]
pub struct ImageDataset {
    pub(crate) name: &'static str,
    pub(crate) store: ImageStore,
    splits: [Option<Vec<ClassRef>>; 3],
    invert: bool,
    report: LoadReport,
}

impl ImageDataset {
    /// Assembles a dataset; rotations need square images.
    pub(crate) fn new(
        name: &'static str,
        store: ImageStore,
        splits: [Option<Vec<ClassRef>>; 3],
        invert: bool,
        report: LoadReport,
    ) -> Result<ImageDataset> {
        let square = store.spec.height == store.spec.width;
        for refs in splits.iter().flatten() {
            for r in refs {
                if r.class >= store.classes.len() || r.rotation > 3 {
                    return Err(Error::InvalidSetting {
                        what: name,
                        reason: format!("class reference {r:?} out of range"),
                    });
                }
                if r.rotation % 2 == 1 && !square {
                    return Err(Error::InvalidSetting {
                        what: name,
                        reason: format!(
                            "90° rotations need square images, not {}×{}",
                            store.spec.width, store.spec.height
                        ),
                    });
                }
            }
        }
        Ok(ImageDataset {
            name,
            store,
            splits,
            invert,
            report,
        })
    }

    /// The dataset's name in errors ("omniglot", "miniimagenet", "folder").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = &self.store.spec;
        [s.channels as i64, s.height as i64, s.width as i64]
    }

    /// How the load went (decoded images, cache hit or write).
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The classes episodes of `split` draw from.
    pub fn classes(&self, split: Split) -> Result<&[ClassRef]> {
        self.splits[split.index()].as_deref().ok_or(Error::NoSplit {
            dataset: self.name,
            split,
        })
    }

    /// A class's name: the stored class's name, with `@rot90`, `@rot180`, `@rot270` appended for
    /// rotated classes.
    pub fn class_name(&self, class: ClassRef) -> String {
        let base = self
            .store
            .classes
            .get(class.class)
            .map_or("?", |c| c.name.as_str());
        match class.rotation {
            0 => base.to_string(),
            r => format!("{base}@rot{}", 90 * r as u32),
        }
    }

    /// Number of images of a class.
    pub fn class_len(&self, class: ClassRef) -> usize {
        self.store.classes.get(class.class).map_or(0, |c| c.count)
    }

    /// Every image of a class as episodes see them: `[count, C, H, W]` f32.
    pub fn class_images(&self, class: ClassRef) -> Result<Tensor> {
        let stored = self.stored(class)?;
        let bytes = self.store.spec.image_bytes();
        let mut out = vec![0f32; stored.count * bytes];
        for (i, dst) in out.chunks_exact_mut(bytes.max(1)).enumerate() {
            self.write_image(stored.first + i, class.rotation, dst);
        }
        let [c, h, w] = self.image_shape();
        Ok(Tensor::f_from_slice(&out)?.f_view([stored.count as i64, c, h, w])?)
    }

    pub(crate) fn stored(&self, class: ClassRef) -> Result<&StoredClass> {
        self.store
            .classes
            .get(class.class)
            .ok_or_else(|| Error::InvalidSetting {
                what: self.name,
                reason: format!(
                    "class {} out of range (the dataset has {})",
                    class.class,
                    self.store.classes.len()
                ),
            })
    }

    /// Writes stored image `index`, rotated and scaled to f32, into `dst` (`[C, H, W]`).
    pub(crate) fn write_image(&self, index: usize, rotation: u8, dst: &mut [f32]) {
        let spec = &self.store.spec;
        let (h, w) = (spec.height as usize, spec.width as usize);
        let bytes = spec.image_bytes();
        let src = &self.store.pixels[index * bytes..(index + 1) * bytes];
        let scale = |v: u8| {
            let x = v as f32 / 255.0;
            if self.invert {
                1.0 - x
            } else {
                x
            }
        };
        for c in 0..spec.channels {
            let plane = &src[c * h * w..(c + 1) * h * w];
            let out = &mut dst[c * h * w..(c + 1) * h * w];
            for i in 0..h {
                for j in 0..w {
                    // numpy.rot90 with k counterclockwise quarter turns (square when k is odd).
                    let (si, sj) = match rotation {
                        1 => (j, w - 1 - i),
                        2 => (h - 1 - i, w - 1 - j),
                        3 => (h - 1 - j, i),
                        _ => (i, j),
                    };
                    out[i * w + j] = scale(plane[si * w + sj]);
                }
            }
        }
    }
}
