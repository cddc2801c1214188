//! Task sampling: sinusoid tasks, purity of every task in (seed, split, iteration, task index),
//! and the prefetching thread.

mod data_support;

use std::collections::BTreeSet;
use std::f64::consts::PI;
use std::sync::Arc;

use data_support::{same, write_gray_png, TempDir};
use metaloop_engine::data::folder::{self, FolderConfig};
use metaloop_engine::data::{
    task_seed, FewShot, ImageSpec, MetaBatch, PrefetchConfig, Sinusoid, Split, TaskRng, TaskSource,
};
use tch::{Kind, Tensor};

fn batches_equal(a: &MetaBatch, b: &MetaBatch) -> bool {
    same(&a.support_x, &b.support_x)
        && same(&a.support_y, &b.support_y)
        && same(&a.query_x, &b.query_x)
        && same(&a.query_y, &b.query_y)
}

fn cat(a: &MetaBatch, b: &MetaBatch) -> MetaBatch {
    let c = |x: &Tensor, y: &Tensor| Tensor::cat(&[x, y], 0);
    MetaBatch {
        support_x: c(&a.support_x, &b.support_x),
        support_y: c(&a.support_y, &b.support_y),
        query_x: c(&a.query_x, &b.query_x),
        query_y: c(&a.query_y, &b.query_y),
        iteration: a.iteration,
        tasks: a.tasks.start..b.tasks.end,
    }
}

/// A 10-class grayscale folder dataset, 6 images per class, with rotations (40 classes).
fn image_source(tmp: &TempDir) -> FewShot {
    for k in 0..10 {
        for i in 0..6 {
            write_gray_png(&tmp.path().join(format!("c{k}/{i}.png")), 12, 12, k, i);
        }
    }
    let mut config = FolderConfig::new(tmp.path(), ImageSpec::gray(12));
    config.rotations = true;
    let ds = Arc::new(folder::load(&config).unwrap());
    FewShot::new(ds, 5, 1, 3).unwrap()
}

fn check_purity(source: &dyn TaskSource) {
    let whole = source.meta_batch(42, 9, 0..8, Split::Train).unwrap();
    assert_eq!(whole.len(), 8);
    assert_eq!(whole.iteration, 9);
    // Same call, same tensors.
    assert!(batches_equal(
        &whole,
        &source.meta_batch(42, 9, 0..8, Split::Train).unwrap()
    ));
    // Any cut of the range gives the same tasks: 0..4 + 4..8, 0..3 + 3..8, and task by task.
    for cut in [4, 3, 1] {
        let a = source.meta_batch(42, 9, 0..cut, Split::Train).unwrap();
        let b = source.meta_batch(42, 9, cut..8, Split::Train).unwrap();
        assert!(batches_equal(&whole, &cat(&a, &b)), "cut at {cut}");
    }
    let singles: Vec<_> = (0..8)
        .map(|t| source.task(42, 9, t, Split::Train).unwrap())
        .collect();
    assert!(batches_equal(
        &whole,
        &MetaBatch::stack(&singles, 9, 0..8).unwrap()
    ));
    // A slice taken alone equals the same tasks within a bigger batch (rank r's contiguous slice).
    let slice = source.meta_batch(42, 9, 5..7, Split::Train).unwrap();
    assert!(same(&slice.support_x, &whole.support_x.narrow(0, 5, 2)));
    assert!(same(&slice.query_x, &whole.query_x.narrow(0, 5, 2)));
    // Other iterations, seeds and splits give other tasks; tasks of one batch differ.
    for other in [
        source.meta_batch(42, 10, 0..8, Split::Train).unwrap(),
        source.meta_batch(43, 9, 0..8, Split::Train).unwrap(),
        source.meta_batch(42, 9, 0..8, Split::Val).unwrap(),
    ] {
        assert!(!same(&whole.support_x, &other.support_x));
        assert!(!same(&whole.query_x, &other.query_x));
    }
    assert!(!same(&whole.support_x.get(0), &whole.support_x.get(1)));
}

#[test]
fn sinusoid_tasks_are_pure_functions_of_their_index() {
    check_purity(&Sinusoid::new(5, 7).unwrap());
}

#[test]
fn image_tasks_are_pure_functions_of_their_index() {
    let tmp = TempDir::new("tasks-purity");
    let source = image_source(&tmp);
    // The folder source has only a train split; give purity its val split by reusing train.
    let mut config = FolderConfig::new(tmp.path(), ImageSpec::gray(12));
    config.val = Some(tmp.path().to_path_buf());
    config.rotations = true;
    let ds = Arc::new(folder::load(&config).unwrap());
    check_purity(&FewShot::new(ds, 5, 1, 3).unwrap());
    // Every task draws `ways` distinct classes.
    for t in 0..50 {
        let classes = source.task_classes(0, 0, t, Split::Train).unwrap();
        let set: BTreeSet<_> = classes.iter().map(|c| (c.class, c.rotation)).collect();
        assert_eq!(set.len(), 5);
    }
}

#[test]
fn sinusoid_ranges_and_shapes() {
    let source = Sinusoid::new(10, 15).unwrap();
    assert_eq!(source.input_shape(), vec![1]);
    assert_eq!(source.num_outputs(), 1);
    let b = source.meta_batch(3, 0, 0..200, Split::Train).unwrap();
    assert_eq!(b.support_x.size(), vec![200, 10, 1]);
    assert_eq!(b.support_y.size(), vec![200, 10, 1]);
    assert_eq!(b.query_x.size(), vec![200, 15, 1]);
    assert_eq!(b.query_y.size(), vec![200, 15, 1]);
    assert_eq!(b.support_x.kind(), Kind::Float);
    for x in [&b.support_x, &b.query_x] {
        assert!(x.min().double_value(&[]) >= -5.0);
        assert!(x.max().double_value(&[]) < 5.0);
    }

    // In f64, y = A sin(x − φ) with the task's own function, to 1e-10.
    let d = Sinusoid::new(10, 15)
        .unwrap()
        .with_kind(Kind::Double)
        .meta_batch(3, 0, 0..200, Split::Train)
        .unwrap();
    assert_eq!(d.support_x.kind(), Kind::Double);
    let (mut amps, mut phases) = (Vec::new(), Vec::new());
    for t in 0..200 {
        let f = source.task_function(3, 0, t, Split::Train);
        assert!((0.1..5.0).contains(&f.amplitude), "{f:?}");
        assert!((0.0..PI).contains(&f.phase), "{f:?}");
        amps.push(f.amplitude);
        phases.push(f.phase);
        for (x, y) in [(&d.support_x, &d.support_y), (&d.query_x, &d.query_y)] {
            let xs: Vec<f64> = Vec::try_from(x.get(t as i64).flatten(0, -1)).unwrap();
            let ys: Vec<f64> = Vec::try_from(y.get(t as i64).flatten(0, -1)).unwrap();
            for (x, y) in xs.iter().zip(&ys) {
                assert!((f.eval(*x) - y).abs() < 1e-10);
                assert!((f.amplitude * (x - f.phase).sin() - y).abs() < 1e-10);
            }
        }
    }
    // The draws cover their ranges (200 uniform draws: each end within 5% with near certainty).
    let (amin, amax) = amps
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(amin < 0.1 + 0.25 && amax > 5.0 - 0.25, "{amin} {amax}");
    let (pmin, pmax) = phases
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(pmin < 0.16 && pmax > PI - 0.16, "{pmin} {pmax}");

    // f32 values are the f64 values rounded.
    assert!(same(&b.support_y, &d.support_y.to_kind(Kind::Float)));

    // The true function on a grid for plots: ends included, evenly spaced.
    let f = source.task_function(3, 0, 17, Split::Test);
    let (gx, gy) = f.grid(101, Kind::Double).unwrap();
    assert_eq!(gx.size(), vec![101, 1]);
    assert_eq!(gx.double_value(&[0, 0]), -5.0);
    assert_eq!(gx.double_value(&[100, 0]), 5.0);
    assert!((gx.double_value(&[50, 0])).abs() < 1e-12);
    for i in [0i64, 33, 100] {
        let x = gx.double_value(&[i, 0]);
        assert!((gy.double_value(&[i, 0]) - f.eval(x)).abs() < 1e-12);
    }
    assert!(Sinusoid::new(0, 5).is_err());
}

#[test]
fn task_rng_basics() {
    // Distinct keys, distinct seeds.
    let mut seeds = BTreeSet::new();
    for split in Split::ALL {
        for it in 0..20 {
            for t in 0..20 {
                seeds.insert(task_seed(1, split, it, t));
            }
        }
    }
    assert_eq!(seeds.len(), 3 * 20 * 20);
    // The same key, the same stream.
    let mut a = TaskRng::for_task(1, Split::Train, 2, 3);
    let mut b = TaskRng::for_task(1, Split::Train, 2, 3);
    for _ in 0..10 {
        assert_eq!(a.next_u64(), b.next_u64());
    }
    let mut rng = TaskRng::from_seed(5);
    for n in [1, 2, 7, 4800] {
        let picks = rng.choose_distinct(n, n.min(20));
        assert_eq!(picks.len(), n.min(20));
        assert!(picks.iter().all(|&p| p < n));
        assert_eq!(picks.iter().collect::<BTreeSet<_>>().len(), picks.len());
    }
    let mut all = rng.choose_distinct(9, 9);
    all.sort();
    assert_eq!(all, (0..9).collect::<Vec<_>>());
    // below(n) is roughly uniform: each of 4 values about 2500 of 10000 times.
    let mut counts = [0usize; 4];
    for _ in 0..10_000 {
        counts[rng.below(4)] += 1;
    }
    assert!(
        counts.iter().all(|&c| (2300..2700).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn prefetcher_yields_the_direct_batches_in_order() {
    let tmp = TempDir::new("tasks-prefetch");
    let images: Arc<dyn TaskSource> = Arc::new(image_source(&tmp));
    let sinusoid: Arc<dyn TaskSource> = Arc::new(Sinusoid::new(5, 5).unwrap());
    for source in [images, sinusoid] {
        let mut prefetcher = PrefetchConfig::new(11, Split::Train, 2..6)
            .start(7)
            .depth(3)
            .spawn(source.clone())
            .unwrap();
        for iteration in 7..13 {
            assert_eq!(prefetcher.next_iteration(), iteration);
            let got = prefetcher.next_batch().unwrap();
            let direct = source
                .meta_batch(11, iteration, 2..6, Split::Train)
                .unwrap();
            assert_eq!(got.iteration, iteration);
            assert_eq!(got.tasks, 2..6);
            assert!(batches_equal(&got, &direct), "iteration {iteration}");
        }
        // The iterator form goes on from where it stopped.
        let next = prefetcher.next().unwrap().unwrap();
        assert_eq!(next.iteration, 13);
        // Dropping it stops and joins the thread (a hang here fails the test by timeout).
        drop(prefetcher);
    }

    // The first error ends the stream: delivered once, then None.
    let too_wide: Arc<dyn TaskSource> = Arc::new(
        FewShot::new(
            image_source(&TempDir::new("tasks-prefetch-err"))
                .dataset()
                .clone(),
            50,
            1,
            1,
        )
        .unwrap(),
    );
    let mut prefetcher = PrefetchConfig::new(0, Split::Train, 0..2)
        .spawn(too_wide)
        .unwrap();
    let err = prefetcher.next().unwrap().unwrap_err().to_string();
    assert_eq!(
        err,
        "folder: the train split has 40 classes, an episode needs 50 (ways)"
    );
    assert!(prefetcher.next().is_none());
}
