//! The generic folder-per-class layout, its errors, and the on-disk decode cache.

mod data_support;

use data_support::{same, write_gray_png, write_rgb, TempDir};
use metaloop_engine::data::folder::{self, FolderConfig};
use metaloop_engine::data::images::CacheStatus;
use metaloop_engine::data::{ImageDataset, ImageSpec, Resize, Split};

/// `root/c<k>/<i>.{png,jpg}`: `classes` classes of `per_class` RGB images, PNG and JPEG mixed.
fn write_classes(root: &std::path::Path, classes: u32, per_class: u32, size: (u32, u32)) {
    for k in 0..classes {
        for i in 0..per_class {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let path = root.join(format!("c{k}")).join(format!("{i}.{ext}"));
            write_rgb(&path, size.0, size.1, k, i);
        }
    }
}

fn all_images(ds: &ImageDataset) -> Vec<tch::Tensor> {
    Split::ALL
        .iter()
        .filter_map(|&s| ds.classes(s).ok())
        .flatten()
        .map(|&c| ds.class_images(c).unwrap())
        .collect()
}

#[test]
fn classes_splits_and_shapes() {
    let tmp = TempDir::new("folder");
    write_classes(&tmp.path().join("train"), 4, 3, (40, 32));
    write_classes(&tmp.path().join("test"), 2, 5, (16, 16));
    // Stray files are ignored.
    std::fs::write(tmp.path().join("train/c0/notes.txt"), "not an image").unwrap();
    std::fs::write(tmp.path().join("train/README"), "not a class").unwrap();
    let mut config = FolderConfig::new(tmp.path().join("train"), ImageSpec::rgb(20));
    config.test = Some(tmp.path().join("test"));
    let ds = folder::load(&config).unwrap();
    assert_eq!(ds.image_shape(), [3, 20, 20]);
    assert_eq!(ds.report().images, 4 * 3 + 2 * 5);
    assert_eq!(ds.report().cache, CacheStatus::Disabled);
    let names = |s: Split| -> Vec<String> {
        ds.classes(s)
            .unwrap()
            .iter()
            .map(|&c| ds.class_name(c))
            .collect()
    };
    assert_eq!(
        names(Split::Train),
        ["train/c0", "train/c1", "train/c2", "train/c3"]
    );
    assert_eq!(names(Split::Test), ["test/c0", "test/c1"]);
    let c = ds.classes(Split::Test).unwrap()[1];
    assert_eq!(ds.class_images(c).unwrap().size(), vec![5, 3, 20, 20]);
    assert_eq!(
        ds.classes(Split::Val).unwrap_err().to_string(),
        "folder: no val split"
    );

    // Grayscale with rotations: four classes per folder.
    let mut gray = FolderConfig::new(tmp.path().join("test"), ImageSpec::gray(16));
    gray.rotations = true;
    let ds = folder::load(&gray).unwrap();
    assert_eq!(ds.classes(Split::Train).unwrap().len(), 8);
    assert_eq!(ds.image_shape(), [1, 16, 16]);

    // Rotations need square images.
    let mut oblong = FolderConfig::new(tmp.path().join("test"), ImageSpec::gray(16));
    oblong.spec.width = 12;
    oblong.rotations = true;
    let err = folder::load(&oblong).unwrap_err().to_string();
    assert_eq!(err, "folder: 90° rotations need square images, not 12×16");
}

#[test]
fn errors_name_the_folder_or_file() {
    let tmp = TempDir::new("folder-errors");
    let root = tmp.path().join("data");
    let spec = ImageSpec {
        resize: Resize::Exact,
        ..ImageSpec::gray(28)
    };
    let config = FolderConfig::new(&root, spec);

    let err = folder::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("folder: {}: no such directory", root.display())
    );

    std::fs::create_dir_all(&root).unwrap();
    let err = folder::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "dataset folder {} is empty (expected one folder per class)",
            root.display()
        )
    );

    for k in 0..3 {
        for i in 0..2 {
            write_gray_png(&root.join(format!("c{k}/{i}.png")), 28, 28, k, i);
        }
    }
    assert_eq!(folder::load(&config).unwrap().report().images, 6);

    // An empty class folder.
    let empty = root.join("c3");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("thumbs.db"), "x").unwrap();
    let err = folder::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "class folder {} is empty (expected *.png, *.jpg or *.jpeg images)",
            empty.display()
        )
    );
    std::fs::remove_dir_all(&empty).unwrap();

    // A wrongly sized image while resizing is off.
    let wrong = root.join("c1/a.png");
    write_gray_png(&wrong, 30, 28, 1, 9);
    let err = folder::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: 30×28 image, expected 28×28 (resizing is off)",
            wrong.display()
        )
    );
    std::fs::remove_file(&wrong).unwrap();

    // A corrupt PNG: a valid signature, then garbage.
    let corrupt = root.join("c2/b.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDRgarbage").unwrap();
    let err = folder::load(&config).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: unreadable image: ", corrupt.display())),
        "{err}"
    );
}

#[test]
fn second_load_reads_the_cache() {
    let tmp = TempDir::new("folder-cache");
    let root = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    write_classes(&root, 3, 4, (33, 27));
    let mut config = FolderConfig::new(&root, ImageSpec::rgb(24));
    config.cache_dir = Some(cache.clone());

    let first = folder::load(&config).unwrap();
    assert_eq!(first.report().decoded, 12);
    let CacheStatus::Written(data) = first.report().cache.clone() else {
        panic!("expected a cache write, got {:?}", first.report().cache);
    };
    assert!(data.starts_with(&cache));
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 12 * 3 * 24 * 24);
    assert!(data.with_extension("json").is_file());
    // Atomic writes leave no temporary file behind.
    let files = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(files, 2);

    let second = folder::load(&config).unwrap();
    assert_eq!(second.report().decoded, 0);
    assert_eq!(second.report().cache, CacheStatus::Hit(data.clone()));
    for (a, b) in all_images(&first).iter().zip(all_images(&second).iter()) {
        assert!(same(a, b));
    }

    // The cache answers even when the sources cannot be decoded any more: the decode path is not
    // taken at all. (Same length and mtime, so the key is unchanged.)
    let victim = root.join("c0/0.png");
    let meta = std::fs::metadata(&victim).unwrap();
    let len = meta.len() as usize;
    let mtime = meta.modified().unwrap();
    std::fs::write(&victim, vec![0u8; len]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let third = folder::load(&config).unwrap();
    assert_eq!(third.report().cache, CacheStatus::Hit(data.clone()));

    // A changed source (new content, new size) gives a new key: decoded again.
    write_rgb(&root.join("c0/0.png"), 35, 27, 7, 7);
    let fourth = folder::load(&config).unwrap();
    assert_eq!(fourth.report().decoded, 12);
    assert!(matches!(&fourth.report().cache, CacheStatus::Written(p) if p != &data));

    // A different target size is a different cache entry too.
    let mut small = config.clone();
    small.spec = ImageSpec::rgb(8);
    assert_eq!(folder::load(&small).unwrap().report().decoded, 12);

    // A truncated cache data file is ignored and rewritten.
    let CacheStatus::Written(latest) = fourth.report().cache.clone() else {
        unreachable!()
    };
    std::fs::write(&latest, b"short").unwrap();
    let fifth = folder::load(&config).unwrap();
    assert_eq!(fifth.report().decoded, 12);
    assert_eq!(fifth.report().cache, CacheStatus::Written(latest.clone()));
    let sixth = folder::load(&config).unwrap();
    assert_eq!(sixth.report().cache, CacheStatus::Hit(latest));
    for (a, b) in all_images(&fourth).iter().zip(all_images(&sixth).iter()) {
        assert!(same(a, b));
    }
}
