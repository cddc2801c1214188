//! tieredImageNet in Ren et al.'s pickle layout (fixtures written by Python: protocol 2 in
//! Python 2's style, protocol 4 and protocol 5, tests/fixtures/data14/gen_data14.py) and in the
//! folder-per-class layout.

mod data_support;

use std::path::PathBuf;
use std::sync::Arc;

use data_support::{class_names, write_rgb, TempDir};
use metaloop_engine::data::tieredimagenet::{self, TieredImageNetConfig};
use metaloop_engine::data::{FewShot, Split, TaskSource};
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data14/tiered")
}

/// The generator's pixel formula for image `j` of class `label`, [3, 84, 84] in [0, 1].
fn expected(label: i64, j: i64) -> Tensor {
    let opts = (Kind::Int64, Device::Cpu);
    let y = Tensor::arange(84, opts).view([1, 84, 1]);
    let x = Tensor::arange(84, opts).view([1, 1, 84]);
    let c = Tensor::arange(3, opts).view([3, 1, 1]);
    ((y + x * 2 + c * 50 + label * 40 + j * 9)
        .remainder(256)
        .to_kind(Kind::Float))
        / 255.0
}

#[test]
fn pickles_of_every_protocol_load_with_their_classes() {
    let ds = tieredimagenet::load(&TieredImageNetConfig::new(fixture())).unwrap();
    assert_eq!(ds.image_shape(), [3, 84, 84]);
    let names = |s| class_names(&ds, s);
    assert_eq!(
        names(Split::Train),
        ["train/ntrain000", "train/ntrain001", "train/ntrain002"]
    );
    assert_eq!(names(Split::Val), ["val/nval000", "val/nval001"]);
    assert_eq!(names(Split::Test), ["test/ntest000", "test/ntest001"]);
    // PNG decoding exact (84×84 needs no resize); images of a class in file order.
    for (split, per_class) in [(Split::Train, 2), (Split::Val, 3), (Split::Test, 2)] {
        for (label, &class) in ds.classes(split).unwrap().iter().enumerate() {
            assert_eq!(ds.class_len(class), per_class);
            let images = ds.class_images(class).unwrap();
            for j in 0..per_class as i64 {
                if (split, label, j) == (Split::Val, 1, 2) {
                    continue; // the 90×100 image, resized
                }
                let diff = (images.get(j) - expected(label as i64, j))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert_eq!(diff, 0.0, "{split} class {label} image {j}");
            }
        }
    }
    let source = FewShot::new(Arc::new(ds), 2, 1, 1).unwrap();
    let b = source.meta_batch(0, 0, 0..2, Split::Val).unwrap();
    assert_eq!(b.query_x.size(), [2, 2, 3, 84, 84]);
}

#[test]
fn mismatched_labels_and_missing_files_are_errors() {
    let tmp = TempDir::new("tiered");
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    // The val labels of the test split: 4 labels for 6 images.
    std::fs::copy(
        tmp.path().join("test_labels.pkl"),
        tmp.path().join("val_labels.pkl"),
    )
    .unwrap();
    let err = tieredimagenet::load(&TieredImageNetConfig::new(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("val_labels.pkl") && err.contains("4 labels for the 6 images"),
        "{err}"
    );
    std::fs::copy(
        fixture().join("val_labels.pkl"),
        tmp.path().join("val_labels.pkl"),
    )
    .unwrap();
    std::fs::remove_file(tmp.path().join("test_images_png.pkl")).unwrap();
    let err = tieredimagenet::load(&TieredImageNetConfig::new(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("test_images_png.pkl: no such file"), "{err}");
}

#[test]
fn folder_per_class_layout() {
    let tmp = TempDir::new("tiered-folders");
    for (i, split) in ["train", "val", "test"].into_iter().enumerate() {
        for class in 0..2u32 {
            for j in 0..2u32 {
                let path = tmp.path().join(format!("{split}/n{i}{class}/{j}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                write_rgb(&path, 84, 84, class, j);
            }
        }
    }
    let ds = tieredimagenet::load(&TieredImageNetConfig::new(tmp.path())).unwrap();
    assert_eq!(ds.classes(Split::Test).unwrap().len(), 2);
    assert_eq!(ds.image_shape(), [3, 84, 84]);
    let empty = TempDir::new("tiered-none");
    let err = tieredimagenet::load(&TieredImageNetConfig::new(empty.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("train_images_png.pkl"), "{err}");
}
