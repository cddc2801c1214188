//! CIFAR-FS and FC100 read from CIFAR-100's python pickles (fixtures written by Python in the
//! original layout: tests/fixtures/data14/gen_data14.py), and the pickle reader's bounds.

mod data_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use data_support::{class_names, TempDir};
use metaloop_engine::data::cifar::{load_cifar_fs, load_fc100, FC100_SPLITS};
use metaloop_engine::data::{pickle, FewShot, Split, TaskSource};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/data14")
        .join(name)
}

/// The generator's pixel formula for fine class `f`, copy `i` (0: train file, 1: test file).
fn expected_image(f: i64, i: i64) -> Tensor {
    let p = Tensor::arange(3072, (Kind::Int64, tch::Device::Cpu));
    ((p + 7 * f + 31 * i).remainder(256).to_kind(Kind::Float) / 255.0).view([3, 32, 32])
}

#[test]
fn cifar_fs_follows_the_split_lists_and_keeps_all_images_of_a_class() {
    let ds = load_cifar_fs(&fixture(""), &fixture("cifar-fs-splits")).unwrap();
    assert_eq!(ds.image_shape(), [3, 32, 32]);
    assert_eq!(
        class_names(&ds, Split::Train),
        [
            "train/fine03",
            "train/fine01",
            "train/fine04",
            "train/fine15",
            "train/fine09",
            "train/fine26"
        ]
    );
    assert_eq!(class_names(&ds, Split::Val), ["val/fine53", "val/fine58"]);
    assert_eq!(
        class_names(&ds, Split::Test),
        ["test/fine97", "test/fine93"]
    );
    // A class holds its train-file image, then its test-file image, pixels exactly.
    let class = ds.classes(Split::Val).unwrap()[1];
    assert_eq!(ds.class_len(class), 2);
    let images = ds.class_images(class).unwrap();
    for i in 0..2 {
        let diff = (images.get(i) - expected_image(58, i))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0, "copy {i}");
    }
    let source = FewShot::new(Arc::new(ds), 5, 1, 1).unwrap();
    let batch = source.meta_batch(3, 0, 0..2, Split::Train).unwrap();
    assert_eq!(batch.support_x.size(), [2, 5, 3, 32, 32]);
}

#[test]
fn fc100_splits_by_superclass() {
    let ds = load_fc100(&fixture("cifar-100-python")).unwrap();
    let counts: Vec<usize> = Split::ALL
        .iter()
        .map(|&s| ds.classes(s).unwrap().len())
        .collect();
    // 5 fine classes per superclass: 12, 4 and 4 superclasses.
    assert_eq!(counts, [60, 20, 20]);
    assert_eq!(FC100_SPLITS.map(|s| s.len()), [12, 4, 4]);
    // Fine class 0 is in superclass 4 (fruit_and_vegetables, train), fine class 2 in 14 (people,
    // test), fine class 3 in 8 (large_carnivores, val); classes in fine label order.
    assert_eq!(class_names(&ds, Split::Train)[0], "train/fine00");
    assert_eq!(class_names(&ds, Split::Val)[0], "val/fine03");
    assert_eq!(
        class_names(&ds, Split::Test)[..2],
        ["test/fine02", "test/fine04"]
    );
    let class = ds.classes(Split::Test).unwrap()[1];
    let diff = (ds.class_images(class).unwrap().get(1) - expected_image(4, 1))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(diff, 0.0);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bad_files_are_errors_naming_them() {
    let tmp = TempDir::new("cifar");
    let dir = tmp.path().join("cifar-100-python");
    copy_dir(&fixture("cifar-100-python"), &dir);
    let splits = tmp.path().join("splits");
    copy_dir(&fixture("cifar-fs-splits"), &splits);

    // An unknown class in a split list: the file and line.
    std::fs::write(splits.join("val.txt"), "fine53\nnot_a_class\n").unwrap();
    let err = load_cifar_fs(tmp.path(), &splits).unwrap_err().to_string();
    assert!(
        err.contains("val.txt line 2") && err.contains("not_a_class"),
        "{err}"
    );
    // A class in two splits.
    std::fs::write(splits.join("val.txt"), "fine53\nfine03\n").unwrap();
    let err = load_cifar_fs(tmp.path(), &splits).unwrap_err().to_string();
    assert!(err.contains("already in the train split"), "{err}");

    // A truncated pickle.
    let train = dir.join("train");
    let bytes = std::fs::read(&train).unwrap();
    std::fs::write(&train, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_fc100(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains(&train.display().to_string()) && err.contains("ends after"),
        "{err}"
    );
    // A missing file.
    std::fs::remove_file(dir.join("meta")).unwrap();
    let err = load_fc100(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("meta") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn pickle_reader_refuses_code_and_false_sizes() {
    // A global other than NumPy's array constructors: os.system would run code.
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
    let err = pickle::read(&evil[..]).unwrap_err();
    assert!(err.contains("os.system"), "{err}");
    // A byte string claiming 4 GiB in a file of a few bytes: an error, no 4 GiB allocation.
    let huge = b"\x80\x03B\xff\xff\xff\xffabc.";
    let err = pickle::read(&huge[..]).unwrap_err();
    assert!(
        err.contains("4294967295 bytes") && err.contains("ends after 4"),
        "{err}"
    );
    // An array whose shape does not match its bytes.
    let mut lying = Vec::new();
    lying.extend_from_slice(
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R",
    );
    lying.extend_from_slice(b"(K\x01J\x00\x00\x01\x00\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03abctb.");
    let err = pickle::read(&lying[..]).unwrap_err();
    assert!(err.contains("[65536]") && err.contains("3 bytes"), "{err}");
}

/// Inputs the pickle fuzz target found (`cargo xtask fuzz`), each an error and never a panic.
/// tuple3-below-a-mark.pkl: TUPLE3 took items from below a MARK, and the later pop to that
/// MARK split the stack past its end.
#[test]
fn fuzzed_pickles_are_errors_not_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle");
    let bytes = std::fs::read(dir.join("tuple3-below-a-mark.pkl")).unwrap();
    let err = pickle::read(&bytes[..]).unwrap_err();
    assert!(err.contains("underflow"), "{err}");
}
