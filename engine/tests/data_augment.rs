//! `task.augment = "standard"` (engine::data::augment): determined by the task seed, different
//! across tasks, shape and `[0, 1]` range kept, flips and crops exact on known images, brightness
//! a per-image scale.

use metaloop_engine::data::augment::Standard;
use metaloop_engine::data::{task_seed, Split};
use tch::{Device, Kind, Tensor};

/// `n` distinct images `[n, 3, 8, 8]` with every pixel a different value in (0, 1).
fn ramp(n: i64) -> Tensor {
    let count = n * 3 * 8 * 8;
    (Tensor::arange(count, (Kind::Float, Device::Cpu)) + 1.0) / (count + 1) as f64
}

fn images(n: i64) -> Tensor {
    ramp(n).view([n, 3, 8, 8])
}

fn geometry_only(padding: i64) -> Standard {
    Standard {
        padding,
        flip: true,
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
    }
}

fn equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

#[test]
fn deterministic_per_task_seed_and_different_across_tasks() {
    let x = images(6);
    let aug = Standard::for_side(8);
    let seed = |task| task_seed(3, Split::Train, 11, task);
    let a = aug.apply(&x, seed(0)).unwrap();
    assert!(equal(&a, &aug.apply(&x, seed(0)).unwrap()));
    assert!(!equal(&a, &aug.apply(&x, seed(1)).unwrap()));
    assert!(!equal(&a, &x));
    // Task-batched: each task with its own seed, as one task at a time.
    let tasks = Tensor::stack(&[&x, &x], 0);
    let both = aug.apply_tasks(&tasks, &[seed(0), seed(1)]).unwrap();
    assert!(equal(&both.get(0), &a));
    assert!(equal(&both.get(1), &aug.apply(&x, seed(1)).unwrap()));
    assert!(aug.apply_tasks(&tasks, &[seed(0)]).is_err());
    assert!(aug.apply(&x.get(0), seed(0)).is_err());
}

#[test]
fn shape_kind_and_range_are_kept() {
    let x = Tensor::rand([16, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Standard::for_side(32).apply(&x, 5).unwrap();
    assert_eq!(y.size(), x.size());
    assert_eq!(y.kind(), Kind::Float);
    assert!(y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0);
    assert_eq!(Standard::for_side(32).padding, 4);
    assert_eq!(Standard::for_side(84).padding, 8);
}

#[test]
fn flips_are_exact_mirror_images() {
    let x = images(32);
    let y = geometry_only(0).apply(&x, 9).unwrap();
    let mut flipped = 0;
    for i in 0..32 {
        let (xi, yi) = (x.get(i), y.get(i));
        if equal(&yi, &xi.flip([2])) {
            flipped += 1;
        } else {
            assert!(
                equal(&yi, &xi),
                "image {i} is neither itself nor its mirror"
            );
        }
    }
    assert!((4..=28).contains(&flipped), "{flipped} of 32 flipped");
}

#[test]
fn crops_are_exact_windows_of_the_zero_padded_image() {
    let p = 2;
    let x = images(24);
    let y = geometry_only(p).apply(&x, 21).unwrap();
    let padded = x.constant_pad_nd([p, p, p, p]);
    let mut offsets = std::collections::BTreeSet::new();
    for i in 0..24 {
        let yi = y.get(i);
        let matches: Vec<(i64, i64)> = (0..=2 * p)
            .flat_map(|dy| (0..=2 * p).map(move |dx| (dy, dx)))
            .filter(|&(dy, dx)| {
                let window = padded.get(i).narrow(1, dy, 8).narrow(2, dx, 8);
                equal(&yi, &window) || equal(&yi, &window.flip([2]))
            })
            .collect();
        assert_eq!(matches.len(), 1, "image {i}: windows {matches:?}");
        offsets.insert(matches[0]);
    }
    assert!(offsets.len() >= 5, "offsets {offsets:?}");
}

#[test]
fn brightness_alone_scales_each_image_within_its_range() {
    let x = images(12) * 0.5; // no pixel reaches 1 after a factor up to 1.4
    let aug = Standard {
        padding: 0,
        flip: false,
        brightness: 0.4,
        contrast: 0.0,
        saturation: 0.0,
    };
    let y = aug.apply(&x, 4).unwrap();
    let mut factors = Vec::new();
    for i in 0..12 {
        let ratio = y.get(i) / x.get(i);
        let (lo, hi) = (ratio.min().double_value(&[]), ratio.max().double_value(&[]));
        assert!(hi - lo < 1e-5, "image {i}: not one factor ({lo}..{hi})");
        assert!((0.6..=1.4).contains(&lo), "image {i}: factor {lo}");
        factors.push(lo);
    }
    factors.sort_by(f64::total_cmp);
    assert!(factors[11] - factors[0] > 0.1, "factors {factors:?}");
}

#[test]
fn contrast_keeps_the_mean_grey_level() {
    // Pixels in [0.25, 0.75] and factors in [0.7, 1.3]: nothing is clamped.
    let x = Tensor::rand([8, 3, 6, 6], (Kind::Double, Device::Cpu)) * 0.5 + 0.25;
    let aug = Standard {
        padding: 0,
        flip: false,
        brightness: 0.0,
        contrast: 0.3,
        saturation: 0.0,
    };
    let y = aug.apply(&x, 2).unwrap();
    let luma = Tensor::from_slice(&[0.299, 0.587, 0.114]).view([1, 3, 1, 1]);
    let grey_mean = |t: &Tensor| {
        (t * &luma)
            .sum_dim_intlist(1, false, Kind::Double)
            .mean_dim(&[1i64, 2][..], false, Kind::Double)
    };
    let gap = (grey_mean(&y) - grey_mean(&x))
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap < 1e-12, "contrast moved the mean grey level by {gap:e}");
}
