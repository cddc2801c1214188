//! Helpers for tests/data_*.rs: temporary folders and tiny datasets written as real PNG/JPEG
//! files (and zips) in the on-disk layouts the engine's loaders read.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use tch::Tensor;

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("metaloop-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pattern that differs per (class, drawing) and has no rotational symmetry: a filled
/// rectangle in the top-left part whose size depends on the ids, a diagonal bar, and a dot whose
/// place depends on the drawing.
pub fn pattern(class: u32, drawing: u32, x: u32, y: u32, w: u32, h: u32) -> u8 {
    let (fx, fy) = (x * 100 / w, y * 100 / h);
    let rect = fx < 20 + 7 * (class % 7) && fy < 10 + 5 * (drawing % 5) + 3 * (class / 7);
    let bar = fx.abs_diff(2 * fy / 3 + 10 * (class % 3)) < 6;
    let dot = fx.abs_diff(60 + 8 * drawing) < 8 && fy.abs_diff(70) < 8;
    if rect || bar || dot {
        0 // ink (Omniglot draws black strokes on white)
    } else {
        255
    }
}

pub fn write_gray_png(path: &Path, w: u32, h: u32, class: u32, drawing: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = GrayImage::from_fn(w, h, |x, y| Luma([pattern(class, drawing, x, y, w, h)]));
    img.save(path).unwrap();
}

/// An RGB image whose channels carry different patterns (so a channel mix-up shows).
pub fn rgb_image(w: u32, h: u32, class: u32, drawing: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let p = pattern(class, drawing, x, y, w, h);
        Rgb([
            p,
            ((x * 255) / w.max(1)) as u8,
            (((y + 13 * class) * 255) / (h + 13 * class).max(1)) as u8,
        ])
    })
}

pub fn write_rgb(path: &Path, w: u32, h: u32, class: u32, drawing: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rgb_image(w, h, class, drawing).save(path).unwrap();
}

/// Omniglot's layout: `root/<set>/<alphabet>/<character>/<nn>.png`, 105×105 grayscale.
/// `sets` lists, per set, its alphabets and their character counts. Returns the number of
/// characters written.
pub fn write_omniglot(root: &Path, sets: &[(&str, &[(&str, u32)])], drawings: u32) -> u32 {
    let mut class = 0;
    for (set, alphabets) in sets {
        for (alphabet, characters) in alphabets.iter() {
            for c in 1..=*characters {
                for d in 0..drawings {
                    let path = root
                        .join(set)
                        .join(alphabet)
                        .join(format!("character{c:02}"))
                        .join(format!("{:04}_{:02}.png", class + 1, d + 1));
                    write_gray_png(&path, 105, 105, class, d);
                }
                class += 1;
            }
        }
    }
    class
}

/// Zips `root/<set>` into `out_dir/<set>.zip` with entries `<set>/...` (deflated), as the
/// official Omniglot archives are.
pub fn zip_folder(root: &Path, set: &str, out_dir: &Path) {
    let file = std::fs::File::create(out_dir.join(format!("{set}.zip"))).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut stack = vec![root.join(set)];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        zip.start_file(name, options).unwrap();
        zip.write_all(&std::fs::read(&path).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

/// Max |a − b| over all elements (as f64); shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    if a.numel() == 0 {
        return 0.0;
    }
    let d = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs();
    d.max().double_value(&[])
}

/// Exact equality of shapes, kinds and values.
pub fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
}

/// The names of a split's classes, in the dataset's order.
pub fn class_names(
    ds: &metaloop_engine::data::ImageDataset,
    split: metaloop_engine::data::Split,
) -> Vec<String> {
    ds.classes(split)
        .unwrap()
        .iter()
        .map(|&c| ds.class_name(c))
        .collect()
}

/// A 28×28 "character": a 4×4 grid of 7-pixel blocks, ink where the bits of a hash of the class
/// are set (so every class differs, and its rotations differ from it), each drawing shifted by a
/// pixel and with a few pixels flipped.
pub fn write_character(path: &Path, class: u32, drawing: u32) {
    let mut h = (class as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    let bits = (h & 0xFFFF) as u16 | 0x0001; // at least one block of ink
    let (dx, dy) = (drawing % 2, drawing / 2 % 2);
    let img = image::GrayImage::from_fn(28, 28, |x, y| {
        let (bx, by) = (((x + dx) / 7).min(3), ((y + dy) / 7).min(3));
        let ink = bits >> (by * 4 + bx) & 1 == 1;
        let noise = (x * 31 + y * 17 + drawing * 7 + class) % 23 == 0;
        image::Luma([if ink != noise { 0 } else { 255 }])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// MAML's 5-way 1-shot Conv-4 (8 filters; inner lr 0.4, MAML's Omniglot value) on 28×28 images
/// from the folders `<tmp>/train` and `<tmp>/test` (one folder per class), 3 queries per class,
/// the image cache in `<tmp>/cache`.
pub fn folder_conv4_config(tmp: &Path) -> metaloop_engine::config::TrainConfig {
    use metaloop_engine::config::{Backbone, TaskKind, TrainConfig};
    let mut cfg = TrainConfig::default();
    cfg.task.kind = TaskKind::Folder;
    cfg.task.root = tmp.join("train").display().to_string();
    cfg.task.test_root = Some(tmp.join("test").display().to_string());
    cfg.task.cache_dir = tmp.join("cache").display().to_string();
    cfg.task.ways = 5;
    cfg.task.shots = 1;
    cfg.task.queries = 3;
    cfg.task.image_size = 28;
    cfg.model.backbone = Backbone::Conv4;
    cfg.model.filters = 8;
    cfg.algorithm.inner_lr = 0.4;
    cfg
}
