//! Which communicator a command runs on: MPI when mpirun or srun started it, NCCL on top for
//! CUDA, one rank alone otherwise. Also the job-wide collective timeout.

use std::time::Duration;

use anyhow::Result;
use metaloop_engine::config::{DeviceChoice, TrainConfig};
use metaloop_runtime::comm::{self, Communicator, Local, Mpi, Nccl};
use tch::Device;

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
    if wants_cuda && cuda > 0 && mpi.size() > 1 {
        let device = Device::Cuda(comm::local_rank() % cuda);
        return Ok(Box::new(Nccl::init(mpi, device)?));
    }
    Ok(Box::new(mpi))
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
