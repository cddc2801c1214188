//! Image datasets held in memory as decoded u8 pixels, and N-way K-shot episodes drawn from them.
//!
//! The format loaders ([`super::omniglot`], [`super::miniimagenet`], [`super::folder`]) list a
//! dataset's classes and image files; [`load_store`] decodes them in parallel with rayon, resizes
//! them to the target size, and reads/writes the on-disk decode cache ([`super::cache`]).
//! [`FewShot`] turns an [`ImageDataset`] into a [`TaskSource`](super::TaskSource).
//!
//! One job per file: `archive` reads source files and zip entries with bounds, `decode` turns
//! them into pixels, `store` holds the pixels and the dataset, `episodes` draws tasks. `spec`
//! describes the images, below all of them and below the cache.
//!
//! Pixels in episodes are f32 in `[0, 1]` (`value / 255`), or `1 − value / 255` for datasets that
//! invert (Omniglot: ink is 1, paper is 0, as in MAML's data generator); no mean/std
//! normalization. Layout is `[C, H, W]`. This module must not print or touch devices.

mod archive;
mod decode;
mod episodes;
mod spec;
mod store;

pub(crate) use archive::{check_zip_entry, mtime_ns, open_zip, ImageSource, Origin};
pub(crate) use decode::decode_bytes;
pub use episodes::FewShot;
pub(crate) use spec::{ClassSources, StoredClass};
pub use spec::{ImageSpec, Resize};
pub(crate) use store::{load_store, ImageStore};
pub use store::{CacheStatus, ClassRef, ImageDataset, LoadReport};
