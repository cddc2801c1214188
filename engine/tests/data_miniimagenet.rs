//! miniImageNet loader (Ravi & Larochelle layout): CSV splits, 84×84 RGB JPEGs, and its errors.

mod data_support;

use std::sync::Arc;

use data_support::{max_abs_diff, write_rgb, TempDir};
use metaloop_engine::data::miniimagenet::{self, MiniImageNetConfig};
use metaloop_engine::data::{FewShot, Split, TaskSource};
use tch::Tensor;

/// (split, labels): 3 train, 2 val, 2 test classes of 4 JPEGs each, of assorted sizes.
const SPLITS: [(&str, &[&str]); 3] = [
    ("train", &["n0153", "n0121", "n0177"]),
    ("val", &["n0211", "n0299"]),
    ("test", &["n0301", "n0388"]),
];
const PER_CLASS: u32 = 4;

fn write_dataset(root: &std::path::Path) {
    let mut class = 0;
    for (split, labels) in SPLITS {
        let mut csv = String::from("filename,label\n");
        for label in labels {
            for i in 0..PER_CLASS {
                let file = format!("{label}{:08}.jpg", i + 1);
                // Assorted sizes, as ImageNet's are.
                write_rgb(
                    &root.join("images").join(&file),
                    90 + 10 * i,
                    84 + 7 * class,
                    class,
                    i,
                );
                csv.push_str(&format!("{file},{label}\n"));
            }
            class += 1;
        }
        std::fs::write(root.join(format!("{split}.csv")), csv).unwrap();
    }
}

#[test]
fn splits_classes_and_shapes() {
    let tmp = TempDir::new("mini");
    write_dataset(tmp.path());
    let ds = Arc::new(miniimagenet::load(&MiniImageNetConfig::new(tmp.path())).unwrap());
    assert_eq!(ds.image_shape(), [3, 84, 84]);
    assert_eq!(ds.report().images, 7 * PER_CLASS as usize);
    for (split, (name, labels)) in Split::ALL.into_iter().zip(SPLITS) {
        let names: Vec<String> = ds
            .classes(split)
            .unwrap()
            .iter()
            .map(|&c| ds.class_name(c))
            .collect();
        let mut expected: Vec<String> = labels.iter().map(|l| format!("{name}/{l}")).collect();
        expected.sort();
        assert_eq!(names, expected, "{split}");
        for &c in ds.classes(split).unwrap() {
            assert_eq!(ds.class_len(c), PER_CLASS as usize);
        }
    }

    // One image against an independent decode: RGB, Lanczos3 to 84×84, CHW, /255.
    let class = ds.classes(Split::Train).unwrap()[0]; // train/n0121, the second class written
    let file = tmp.path().join("images/n012100000002.jpg");
    let rgb = image::open(&file).unwrap().to_rgb8();
    let small = image::imageops::resize(&rgb, 84, 84, image::imageops::FilterType::Lanczos3);
    let hwc: Vec<f32> = small.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let reference = Tensor::from_slice(&hwc)
        .view([84, 84, 3])
        .permute([2, 0, 1]);
    let got = ds.class_images(class).unwrap().get(1);
    // Same decode path, f32 division: 1e-6.
    assert!(max_abs_diff(&got, &reference) < 1e-6);

    let source = FewShot::new(ds.clone(), 2, 1, 3).unwrap();
    assert_eq!(source.input_shape(), vec![3, 84, 84]);
    for split in Split::ALL {
        let b = source.meta_batch(5, 0, 0..3, split).unwrap();
        assert_eq!(b.support_x.size(), vec![3, 2, 3, 84, 84]);
        assert_eq!(b.query_x.size(), vec![3, 6, 3, 84, 84]);
        assert_eq!(b.query_y.size(), vec![3, 6]);
        assert!(b.support_x.min().double_value(&[]) >= 0.0);
        assert!(b.support_x.max().double_value(&[]) <= 1.0);
    }
    // Val has two classes only.
    let err = FewShot::new(ds, 3, 1, 1)
        .unwrap()
        .meta_batch(0, 0, 0..1, Split::Val)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "miniimagenet: the val split has 2 classes, an episode needs 3 (ways)"
    );
}

#[test]
fn errors_name_the_csv_line_and_file() {
    let tmp = TempDir::new("mini-errors");
    let config = MiniImageNetConfig::new(tmp.path());
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "miniimagenet: {}: no such directory",
            tmp.path().join("images").display()
        )
    );

    write_dataset(tmp.path());
    let train = tmp.path().join("train.csv");
    let good = std::fs::read_to_string(&train).unwrap();

    // A row naming a file that is not in images/: line 3 (the header is line 1).
    let mut lines: Vec<&str> = good.lines().collect();
    lines[2] = "n0000missing.jpg,n0153";
    std::fs::write(&train, lines.join("\n")).unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "miniimagenet: {} line 3 names images/n0000missing.jpg, which does not exist",
            train.display()
        )
    );

    // A row naming a path outside images/ (line 4).
    let mut lines: Vec<&str> = good.lines().collect();
    lines[3] = "../train.csv,n0153";
    std::fs::write(&train, lines.join("\n")).unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "miniimagenet: {} line 4: \"../train.csv\" is not a plain file name inside images/",
            train.display()
        )
    );

    // A bad header.
    std::fs::write(&train, good.replacen("filename,label", "file,class", 1)).unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "miniimagenet: {}: header is \"file,class\", expected \"filename,label\"",
            train.display()
        )
    );

    // A row with three fields.
    std::fs::write(&train, format!("{good}a.jpg,b,c\n")).unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert!(
        err.contains("line 14: \"a.jpg,b,c\" is not `filename,label`"),
        "{err}"
    );

    // A missing CSV.
    std::fs::write(&train, &good).unwrap();
    std::fs::remove_file(tmp.path().join("test.csv")).unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "miniimagenet: {}: no such file",
            tmp.path().join("test.csv").display()
        )
    );

    // A corrupt JPEG.
    std::fs::write(&train, &good).unwrap();
    let test_csv = "filename,label\nn030100000001.jpg,n0301\nn030100000002.jpg,n0301\n";
    std::fs::write(tmp.path().join("test.csv"), test_csv).unwrap();
    let corrupt = tmp.path().join("images/n030100000002.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let err = miniimagenet::load(&config).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: unreadable image: ", corrupt.display())),
        "{err}"
    );
}
