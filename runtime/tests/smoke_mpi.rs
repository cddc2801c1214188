//! Smoke test of the MPI stack: an all-reduce and a broadcast across 2 ranks under mpirun.

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

    // broadcast from rank 1.
    let mut b = Tensor::from_slice(&[r, r * 2.0]);
    comm.broadcast(&mut b, 1).unwrap();
    assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![1.0, 2.0]);
    comm.barrier().unwrap();
}
