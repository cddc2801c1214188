//! `Nccl`: all-reduce and broadcast of CUDA tensors in place with NCCL (cudarc's bindings), the
//! library loaded at run time so that metaloop builds, links and runs on machines without CUDA.
//!
//! - Loading: `libnccl.so.2` (the name libtorch itself links, so the NCCL that came with libtorch
//!   is found already loaded), then `libnccl.so`; `METALOOP_NCCL_LIBRARY` names another file. A
//!   missing library, driver or device is an [`Error::NcclUnavailable`], never a panic or a link
//!   failure.
//! - Set-up: every rank checks that it can run NCCL, the ranks agree over MPI (so that all fail
//!   together rather than some hanging), rank 0 makes the unique id and broadcasts it over MPI.
//! - Streams: tch exposes no stream API, so collectives are enqueued on the legacy default stream
//!   (the null stream, which is libtorch's default stream) and bracketed by a synchronisation of
//!   the device: before, so that every kernel that wrote the tensor, on any stream, has finished;
//!   after, so that the result is in place when the call returns. One all-reduce per meta-iteration
//!   makes these synchronisations cheap.
//! - CPU tensors and barriers go through the [`Mpi`] this communicator owns.
//! - Waiting: after a collective, an event recorded on the default stream is polled together
//!   with `ncclCommGetAsyncError`; an NCCL error, or a wait past the collective timeout, aborts
//!   the communicator (`ncclCommAbort`) and returns an error, so that a dead peer never leaves
//!   this rank blocked in a device synchronisation.
//!
//! This file holds unsafe code: NCCL is a C API and takes raw device pointers. The unsafe blocks
//! stay here, each with the invariant it relies on; nothing else in the crate calls NCCL.

use super::communicator::{check_root, Communicator};
use super::mpi::Mpi;
use crate::{Error, Result};
use cudarc::driver::CudaContext;
use cudarc::nccl::sys::{self as ffi, Lib};
use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The environment variable that names the NCCL library file to load instead of `libnccl.so.2`.
pub const NCCL_LIBRARY_ENV: &str = "METALOOP_NCCL_LIBRARY";

/// The library names tried, in order, when `METALOOP_NCCL_LIBRARY` is not set.
const NCCL_NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];

/// NCCL across the ranks of an [`Mpi`] job, one CUDA device per rank.
pub struct Nccl {
    comm: ffi::ncclComm_t,
    lib: Lib,
    device: usize,
    ctx: Arc<CudaContext>,
    /// Set once `ncclCommAbort` ran: the communicator is then not destroyed again.
    aborted: std::sync::atomic::AtomicBool,
    // Declared last so that MPI is finalized after the NCCL communicator is destroyed.
    mpi: Mpi,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("device", &self.device)
            .finish()
    }
}

impl Nccl {
    /// Sets up NCCL over the ranks of `mpi`, this rank on `device` (`Device::Cuda(local_rank)` in
    /// the usual one-GPU-per-rank layout; see [`Mpi::local_rank`]).
    ///
    /// Collective: every rank of `mpi` must call it. If any rank cannot run NCCL (no library, no
    /// driver, no such device), every rank returns an error; the failing ranks say why.
    pub fn init(mpi: Mpi, device: Device) -> Result<Nccl> {
        let local = prepare(device);
        let failed = mpi.sum_counts(u64::from(local.is_err()));
        let (lib, ordinal, ctx) = match local {
            Err(e) => return Err(e),
            Ok(_) if failed > 0 => {
                return Err(Error::NcclUnavailable(format!(
                    "{failed} of {} ranks could not set up NCCL (see their errors)",
                    mpi.size()
                )))
            }
            Ok(ready) => ready,
        };

        // Rank 0 makes the unique id; every rank receives its bytes over MPI.
        let mut id = ffi::ncclUniqueId { internal: [0; 128] };
        let made = if mpi.rank() == 0 {
            // SAFETY: `id` is a valid, writable ncclUniqueId.
            check(&lib, "ncclGetUniqueId", unsafe {
                (lib.ncclGetUniqueId)(&mut id)
            })
        } else {
            Ok(())
        };
        let failed = mpi.sum_counts(u64::from(made.is_err()));
        made?;
        if failed > 0 {
            return Err(Error::Comm(
                "NCCL: rank 0 could not make a unique id".into(),
            ));
        }
        let mut bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        mpi.broadcast_fixed(&mut bytes, 0)?;
        for (dst, src) in id.internal.iter_mut().zip(&bytes) {
            *dst = *src as std::ffi::c_char;
        }

        ctx.bind_to_thread()
            .map_err(|e| Error::Comm(format!("NCCL: cannot make cuda:{ordinal} current: {e:?}")))?;
        let mut comm: ffi::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the size and rank come from MPI and agree on
        // every rank; the device of this rank is current on this thread.
        let initialized = check(&lib, "ncclCommInitRank", unsafe {
            (lib.ncclCommInitRank)(&mut comm, mpi.size() as c_int, id, mpi.rank() as c_int)
        });
        initialized?;
        Ok(Nccl {
            comm,
            lib,
            device: ordinal,
            ctx,
            aborted: std::sync::atomic::AtomicBool::new(false),
            mpi,
        })
    }

    /// Checks, on this rank alone and without communicating, that NCCL could run on `device`: the
    /// library loads, the device exists and the driver opens it. `Err(Error::NcclUnavailable)`
    /// says why not; a launcher can then fall back to [`Mpi`] (all ranks must make the same
    /// choice: [`Nccl::init`] itself makes every rank fail together).
    pub fn check(device: Device) -> Result<()> {
        prepare(device).map(|_| ())
    }

    /// The CUDA device of this rank.
    pub fn device(&self) -> Device {
        Device::Cuda(self.device)
    }

    /// The MPI communicator that carries CPU tensors and barriers.
    pub fn mpi(&self) -> &Mpi {
        &self.mpi
    }

    /// The version of the NCCL library loaded, as NCCL encodes it (22809 for 2.28.9).
    pub fn version(&self) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid, writable int.
        check(&self.lib, "ncclGetVersion", unsafe {
            (self.lib.ncclGetVersion)(&mut v)
        })?;
        Ok(v)
    }

    /// Checks that `t` lives on this rank's device and returns its NCCL element type.
    fn check_tensor(&self, op: &'static str, t: &Tensor) -> Result<ffi::ncclDataType_t> {
        if t.device() != Device::Cuda(self.device) {
            return Err(Error::Comm(format!(
                "{op}: tensor on {:?}, but this rank's NCCL communicator is on cuda:{}",
                t.device(),
                self.device
            )));
        }
        match t.kind() {
            Kind::Float => Ok(ffi::ncclDataType_t::ncclFloat32),
            Kind::Double => Ok(ffi::ncclDataType_t::ncclFloat64),
            Kind::Half => Ok(ffi::ncclDataType_t::ncclFloat16),
            Kind::BFloat16 => Ok(ffi::ncclDataType_t::ncclBfloat16),
            Kind::Int64 => Ok(ffi::ncclDataType_t::ncclInt64),
            kind => Err(Error::Kind {
                op,
                kind,
                expected: "f32, f64, f16, bf16 or i64",
            }),
        }
    }

    /// Waits for every kernel on this rank's device, on every stream.
    fn synchronize(&self, op: &str) -> Result<()> {
        self.ctx
            .synchronize()
            .map_err(|e| Error::Comm(format!("{op}: cuda:{} synchronize: {e:?}", self.device)))
    }

    /// Waits for the collective just enqueued on the default stream: polls an event recorded
    /// after it, and NCCL's asynchronous error state. On an NCCL error, or past the collective
    /// timeout ([`super::set_collective_timeout`]), aborts the NCCL communicator (which makes the
    /// kernels of this rank return) and returns the error; the caller then ends the job.
    fn wait(&self, op: &'static str) -> Result<()> {
        let started = std::time::Instant::now();
        let done = self.ctx.default_stream().record_event(None).map_err(|e| {
            Error::Comm(format!("{op}: cuda:{} record an event: {e:?}", self.device))
        })?;
        let mut pause = std::time::Duration::from_micros(20);
        while !done.is_complete() {
            let mut state = ffi::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is a live communicator; `state` is a valid, writable status.
            let asked = unsafe { (self.lib.ncclCommGetAsyncError)(self.comm, &mut state) };
            let failure = check(&self.lib, op, asked)
                .and_then(|()| check(&self.lib, op, state))
                .err()
                .or_else(|| {
                    let limit = super::watchdog::timeout()?;
                    (started.elapsed() > limit)
                        .then(|| Error::Comm(super::watchdog::describe(op, started.elapsed())))
                });
            if let Some(e) = failure {
                // SAFETY: `comm` is live; after the abort no collective runs on it again (the
                // caller ends the job), and `Drop` does not destroy an aborted communicator.
                let _ = unsafe { (self.lib.ncclCommAbort)(self.comm) };
                self.aborted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// `t` reduced in place over all ranks with NCCL's `op` (ncclSum, ncclMax; i64 included).
    fn all_reduce(&self, t: &mut Tensor, name: &'static str, op: ffi::ncclRedOp_t) -> Result<()> {
        let (lib, comm) = (&self.lib, self.comm);
        self.in_place(name, t, |ptr, count, dtype| {
            // SAFETY: `ptr` points to `count` contiguous elements of `dtype` on this rank's device,
            // kept alive by `work` for the call, which the synchronisation after it waits for;
            // in-place operation (send == receive) is allowed by NCCL.
            unsafe { (lib.ncclAllReduce)(ptr, ptr, count, dtype, op, comm, std::ptr::null_mut()) }
        })
    }

    /// Runs `collective` on a contiguous tensor with the values of `t`, then copies the result back
    /// into `t` if `t` itself was not contiguous.
    fn in_place(
        &self,
        op: &'static str,
        t: &mut Tensor,
        collective: impl FnOnce(*mut std::ffi::c_void, usize, ffi::ncclDataType_t) -> ffi::ncclResult_t,
    ) -> Result<()> {
        let dtype = self.check_tensor(op, t)?;
        let work = if t.is_contiguous() {
            t.shallow_clone()
        } else {
            t.f_contiguous()?
        };
        let count = work.numel();
        if count == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Comm(format!("{op}: cuda:{} not current: {e:?}", self.device)))?;
        self.synchronize(op)?;
        let ptr = work.data_ptr();
        check(&self.lib, op, collective(ptr, count, dtype))?;
        self.wait(op)?;
        if !t.is_contiguous() {
            tch::no_grad(|| t.f_copy_(&work))?;
        }
        Ok(())
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn size(&self) -> usize {
        self.mpi.size()
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.mpi.all_reduce_sum(t);
        }
        self.all_reduce(t, "all_reduce_sum", ffi::ncclRedOp_t::ncclSum)
    }
    fn all_reduce_max(&self, t: &mut Tensor) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.mpi.all_reduce_max(t);
        }
        self.all_reduce(t, "all_reduce_max", ffi::ncclRedOp_t::ncclMax)
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        check_root("broadcast", root, self.size())?;
        if t.device() == Device::Cpu {
            return self.mpi.broadcast(t, root);
        }
        let (lib, comm) = (&self.lib, self.comm);
        self.in_place("broadcast", t, |ptr, count, dtype| {
            // SAFETY: as for all_reduce_sum; `root` is a valid rank (checked above).
            unsafe {
                (lib.ncclBroadcast)(
                    ptr,
                    ptr,
                    count,
                    dtype,
                    root as c_int,
                    comm,
                    std::ptr::null_mut(),
                )
            }
        })
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if self.aborted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `comm` came from a successful ncclCommInitRank and is destroyed once, here; no
        // collective is in flight (each call synchronises before returning).
        // A failure to destroy cannot be reported from drop, and the process is ending its use of
        // NCCL anyway.
        let _ = unsafe { (self.lib.ncclCommDestroy)(self.comm) };
    }
}

/// Everything one rank needs before the collective part of set-up: the library, the device index
/// and its CUDA context (current on this thread).
fn prepare(device: Device) -> Result<(Lib, usize, Arc<CudaContext>)> {
    let ordinal = match device {
        Device::Cuda(i) => i,
        other => {
            return Err(Error::NcclUnavailable(format!(
                "NCCL runs on CUDA devices; this rank was given {other:?}"
            )))
        }
    };
    let lib = load_library()?;
    let visible = tch::Cuda::device_count();
    if (ordinal as i64) >= visible {
        return Err(Error::NcclUnavailable(format!(
            "cuda:{ordinal} does not exist: libtorch sees {visible} CUDA device(s) \
             (check the driver, CUDA_VISIBLE_DEVICES and that there is one GPU per local rank)"
        )));
    }
    // cudarc panics when libcuda cannot be loaded or lacks a symbol; turn that into an error.
    let ctx = catch_unwind(|| CudaContext::new(ordinal))
        .map_err(|p| {
            Error::NcclUnavailable(format!(
                "cannot load the CUDA driver (libcuda.so.1): {}",
                panic_text(&p)
            ))
        })?
        .map_err(|e| {
            Error::NcclUnavailable(format!("cannot open cuda:{ordinal} with the driver: {e:?}"))
        })?;
    Ok((lib, ordinal, ctx))
}

/// Loads NCCL from `METALOOP_NCCL_LIBRARY` if set, else the first of [`NCCL_NAMES`] found.
fn load_library() -> Result<Lib> {
    let names: Vec<String> = match std::env::var(NCCL_LIBRARY_ENV) {
        Ok(path) if !path.is_empty() => vec![path],
        _ => NCCL_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut failures = Vec::new();
    for name in &names {
        // SAFETY: loading NCCL runs its (trusted) initialisers; cudarc then looks up each symbol.
        // cudarc panics if a symbol is missing (an NCCL older than its bindings): caught below.
        let loaded = catch_unwind(AssertUnwindSafe(|| unsafe { Lib::new(name) }));
        match loaded {
            Ok(Ok(lib)) => return Ok(lib),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(p) => failures.push(format!("{name}: {}", panic_text(&p))),
        }
    }
    Err(Error::NcclUnavailable(format!(
        "{} not found or not loadable ({}); install NCCL (it comes with a CUDA build of libtorch) \
         and put it on LD_LIBRARY_PATH, or set {NCCL_LIBRARY_ENV}=/path/to/libnccl.so.2",
        names.join(" or "),
        failures.join("; ")
    )))
}

/// Turns an NCCL status into a `Result`, with NCCL's own description of the error.
fn check(lib: &Lib, op: &str, status: ffi::ncclResult_t) -> Result<()> {
    if status == ffi::ncclResult_t::ncclSuccess {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static, NUL-terminated string for any status.
    let text = unsafe { CStr::from_ptr((lib.ncclGetErrorString)(status)) };
    Err(Error::Comm(format!(
        "{op}: NCCL error {status:?}: {}",
        text.to_string_lossy()
    )))
}

/// The message of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
