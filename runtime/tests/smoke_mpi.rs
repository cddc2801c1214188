//! Smoke test of the MPI stack: all-reduces (f32/f64/i64 sums, f32/f64 maxima) and a broadcast
//! across 2 ranks under mpirun.

mod mpi_support;

use metaloop_runtime::comm::{Communicator, Mpi};
use tch::{Kind, Tensor};

#[test]
fn all_reduce_across_two_ranks_gives_the_sum() {
    if !mpi_support::under_mpirun() {
        mpi_support::run_under_mpirun(2, "all_reduce_across_two_ranks_gives_the_sum");
        return;
    }
    let comm = Mpi::init().unwrap();
    assert_eq!(comm.size(), 2);
    let r = comm.rank() as f64;

    // f64: rank r contributes [r + 1, 10 (r + 1)]; the sum over 2 ranks is [3, 30].
    let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
    comm.all_reduce_sum(&mut t).unwrap();
    assert_eq!(Vec::<f64>::try_from(&t).unwrap(), vec![3.0, 30.0]);

    // f32, 2-D: shape is kept.
    let mut t = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)) * (r + 1.0);
    comm.all_reduce_sum(&mut t).unwrap();
    assert_eq!(t.size(), vec![2, 3]);
    assert!(t.eq(3.0).all().int64_value(&[]) == 1);

    // i64: an exact sum, near the end of the range.
    let big = i64::MAX / 4;
    let mut t = Tensor::from_slice(&[big + r as i64, -big]);
    comm.all_reduce_sum(&mut t).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&t).unwrap(),
        vec![2 * big + 1, -2 * big]
    );

    // max, f64 and f32: rank 0 has the larger first value, rank 1 the larger second one.
    let mut t = Tensor::from_slice(&[1.5 - r, -3.0 + r]);
    comm.all_reduce_max(&mut t).unwrap();
    assert_eq!(Vec::<f64>::try_from(&t).unwrap(), vec![1.5, -2.0]);
    let second = if r == 1.0 { f32::INFINITY } else { -1.0 };
    let mut t = Tensor::from_slice(&[1.5f32 - r as f32, second]);
    comm.all_reduce_max(&mut t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.5, f32::INFINITY]);

    // broadcast from rank 1.
    let mut b = Tensor::from_slice(&[r, r * 2.0]);
    comm.broadcast(&mut b, 1).unwrap();
    assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![1.0, 2.0]);
    comm.barrier().unwrap();
}
