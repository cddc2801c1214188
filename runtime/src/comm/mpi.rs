//! `Mpi`: rsmpi over Open MPI, on host buffers. CUDA tensors are staged through host memory, so it
//! works with any MPI, CUDA-aware or not. It must stay the only place that calls MPI (with
//! `comm::nccl`, which uses it to agree on NCCL's unique id).

use super::communicator::{check_root, Buffer, Communicator};
use super::watchdog::watch;
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use tch::Tensor;

/// Set by [`hold_mpi_open`]: dropping an `Mpi` then parks its universe instead of finalizing.
static HOLD_OPEN: AtomicBool = AtomicBool::new(false);
/// The universe of a dropped `Mpi` while [`HOLD_OPEN`] is set, until [`finalize`] or [`abort_job`].
static PARKED: Mutex<Option<Universe>> = Mutex::new(None);
/// This rank's index on its node, set by [`Mpi::init`].
static NODE_RANK: OnceLock<usize> = OnceLock::new();

/// The node-local rank that [`Mpi::init`] found, if it ran.
pub(super) fn node_rank() -> Option<usize> {
    NODE_RANK.get().copied()
}

/// For a program that ends its ranks itself (the `metaloop` binary): from now on, dropping an
/// [`Mpi`] (an error or a panic unwinding through its owner) does not run `MPI_Finalize`, which
/// would wait for ranks that are waiting in a collective. The program then ends with
/// [`finalize`] when every rank ends alike, or [`abort_job`] when this one failed.
pub fn hold_mpi_open() {
    HOLD_OPEN.store(true, Ordering::SeqCst);
}

/// Finalizes MPI if an [`Mpi`] was dropped under [`hold_mpi_open`]: for a process whose ranks all
/// end the same way (success, or a stop they agreed on). Does nothing otherwise.
pub fn finalize() {
    let parked = PARKED
        .lock()
        .map(|mut p| p.take())
        .unwrap_or_else(|p| p.into_inner().take());
    drop(parked);
}

/// Ends the whole job after a failure of this rank: `MPI_Abort` with `code`, which makes mpirun
/// (or srun) kill every rank and exit with `code` (Open MPI 4.1 does). Returns, after
/// [`finalize`], only when MPI is not running or this process is its only rank.
pub fn abort_job(code: i32) {
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        let world = SimpleCommunicator::world();
        if world.size() > 1 {
            world.abort(code);
        }
    }
    finalize();
}

/// MPI over Open MPI (rsmpi), on host buffers: CUDA tensors are staged through host memory.
pub struct Mpi {
    world: SimpleCommunicator,
    // The ranks that share this rank's node (MPI_COMM_TYPE_SHARED): the local rank picks the GPU.
    local_rank: usize,
    local_size: usize,
    // Dropping the universe finalizes MPI, so it lives as long as the communicator (see `Drop`).
    universe: Option<Universe>,
}

impl Drop for Mpi {
    fn drop(&mut self) {
        let Some(universe) = self.universe.take() else {
            return;
        };
        if HOLD_OPEN.load(Ordering::SeqCst) {
            if let Ok(mut parked) = PARKED.lock() {
                *parked = Some(universe);
                return;
            }
            // A poisoned lock: keep MPI open rather than risk waiting in MPI_Finalize.
            std::mem::forget(universe);
            return;
        }
        drop(universe);
    }
}

impl Mpi {
    /// Initializes MPI for this process. MPI can be initialized once per process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Comm("MPI was already initialized in this process".into()))?;
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let local_rank = node.rank() as usize;
        let _ = NODE_RANK.set(local_rank);
        Ok(Mpi {
            local_rank,
            local_size: node.size() as usize,
            world,
            universe: Some(universe),
        })
    }

    /// This rank's index among the ranks on its own node (`cuda:<local_rank>` is its GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this rank's node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Overwrites `bytes` (of the same length on every rank) with their value on rank `root`
    /// (NCCL's unique id).
    pub(super) fn broadcast_fixed(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        check_root("broadcast", root, self.size())?;
        let _w = watch("broadcast", abort_job);
        // MPI counts are C ints: send at most 1 GiB at a time.
        for chunk in bytes.chunks_mut(1 << 30) {
            self.world
                .process_at_rank(root as i32)
                .broadcast_into(chunk);
        }
        Ok(())
    }

    /// `t` reduced over all ranks with `op`, in place (through host memory).
    fn all_reduce(&self, t: &mut Tensor, name: &'static str, op: SystemOperation) -> Result<()> {
        /// The reduction of `send` into a new vector.
        fn reduce<T: Copy + Default + mpi::datatype::Equivalence>(
            world: &SimpleCommunicator,
            send: &[T],
            op: SystemOperation,
        ) -> Vec<T> {
            let mut recv = vec![T::default(); send.len()];
            world.all_reduce_into(send, &mut recv[..], op);
            recv
        }
        let send = Buffer::from_tensor(name, t)?;
        let _w = watch(name, abort_job);
        let reduced = match send {
            Buffer::F32(v) => Buffer::F32(reduce(&self.world, &v, op)),
            Buffer::F64(v) => Buffer::F64(reduce(&self.world, &v, op)),
            Buffer::I64(v) => Buffer::I64(reduce(&self.world, &v, op)),
        };
        reduced.copy_into(t)
    }

    /// The sum over ranks of one count per rank (how many ranks failed a step, for instance).
    pub(super) fn sum_counts(&self, count: u64) -> u64 {
        let _w = watch("all_reduce", abort_job);
        let mut total = 0u64;
        self.world
            .all_reduce_into(&count, &mut total, SystemOperation::sum());
        total
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.all_reduce(t, "all_reduce_sum", SystemOperation::sum())
    }
    fn all_reduce_max(&self, t: &mut Tensor) -> Result<()> {
        if t.kind() == tch::Kind::Int64 {
            return Err(Error::Kind {
                op: "all_reduce_max",
                kind: t.kind(),
                expected: "f32 or f64",
            });
        }
        self.all_reduce(t, "all_reduce_max", SystemOperation::max())
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        check_root("broadcast", root, self.size())?;
        let mut buf = Buffer::from_tensor("broadcast", t)?;
        let _w = watch("broadcast", abort_job);
        let process = self.world.process_at_rank(root as i32);
        match &mut buf {
            Buffer::F32(v) => process.broadcast_into(&mut v[..]),
            Buffer::F64(v) => process.broadcast_into(&mut v[..]),
            Buffer::I64(v) => process.broadcast_into(&mut v[..]),
        }
        buf.copy_into(t)
    }
    fn barrier(&self) -> Result<()> {
        let _w = watch("barrier", abort_job);
        self.world.barrier();
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root("broadcast_bytes", root, self.size())?;
        let mut len = bytes.len() as u64;
        {
            let _w = watch("broadcast_bytes", abort_job);
            self.world
                .process_at_rank(root as i32)
                .broadcast_into(&mut len);
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::Comm(format!("broadcast_bytes: {len} bytes do not fit here")))?;
        bytes.resize(len, 0);
        self.broadcast_fixed(bytes, root)
    }
}
