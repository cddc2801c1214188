//! Omniglot loader: the standard folder layout and its zips, MAML's split, rotation classes,
//! 28×28 inverted grayscale, N-way K-shot episodes, and its errors.

mod data_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use data_support::{max_abs_diff, same, write_gray_png, write_omniglot, zip_folder, TempDir};
use metaloop_engine::data::omniglot::{self, OmniglotConfig};
use metaloop_engine::data::{ClassRef, FewShot, ImageDataset, Split, TaskRng, TaskSource};
use tch::{Kind, Tensor};

const SETS: &[(&str, &[(&str, u32)])] = &[
    ("images_background", &[("Alpha", 3), ("Beta", 2)]),
    ("images_evaluation", &[("Gamma", 3)]),
];
const DRAWINGS: u32 = 3;

fn config(root: &std::path::Path) -> OmniglotConfig {
    OmniglotConfig {
        train_characters: 4,
        val_characters: 2,
        ..OmniglotConfig::new(root)
    }
}

fn base_name(ds: &ImageDataset, class: ClassRef) -> String {
    ds.class_name(ClassRef {
        class: class.class,
        rotation: 0,
    })
}

/// The source PNGs of a character, decoded, resized and inverted independently of the loader's
/// code path: `[drawings, 28, 28]` in f32.
fn reference_images(root: &std::path::Path, character: &str) -> Vec<Vec<f32>> {
    let dir = root.join(character);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let gray = image::open(f).unwrap().to_luma8();
            let small =
                image::imageops::resize(&gray, 28, 28, image::imageops::FilterType::Lanczos3);
            small
                .as_raw()
                .iter()
                .map(|&v| 1.0 - v as f32 / 255.0)
                .collect()
        })
        .collect()
}

/// numpy.rot90(a, 1) of a 28×28 row-major image: out[i][j] = a[j][27 − i].
fn rot90_ccw(a: &[f32]) -> Vec<f32> {
    let n = 28;
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = a[j * n + (n - 1 - i)];
        }
    }
    out
}

#[test]
fn folders_give_maml_split_with_rotation_classes() {
    let tmp = TempDir::new("omniglot");
    let characters = write_omniglot(tmp.path(), SETS, DRAWINGS);
    assert_eq!(characters, 8);
    let ds = omniglot::load(&config(tmp.path())).unwrap();
    assert_eq!(ds.image_shape(), [1, 28, 28]);
    assert_eq!(ds.report().images, 8 * DRAWINGS as usize);
    assert_eq!(ds.report().decoded, 8 * DRAWINGS as usize);

    // Four rotation classes per character: 4, 2 and 2 characters.
    let sizes: Vec<usize> = Split::ALL
        .iter()
        .map(|&s| ds.classes(s).unwrap().len())
        .collect();
    assert_eq!(sizes, vec![16, 8, 8]);

    // The documented split: names sorted, shuffled with TaskRng::from_seed(1), 4 / 2 / rest.
    let mut names = Vec::new();
    for (set, alphabets) in SETS {
        for (alphabet, n) in alphabets.iter() {
            for c in 1..=*n {
                names.push(format!("{set}/{alphabet}/character{c:02}"));
            }
        }
    }
    names.sort();
    let mut order: Vec<usize> = (0..names.len()).collect();
    TaskRng::from_seed(1).shuffle(&mut order);
    let expected: Vec<BTreeSet<String>> = [0..4, 4..6, 6..8]
        .into_iter()
        .map(|r| order[r].iter().map(|&i| names[i].clone()).collect())
        .collect();
    for (split, expected) in Split::ALL.into_iter().zip(&expected) {
        let classes = ds.classes(split).unwrap();
        let got: BTreeSet<String> = classes.iter().map(|&c| base_name(&ds, c)).collect();
        assert_eq!(&got, expected, "{split} characters");
        for name in &got {
            let rotations: BTreeSet<u8> = classes
                .iter()
                .filter(|&&c| &base_name(&ds, c) == name)
                .map(|c| c.rotation)
                .collect();
            assert_eq!(rotations, BTreeSet::from([0, 1, 2, 3]), "{name}");
        }
    }

    // Pixels: the loader's images equal an independent decode (Lanczos3 to 28×28, inverted), and
    // the 90° class equals the source rotated by numpy.rot90.
    let class = ds.classes(Split::Train).unwrap()[0];
    let upright = ClassRef {
        class: class.class,
        rotation: 0,
    };
    let rotated = ClassRef {
        class: class.class,
        rotation: 1,
    };
    let reference = reference_images(tmp.path(), &base_name(&ds, class));
    let flat = |v: &[Vec<f32>]| Tensor::from_slice(&v.concat()).view([v.len() as i64, 1, 28, 28]);
    let got_upright = ds.class_images(upright).unwrap();
    let got_rotated = ds.class_images(rotated).unwrap();
    // Exact decode path, f32 division: 1e-6.
    assert!(max_abs_diff(&got_upright, &flat(&reference)) < 1e-6);
    let reference_rotated: Vec<Vec<f32>> = reference.iter().map(|a| rot90_ccw(a)).collect();
    assert!(max_abs_diff(&got_rotated, &flat(&reference_rotated)) < 1e-6);
    assert!(same(&got_rotated, &got_upright.rot90(1, [-2, -1])));
    assert!(
        !same(&got_rotated, &got_upright),
        "the pattern has no rotational symmetry"
    );
    let r180 = ds
        .class_images(ClassRef {
            class: class.class,
            rotation: 2,
        })
        .unwrap();
    assert!(same(&r180, &got_upright.rot90(2, [-2, -1])));
    // Inverted: ink (black in the PNG) is 1, paper 0; both present.
    assert_eq!(got_upright.max().double_value(&[]), 1.0);
    assert_eq!(got_upright.min().double_value(&[]), 0.0);
}

#[test]
fn episodes_hold_images_of_their_classes() {
    let tmp = TempDir::new("omniglot-episodes");
    write_omniglot(tmp.path(), SETS, DRAWINGS);
    let ds = Arc::new(omniglot::load(&config(tmp.path())).unwrap());
    let (ways, shots, queries) = (5, 1, 2);
    let source = FewShot::new(ds.clone(), ways, shots, queries).unwrap();
    assert_eq!(source.input_shape(), vec![1, 28, 28]);
    assert_eq!(source.num_outputs(), 5);
    let batch = source.meta_batch(7, 3, 0..4, Split::Train).unwrap();
    assert_eq!(batch.support_x.size(), vec![4, 5, 1, 28, 28]);
    assert_eq!(batch.support_y.size(), vec![4, 5]);
    assert_eq!(batch.query_x.size(), vec![4, 10, 1, 28, 28]);
    assert_eq!(batch.query_y.size(), vec![4, 10]);
    assert_eq!(batch.support_x.kind(), Kind::Float);
    assert_eq!(batch.support_y.kind(), Kind::Int64);
    let sy: Vec<i64> = Vec::try_from(batch.support_y.get(2)).unwrap();
    let qy: Vec<i64> = Vec::try_from(batch.query_y.get(2)).unwrap();
    assert_eq!(sy, vec![0, 1, 2, 3, 4]);
    assert_eq!(qy, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);

    for t in 0..4 {
        let classes = source.task_classes(7, 3, t, Split::Train).unwrap();
        let distinct: BTreeSet<_> = classes.iter().map(|c| (c.class, c.rotation)).collect();
        assert_eq!(distinct.len(), ways, "distinct classes in task {t}");
        for (label, &class) in classes.iter().enumerate() {
            let images = ds.class_images(class).unwrap();
            let find = |x: &Tensor| -> usize {
                let hits: Vec<usize> = (0..images.size()[0])
                    .filter(|&i| same(&images.get(i), x))
                    .map(|i| i as usize)
                    .collect();
                assert_eq!(hits.len(), 1, "task {t} label {label}: one matching image");
                hits[0]
            };
            let s = find(&batch.support_x.get(t as i64).get(label as i64));
            let mut picked = BTreeSet::from([s]);
            for q in 0..queries {
                let row = (label * queries + q) as i64;
                picked.insert(find(&batch.query_x.get(t as i64).get(row)));
            }
            assert_eq!(
                picked.len(),
                shots + queries,
                "distinct support/query images"
            );
        }
    }
}

#[test]
fn zips_give_the_same_dataset_as_folders() {
    let tmp = TempDir::new("omniglot-zip");
    let folders = tmp.path().join("folders");
    let zips = tmp.path().join("zips");
    std::fs::create_dir_all(&zips).unwrap();
    write_omniglot(&folders, SETS, DRAWINGS);
    for set in omniglot::SETS {
        zip_folder(&folders, set, &zips);
    }
    let a = omniglot::load(&config(&folders)).unwrap();
    let b = omniglot::load(&config(&zips)).unwrap();
    assert_eq!(b.report().images, 8 * DRAWINGS as usize);
    for split in Split::ALL {
        let (ca, cb) = (a.classes(split).unwrap(), b.classes(split).unwrap());
        assert_eq!(ca, cb);
        for &class in ca {
            assert_eq!(a.class_name(class), b.class_name(class));
            assert!(same(
                &a.class_images(class).unwrap(),
                &b.class_images(class).unwrap()
            ));
        }
    }
    let (fa, fb) = (
        FewShot::new(Arc::new(a), 3, 1, 1).unwrap(),
        FewShot::new(Arc::new(b), 3, 1, 1).unwrap(),
    );
    let (ea, eb) = (
        fa.meta_batch(1, 0, 0..3, Split::Val).unwrap(),
        fb.meta_batch(1, 0, 0..3, Split::Val).unwrap(),
    );
    assert!(same(&ea.support_x, &eb.support_x) && same(&ea.query_x, &eb.query_x));
}

#[test]
fn errors_name_the_file_and_the_expectation() {
    let tmp = TempDir::new("omniglot-errors");

    // No dataset at all.
    let err = omniglot::load(&config(tmp.path())).unwrap_err().to_string();
    let dir = tmp.path().join("images_background");
    assert_eq!(
        err,
        format!(
            "omniglot: {}: no such directory (nor images_background.zip beside it)",
            dir.display()
        )
    );

    // Too few characters for the split.
    write_omniglot(tmp.path(), SETS, DRAWINGS);
    let err = omniglot::load(&OmniglotConfig::new(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("8 characters found"), "{err}");
    assert!(err.contains("1100 train"), "{err}");

    // An episode wider than the split.
    let ds = Arc::new(omniglot::load(&config(tmp.path())).unwrap());
    let wide = FewShot::new(ds.clone(), 20, 1, 1).unwrap();
    let err = wide
        .meta_batch(0, 0, 0..1, Split::Val)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "omniglot: the val split has 8 classes, an episode needs 20 (ways)"
    );
    // More shots + queries than drawings.
    let deep = FewShot::new(ds, 2, 2, 2).unwrap();
    let err = deep
        .meta_batch(0, 0, 0..1, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 3 images, an episode needs 4 (shots + queries)"),
        "{err}"
    );

    // A drawing of the wrong size.
    let bad = tmp
        .path()
        .join("images_evaluation/Gamma/character02/9999_09.png");
    write_gray_png(&bad, 30, 28, 0, 0);
    let err = omniglot::load(&config(tmp.path())).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: 30×28 image, expected 105×105 or 28×28 (to be resized to 28×28)",
            bad.display()
        )
    );
    std::fs::remove_file(&bad).unwrap();

    // An empty character folder.
    let empty = tmp.path().join("images_evaluation/Gamma/character04");
    std::fs::create_dir_all(&empty).unwrap();
    let err = omniglot::load(&config(tmp.path())).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("class folder {} is empty", empty.display())),
        "{err}"
    );
}
