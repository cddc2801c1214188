//! What a dataset's images are: the target [`ImageSpec`], the classes a loader lists and the
//! classes the store holds. It reads and decodes nothing.

use super::archive::ImageSource;
use crate::{Error, Result};

/// The largest decoded image's width and height.
pub(crate) const MAX_IMAGE_SIDE: u32 = 16_384;

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

    pub(crate) fn validate(&self, dataset: &'static str) -> Result<()> {
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

    pub(crate) fn expected_size_text(&self) -> String {
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

/// One class of a dataset as listed by a loader: its name (unique in the dataset) and images.
#[derive(Debug, Clone)]
pub(crate) struct ClassSources {
    pub name: String,
    pub images: Vec<ImageSource>,
}

/// One stored class: its name and its images' range in the pixel buffer.
#[derive(Debug, Clone)]
pub(crate) struct StoredClass {
    pub name: String,
    pub first: usize,
    pub count: usize,
}
