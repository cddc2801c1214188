//! Which communicator a command runs on: MPI when mpirun or srun started it, NCCL on top for
//! CUDA, one rank alone otherwise. Also the job-wide collective timeout.

use std::time::Duration;

use anyhow::Result;
use metaloop_engine::config::{Comm, DeviceChoice, TrainConfig};
use metaloop_runtime::comm::{self, Communicator, Local, Mpi, Nccl};
use tch::Device;

use crate::errors::bad;

/// `run.collective_timeout_s`'s default, until a config says otherwise.
pub const DEFAULT_COLLECTIVE_TIMEOUT_S: u64 = 600;

/// True when mpirun or srun started this process as one of several ranks.
fn launched_by_mpi() -> bool {
    let var = |name: &str| std::env::var(name).ok();
    var("OMPI_COMM_WORLD_SIZE").is_some()
        || var("PMI_SIZE").is_some()
        || var("PMIX_RANK").is_some()
        || var("SLURM_NTASKS")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 1)
}

/// This process's communicator: MPI when started by mpirun or srun, with NCCL on top when the
/// config runs on CUDA (GPU `cuda:<local rank>`); one rank alone otherwise.
pub fn communicator(cfg: &TrainConfig) -> Result<Box<dyn Communicator>> {
    if !launched_by_mpi() {
        return Ok(Box::new(Local));
    }
    let mpi = Mpi::init()?;
    let cuda = tch::Cuda::device_count() as usize;
    let wants_cuda = match cfg.run.device {
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => cuda > 0,
        DeviceChoice::Cpu => false,
    };
    let ranks = (mpi.size(), mpi.local_size());
    if let Some(device) = collective_device(cfg.run.comm, wants_cuda, cuda, ranks)? {
        return Ok(Box::new(Nccl::init(mpi, device)?));
    }
    Ok(Box::new(mpi))
}

/// The GPU NCCL runs on, or `None` for MPI through host memory (`run.comm`): "mpi" never uses
/// NCCL; "auto" uses it on CUDA runs of several ranks when every rank of this node has a GPU
/// of its own (NCCL refuses two ranks on one device); "nccl" insists, and is refused without
/// a CUDA device. `ranks`: (ranks in all, ranks on this node).
fn collective_device(
    choice: Comm,
    wants_cuda: bool,
    gpus: usize,
    (ranks, local_ranks): (usize, usize),
) -> Result<Option<Device>> {
    match choice {
        Comm::Mpi => Ok(None),
        Comm::Nccl if !(wants_cuda && gpus > 0) => Err(bad(
            "run.comm: \"nccl\" needs a CUDA device (run.device = \"cuda\"); use \"mpi\" or \"auto\"",
        )),
        Comm::Auto if !(wants_cuda && gpus > 0 && ranks > 1 && local_ranks <= gpus) => Ok(None),
        Comm::Nccl | Comm::Auto => Ok(Some(Device::Cuda(comm::local_rank() % gpus))),
    }
}

/// Ends the job when a collective outlasts `seconds` (0: never), printing which one.
pub fn set_collective_timeout(seconds: u64) {
    fn report(message: &str) {
        eprintln!("metaloop: rank {}: {message}", rank_of_this_process());
    }
    let timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
    comm::set_collective_timeout(timeout, report);
}

/// This process's MPI rank, from the environment mpirun or srun gives it (for messages).
fn rank_of_this_process() -> String {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok())
    .unwrap_or_else(|| "0".into())
}
