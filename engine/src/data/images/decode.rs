//! Decoding: every source image of a load, in parallel batches, converted to the spec's
//! channels and resized. It keeps nothing between loads.

use std::collections::HashMap;

use image::imageops::FilterType;
use rayon::prelude::*;

use super::archive::{read_image_file, read_zip_entries, ImageSource, Origin};
use super::spec::{ImageSpec, Resize, MAX_IMAGE_SIDE};
use crate::{Error, Result};

/// The memory the pixels of the largest decoded image take.
const MAX_DECODED_BYTES: u64 = 512 << 20;
/// Images read (zip entries) and decoded per step: what one load holds in memory at once.
const DECODE_BATCH: usize = 1024;

fn unreachable_zip(source: &ImageSource) -> Result<&'static [u8]> {
    Err(Error::UnreadableImage {
        path: source.display(),
        reason: "zip entry was not read".into(),
    })
}

/// Decodes `sources` into one `[images, C, H, W]` buffer, `DECODE_BATCH` images at a time: the
/// zip entries of a batch are read (bounded) and decoded in parallel before the next batch.
pub(crate) fn decode_all(
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
