//! Communication between ranks: the one module that touches MPI and NCCL.
//!
//! A [`Communicator`] sums flat tensors across ranks (f32, f64, or i64 for exact sums), takes
//! their maximum, broadcasts them and synchronises. The meta-gradient of one iteration is one
//! flat buffer, so one `all_reduce_sum` per iteration suffices; the engine's reproducible mode
//! adds a maximum and an i64 sum.
//! Implementations: [`Local`] (one rank), [`Mpi`] (rsmpi over Open MPI, host buffers; CUDA tensors
//! are staged through host memory) and [`Nccl`] (cudarc's NCCL on CUDA tensors in place, the
//! library loaded at run time, CPU tensors and barriers through its [`Mpi`]).
//! Nothing outside this module may call MPI or NCCL; nothing here knows about models or datasets.
//!
//! Failures across ranks (see [`hold_mpi_open`], [`abort_job`], [`finalize`]): a process that
//! fails must end the whole job, never sit in `MPI_Finalize` (Open MPI waits there for every
//! rank, while the others wait in a collective). A collective that outlasts
//! [`set_collective_timeout`] ends the job too (`Mpi`: a watchdog thread; `Nccl`: polling with
//! `ncclCommGetAsyncError`, then `ncclCommAbort`).

mod communicator;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "mpi")]
mod watchdog;

pub use self::communicator::{checksums_differ, Communicator, Local};
#[cfg(feature = "mpi")]
pub use self::mpi::{abort_job, finalize, hold_mpi_open, Mpi};
#[cfg(feature = "nccl")]
pub use self::nccl::{Nccl, NCCL_LIBRARY_ENV};
#[cfg(feature = "mpi")]
pub use self::watchdog::{set_collective_timeout, set_iteration};

/// This process's index among the ranks on its node: the GPU it uses is `cuda:<local rank>`.
/// MPI's own answer (the ranks that share memory with this one) once [`Mpi::init`] ran; before
/// that, or without MPI, what mpirun or Slurm put in the environment; 0 for a process alone.
pub fn local_rank() -> usize {
    #[cfg(feature = "mpi")]
    if let Some(r) = mpi::node_rank() {
        return r;
    }
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
        "MV2_COMM_WORLD_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
    .unwrap_or(0)
}
