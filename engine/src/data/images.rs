//! Image datasets held in memory as decoded u8 pixels, and N-way K-shot episodes drawn from them.
//!
//! The format loaders ([`super::omniglot`], [`super::miniimagenet`], [`super::folder`]) list a
//! dataset's classes and image files; [`load_store`] decodes them in parallel with rayon, resizes
//! them to the target size, and reads/writes the on-disk decode cache ([`super::cache`]).
//! [`FewShot`] turns an [`ImageDataset`] into a [`TaskSource`].
//!
//! Pixels in episodes are f32 in `[0, 1]` (`value / 255`), or `1 − value / 255` for datasets that
//! invert (Omniglot: ink is 1, paper is 0, as in MAML's data generator); no mean/std
//! normalization. Layout is `[C, H, W]`. This module must not print or touch devices.

use std::collections::hash_map::{Entry, HashMap};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::imageops::FilterType;
use rayon::prelude::*;
use tch::Tensor;

use super::{cache, MetaBatch, Split, TaskRng, TaskSource};
use crate::{Error, Result};

/// The largest image file or zip entry read, in bytes: a larger one is an error (exit code 2),
/// never an allocation of the size an archive claims.
pub(crate) const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// The most bytes the image entries of one zip archive may unpack to, together.
pub(crate) const MAX_ZIP_TOTAL_BYTES: u64 = 16 << 30;
/// The largest decoded image: its width and height, and the memory its pixels take.
const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_DECODED_BYTES: u64 = 512 << 20;
/// Images read (zip entries) and decoded per step: what one load holds in memory at once.
const DECODE_BATCH: usize = 1024;

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

/// How source images are brought to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Lanczos (a = 3) with the kernel widened by the scale factor when shrinking (antialiased),
    /// the `image` crate's `FilterType::Lanczos3`; the counterpart of PIL's `LANCZOS`/`ANTIALIAS`
    /// that MAML used. Values are rounded and clamped to u8.
    Lanczos3,
    /// Bilinear (triangle filter, antialiased when shrinking).
    Bilinear,
    /// No resizing: every source image must already have the target size.
    Exact,
}

impl Resize {
    fn tag(self) -> &'static str {
        match self {
            Resize::Lanczos3 => "lanczos3",
            Resize::Bilinear => "bilinear",
            Resize::Exact => "exact",
        }
    }
}

/// What the decoded images look like: channels (1 = grayscale, 3 = RGB), target height and
/// width, the resize filter, and the source sizes (width, height) the dataset allows (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub channels: usize,
    pub height: u32,
    pub width: u32,
    pub resize: Resize,
    pub source_sizes: Vec<(u32, u32)>,
}

impl ImageSpec {
    /// Grayscale `size`×`size`, Lanczos3, any source size.
    pub fn gray(size: u32) -> ImageSpec {
        ImageSpec {
            channels: 1,
            height: size,
            width: size,
            resize: Resize::Lanczos3,
            source_sizes: Vec::new(),
        }
    }

    /// RGB `size`×`size`, Lanczos3, any source size.
    pub fn rgb(size: u32) -> ImageSpec {
        ImageSpec {
            channels: 3,
            ..ImageSpec::gray(size)
        }
    }

    /// Bytes of one decoded image.
    pub fn image_bytes(&self) -> usize {
        self.channels
            .saturating_mul(self.height as usize)
            .saturating_mul(self.width as usize)
    }

    /// A stable text form, hashed into the decode cache's key.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "c{} h{} w{} {} sizes{:?}",
            self.channels,
            self.height,
            self.width,
            self.resize.tag(),
            self.source_sizes
        )
    }

    fn validate(&self, dataset: &'static str) -> Result<()> {
        let sides = 1..=MAX_IMAGE_SIDE;
        if !(self.channels == 1 || self.channels == 3)
            || !sides.contains(&self.height)
            || !sides.contains(&self.width)
        {
            return Err(Error::InvalidSetting {
                what: dataset,
                reason: format!(
                    "image spec {}×{}×{} (expected 1 or 3 channels and sides of 1 to {MAX_IMAGE_SIDE})",
                    self.channels, self.height, self.width
                ),
            });
        }
        Ok(())
    }

    fn expected_size_text(&self) -> String {
        let target = format!("{}×{}", self.width, self.height);
        if !self.source_sizes.is_empty() {
            let sizes: Vec<String> = self
                .source_sizes
                .iter()
                .map(|(w, h)| format!("{w}×{h}"))
                .collect();
            format!("{} (to be resized to {target})", sizes.join(" or "))
        } else {
            format!("{target} (resizing is off)")
        }
    }
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

/// One class of a dataset as listed by a loader: its name (unique in the dataset) and images.
#[derive(Debug, Clone)]
pub(crate) struct ClassSources {
    pub name: String,
    pub images: Vec<ImageSource>,
}

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

/// One stored class: its name and its images' range in the pixel buffer.
#[derive(Debug, Clone)]
pub(crate) struct StoredClass {
    pub name: String,
    pub first: usize,
    pub count: usize,
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
    let pixels = decode_all(dataset, &sources, spec)?;
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

fn unreachable_zip(source: &ImageSource) -> Result<&'static [u8]> {
    Err(Error::UnreadableImage {
        path: source.display(),
        reason: "zip entry was not read".into(),
    })
}

/// Decodes `sources` into one `[images, C, H, W]` buffer, `DECODE_BATCH` images at a time: the
/// zip entries of a batch are read (bounded) and decoded in parallel before the next batch.
fn decode_all(
    dataset: &'static str,
    sources: &[&ImageSource],
    spec: &ImageSpec,
) -> Result<Vec<u8>> {
    let one = spec.image_bytes();
    let total = sources
        .len()
        .checked_mul(one)
        .ok_or_else(|| Error::InvalidSetting {
            what: dataset,
            reason: format!(
                "{} images of {one} bytes do not fit in memory",
                sources.len()
            ),
        })?;
    let mut pixels = vec![0u8; total];
    if sources.is_empty() {
        return Ok(pixels);
    }
    let mut archives = HashMap::new();
    for (out, batch) in pixels
        .chunks_mut(DECODE_BATCH * one)
        .zip(sources.chunks(DECODE_BATCH))
    {
        let zipped = read_zip_entries(batch, &mut archives)?;
        out.par_chunks_mut(one)
            .zip(batch.par_iter().zip(zipped.par_iter()))
            .try_for_each(|(out, (source, bytes))| -> Result<()> {
                let owned;
                let bytes: &[u8] = match (bytes, &source.origin) {
                    (Some(b), _) => b,
                    (None, Origin::File(path)) => {
                        owned = read_image_file(source, path)?;
                        &owned
                    }
                    (None, Origin::Zip { .. }) => unreachable_zip(source)?,
                };
                decode_into(source, bytes, spec, out)
            })?;
    }
    Ok(pixels)
}

/// Reads an image file of at most [`MAX_IMAGE_FILE_BYTES`].
fn read_image_file(source: &ImageSource, path: &Path) -> Result<Vec<u8>> {
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
type Archives = HashMap<Arc<PathBuf>, zip::ZipArchive<std::fs::File>>;

/// Reads the zip entries among `sources`, each bounded by [`MAX_IMAGE_FILE_BYTES`]; `None` for
/// plain files, which the parallel decoder reads itself.
fn read_zip_entries(
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

/// Decodes one image, checks its source size, converts it to the spec's channels, resizes it and
/// writes it as `[C, H, W]` u8 into `out`.
fn decode_into(source: &ImageSource, bytes: &[u8], spec: &ImageSpec, out: &mut [u8]) -> Result<()> {
    decode_bytes(&source.display(), bytes, spec, out)
}

/// [`decode_into`] for an encoded image held in memory (e.g. one entry of a pickle), named
/// `what` in errors.
pub(crate) fn decode_bytes(
    what: &str,
    bytes: &[u8],
    spec: &ImageSpec,
    out: &mut [u8],
) -> Result<()> {
    let unreadable = |e: image::ImageError| Error::UnreadableImage {
        path: what.to_string(),
        reason: e.to_string(),
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(e.into()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(unreadable)?;
    let (w, h) = (img.width(), img.height());
    let target = (spec.width, spec.height);
    let allowed = if spec.source_sizes.is_empty() {
        spec.resize != Resize::Exact || (w, h) == target
    } else {
        spec.source_sizes.contains(&(w, h))
    };
    if !allowed {
        return Err(Error::ImageSize {
            path: what.to_string(),
            width: w,
            height: h,
            expected: spec.expected_size_text(),
        });
    }
    let filter = match spec.resize {
        Resize::Bilinear => FilterType::Triangle,
        Resize::Lanczos3 | Resize::Exact => FilterType::Lanczos3,
    };
    let plane = (spec.height * spec.width) as usize;
    if spec.channels == 1 {
        let mut gray = img.to_luma8();
        if (w, h) != target {
            gray = image::imageops::resize(&gray, spec.width, spec.height, filter);
        }
        out.copy_from_slice(gray.as_raw());
    } else {
        let mut rgb = img.to_rgb8();
        if (w, h) != target {
            rgb = image::imageops::resize(&rgb, spec.width, spec.height, filter);
        }
        // HWC (interleaved) to CHW (planar).
        for (p, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = px[c];
            }
        }
    }
    Ok(())
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
    name: &'static str,
    store: ImageStore,
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

    fn stored(&self, class: ClassRef) -> Result<&StoredClass> {
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
    fn write_image(&self, index: usize, rotation: u8, dst: &mut [f32]) {
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

/// N-way K-shot classification episodes over an [`ImageDataset`]: each task picks `ways` distinct
/// classes of the split (label = order of drawing), then `shots + queries` distinct images of each
/// class: the first `shots` go to the support set, the rest to the query set. Draw order from the
/// task's stream: the classes, then each class's images in label order.
#[derive(Debug, Clone)]
pub struct FewShot {
    dataset: Arc<ImageDataset>,
    ways: usize,
    shots: usize,
    queries: usize,
}

impl FewShot {
    /// `ways` classes per task, `shots` support and `queries` query images per class (all > 0).
    pub fn new(
        dataset: Arc<ImageDataset>,
        ways: usize,
        shots: usize,
        queries: usize,
    ) -> Result<FewShot> {
        if ways == 0 || shots == 0 || queries == 0 {
            return Err(Error::InvalidSetting {
                what: "few-shot episodes",
                reason: format!(
                    "ways ({ways}), shots ({shots}) and queries ({queries}) must all be > 0"
                ),
            });
        }
        Ok(FewShot {
            dataset,
            ways,
            shots,
            queries,
        })
    }

    /// Checks the whole dataset against the episodes at once, before any is drawn: every split
    /// it has holds at least `ways` classes, each with at least `shots + queries` images. (An
    /// episode checks only what it draws, possibly after a run has started.)
    pub fn check_whole(&self) -> Result<()> {
        self.check_splits(&Split::ALL)
    }

    /// [`FewShot::check_whole`] for the splits `splits` (those the dataset has).
    pub fn check_splits(&self, splits: &[Split]) -> Result<()> {
        for &split in splits {
            let Ok(classes) = self.dataset.classes(split) else {
                continue;
            };
            self.split_classes(split)?;
            for &class in classes {
                self.episode_class(class)?;
            }
        }
        Ok(())
    }

    /// The dataset episodes are drawn from.
    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    /// The classes task `task` draws, in label order (label `i` is element `i`).
    pub fn task_classes(
        &self,
        seed: u64,
        iteration: u64,
        task: usize,
        split: Split,
    ) -> Result<Vec<ClassRef>> {
        let classes = self.split_classes(split)?;
        let mut rng = TaskRng::for_task(seed, split, iteration, task);
        Ok(rng
            .choose_distinct(classes.len(), self.ways)
            .into_iter()
            .map(|i| classes[i])
            .collect())
    }

    fn split_classes(&self, split: Split) -> Result<&[ClassRef]> {
        let classes = self.dataset.classes(split)?;
        if classes.len() < self.ways {
            return Err(Error::TooFewClasses {
                dataset: self.dataset.name,
                split,
                classes: classes.len(),
                ways: self.ways,
            });
        }
        Ok(classes)
    }

    /// The stored class of `class`, if it has the `shots + queries` images an episode takes.
    fn episode_class(&self, class: ClassRef) -> Result<&StoredClass> {
        let stored = self.dataset.stored(class)?;
        let needed = self.shots + self.queries;
        if stored.count < needed {
            return Err(Error::TooFewImages {
                dataset: self.dataset.name,
                class: self.dataset.class_name(class),
                images: stored.count,
                needed,
            });
        }
        Ok(stored)
    }

    /// Fills one task's support and query pixels.
    fn fill(
        &self,
        classes: &[ClassRef],
        mut rng: TaskRng,
        support: &mut [f32],
        query: &mut [f32],
    ) -> Result<()> {
        let bytes = self.dataset.store.spec.image_bytes();
        let per_class = self.shots + self.queries;
        let chosen = rng.choose_distinct(classes.len(), self.ways);
        for (label, &ci) in chosen.iter().enumerate() {
            let class = classes[ci];
            let stored = self.episode_class(class)?;
            for (j, pick) in rng
                .choose_distinct(stored.count, per_class)
                .into_iter()
                .enumerate()
            {
                let dst = if j < self.shots {
                    let at = (label * self.shots + j) * bytes;
                    &mut support[at..at + bytes]
                } else {
                    let at = (label * self.queries + j - self.shots) * bytes;
                    &mut query[at..at + bytes]
                };
                self.dataset
                    .write_image(stored.first + pick, class.rotation, dst);
            }
        }
        Ok(())
    }
}

impl TaskSource for FewShot {
    fn meta_batch(
        &self,
        seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> Result<MetaBatch> {
        let classes = self.split_classes(split)?;
        let bytes = self.dataset.store.spec.image_bytes();
        let t = tasks.len();
        let n_support = self.ways * self.shots;
        let n_query = self.ways * self.queries;
        let mut support = vec![0f32; t * n_support * bytes];
        let mut query = vec![0f32; t * n_query * bytes];
        if t > 0 && bytes > 0 {
            support
                .par_chunks_mut(n_support * bytes)
                .zip(query.par_chunks_mut(n_query * bytes))
                .enumerate()
                .try_for_each(|(i, (s, q))| {
                    let rng = TaskRng::for_task(seed, split, iteration, tasks.start + i);
                    self.fill(classes, rng, s, q)
                })?;
        }
        let labels = |per_class: usize| -> Vec<i64> {
            let one: Vec<i64> = (0..self.ways as i64)
                .flat_map(|l| std::iter::repeat_n(l, per_class))
                .collect();
            one.repeat(t)
        };
        let [c, h, w] = self.dataset.image_shape();
        let (t, ns, nq) = (t as i64, n_support as i64, n_query as i64);
        Ok(MetaBatch {
            support_x: Tensor::f_from_slice(&support)?.f_view([t, ns, c, h, w])?,
            support_y: Tensor::f_from_slice(&labels(self.shots))?.f_view([t, ns])?,
            query_x: Tensor::f_from_slice(&query)?.f_view([t, nq, c, h, w])?,
            query_y: Tensor::f_from_slice(&labels(self.queries))?.f_view([t, nq])?,
            iteration,
            tasks,
        })
    }

    fn input_shape(&self) -> Vec<i64> {
        self.dataset.image_shape().to_vec()
    }

    fn num_outputs(&self) -> usize {
        self.ways
    }

    /// The same dataset and queries, `ways` classes and `shots` support images per class; the
    /// val and test splits are checked for them.
    fn reshaped(&self, ways: usize, shots: usize) -> Result<Arc<dyn TaskSource>> {
        let episodes = FewShot::new(self.dataset.clone(), ways, shots, self.queries)?;
        episodes.check_splits(&[Split::Val, Split::Test])?;
        Ok(Arc::new(episodes))
    }
}
