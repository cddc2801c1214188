//! engine::exact: order independence on adversarial values, the stated precision, no overflow
//! at the largest values, and no scale without finite values.

use super::*;
use metaloop_runtime::comm::Local;

/// A small deterministic stream (xorshift64*), so that the tests need no random crate.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Rows whose float sums depend on the order: huge values that cancel, tiny ones beside them,
/// both signs, f32.
fn adversarial_rows() -> Vec<Vec<f32>> {
    vec![
        vec![1e8, 3.0, -1.0, 7.5e-4],
        vec![1.0, -2.5e7, 1e-3, 1.0],
        vec![-1e8, 1.0, 0.0, -3.3e-4],
        vec![1.0, 2.5e7, -1e-3, 1e-7],
        vec![0.5, 0.75, 2.0, 1.0 / 3.0],
        vec![-0.25, 1e-6, 5e7, -1.0 / 3.0],
    ]
}

fn as_tensor(rows: &[Vec<f32>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
}

/// The bits of an f32 tensor.
fn bits(t: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(t)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn the_sum_is_the_same_in_any_order_and_grouping() {
    let rows = adversarial_rows();
    let n = rows.len();
    let want = bits(&sum_rows(&Local, &as_tensor(&rows), n, Kind::Float).unwrap());
    let mut float_sums = std::collections::BTreeSet::new();
    let mut stream = Stream(0x9e37_79b9_7f4a_7c15);
    let max = rows.iter().flatten().fold(0f32, |a, x| a.max(x.abs())) as f64;
    let k = scale_exponent(max, n).unwrap();
    for _ in 0..200 {
        let mut order = rows.clone();
        stream.shuffle(&mut order);
        assert_eq!(
            bits(&sum_rows(&Local, &as_tensor(&order), n, Kind::Float).unwrap()),
            want
        );
        // Grouped as ranks and workers group them: integer partial sums, then their sum.
        let cut = 1 + stream.below(n - 1);
        let part = |r: &[Vec<f32>]| {
            to_fixed(&as_tensor(r), k)
                .unwrap()
                .sum_dim_intlist(&[0i64][..], false, Kind::Int64)
        };
        let total = part(&order[..cut]) + part(&order[cut..]);
        assert_eq!(bits(&from_fixed(&total, k, Kind::Float).unwrap()), want);
        // The plain float sum of the same order, for contrast.
        let mut s = [0f32; 4];
        for r in &order {
            for (a, x) in s.iter_mut().zip(r) {
                *a += x;
            }
        }
        float_sums.insert(s.map(f32::to_bits));
    }
    assert!(
        float_sums.len() > 1,
        "the float sums should depend on the order"
    );
}

#[test]
fn the_sum_is_within_the_stated_precision() {
    let rows = adversarial_rows();
    let n = rows.len();
    let got = Vec::<f32>::try_from(
        &sum_rows(&Local, &as_tensor(&rows), n, Kind::Double)
            .unwrap()
            .to_kind(Kind::Float),
    )
    .unwrap();
    let max = 1e8f64;
    let k = scale_exponent(max, n).unwrap();
    // Each of n values is off by at most half a grid step, then one rounding to f32.
    let bound = n as f64 * 2f64.powi(-(k + 1));
    for j in 0..4 {
        let exact: f64 = rows.iter().map(|r| r[j] as f64).sum();
        let err = (got[j] as f64 - exact).abs();
        assert!(
            err <= bound + (exact.abs() * f32::EPSILON as f64),
            "column {j}: {err:e}"
        );
    }
    // 2^-(62 - c) relative to the largest value: c = 3 for 6 tasks.
    assert!(2f64.powi(-k) <= max * 2f64.powi(-(61 - 3)));
}

#[test]
fn the_largest_values_cannot_overflow() {
    for terms in [1usize, 2, 3, 6, 7, 25, 1 << 20] {
        for max in [1.0, 0.999_999_9, 3.5e-30, 7.0e30, 1e300, 4.9e-324] {
            let k = scale_exponent(max, terms).unwrap();
            let one = to_fixed(&Tensor::from_slice(&[max, -max]), k).unwrap();
            let v = Vec::<i64>::try_from(&one).unwrap();
            let total = (v[0] as i128) * terms as i128;
            assert!(total < i64::MAX as i128, "{max:e} × {terms}");
            assert_eq!(v[1], -v[0]);
            // The largest value keeps its precision.
            let back = from_fixed(&one, k, Kind::Double)
                .unwrap()
                .double_value(&[0]);
            assert!(
                (back - max).abs() <= max * 2f64.powi(-40),
                "{max:e}: {back:e}"
            );
        }
    }
}

#[test]
fn no_scale_without_finite_values() {
    assert_eq!(scale_exponent(f64::NAN, 3), None);
    assert_eq!(scale_exponent(f64::INFINITY, 3), None);
    assert_eq!(scale_exponent(0.0, 3), Some(0));
    let rows = Tensor::from_slice(&[1.0f32, f32::NAN]).reshape([1, 2]);
    let sum = sum_rows(&Local, &rows, 1, Kind::Float).unwrap();
    assert!(Vec::<f32>::try_from(&sum)
        .unwrap()
        .iter()
        .all(|x| x.is_nan()));
    let zeros = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let sum = sum_rows(&Local, &zeros, 3, Kind::Float).unwrap();
    assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), vec![0.0, 0.0]);
}
