//! Task-parallel workers inside one rank: the rank's tasks split into W contiguous chunks, each
//! chunk's inner loops and meta-gradient on its own thread with its own libtorch intra-op
//! threads, the chunks' results summed afterwards (as the ranks' are by the all-reduce).
//!
//! Why: on the CPU a meta-iteration is thousands of small ops (BatchNorm's double backward on a
//! 5-image support set, the optimizer step, the autograd bookkeeping) that one intra-op thread
//! team cannot split, while independent tasks can run side by side (benches/README.md has the
//! measurements). Each worker builds its own
//! autograd graph on the shared θ0 leaf; libtorch's autograd engine runs concurrent backward
//! passes on the calling threads. On CUDA one worker drives the device (it is already parallel).

use std::ops::Range;
use std::sync::Arc;

use tch::Device;

use crate::{Error, Result};

/// How a rank spreads its tasks over threads. The threads other than the caller's live as long
/// as the `Workers` (a thread pool): starting threads per iteration, each with fresh libtorch
/// thread-local state, cost more than a small workload's iteration saves.
#[derive(Debug, Clone)]
pub struct Workers {
    /// Worker threads (the calling thread is the first).
    pub count: usize,
    /// libtorch intra-op threads per worker.
    pub intra_threads: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Workers {
    /// The smallest model (parameters per task) that automatic planning spreads over workers:
    /// below it an iteration is mostly dispatch overhead that more threads do not shorten (the
    /// sinusoid MLP gains nothing from a second worker, the Conv-4 does; benches/README.md).
    pub const MIN_AUTO_PARAMS: i64 = 10_000;

    /// One worker with `threads` intra-op threads: the plain single-thread-of-control path.
    pub fn single(threads: usize) -> Workers {
        Workers {
            count: 1,
            intra_threads: threads.max(1),
            pool: None,
        }
    }

    /// `requested` workers (0: automatic) for `threads` CPU threads in all and `tasks` tasks of a
    /// model with `params` parameters per task on `device`. Automatic: on the CPU, for models of
    /// at least [`Workers::MIN_AUTO_PARAMS`] parameters, one worker per thread, each with one
    /// intra-op thread, never more workers than tasks; otherwise (CUDA, or a model so small that
    /// its iteration is dispatch overhead) one worker.
    pub fn plan(
        requested: usize,
        threads: usize,
        tasks: usize,
        params: i64,
        device: Device,
    ) -> Workers {
        let threads = threads.max(1);
        let count = match (requested, device) {
            (0, Device::Cpu) if params >= Self::MIN_AUTO_PARAMS => threads,
            (0, _) => 1,
            (n, _) => n,
        }
        .clamp(1, tasks.max(1));
        let intra = (threads / count).max(1);
        // A pool that cannot start leaves the work on the calling thread.
        let pool = (count > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(count - 1)
                    .thread_name(|i| format!("metaloop-worker-{}", i + 1))
                    .start_handler(move |_| set_intra_threads(intra))
                    .build()
                    .ok()
            })
            .flatten()
            .map(Arc::new);
        Workers {
            count: if pool.is_some() { count } else { 1 },
            intra_threads: intra,
            pool,
        }
    }

    /// The contiguous task range of each worker (the first ones one task longer when `tasks`
    /// does not divide).
    pub fn chunks(&self, tasks: usize) -> Vec<Range<usize>> {
        let (base, extra) = (tasks / self.count, tasks % self.count);
        let mut start = 0;
        (0..self.count)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let r = start..start + len;
                start += len;
                r
            })
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Runs `f` on every input, the first on this thread and the others on the pool's threads,
    /// every one with [`Workers::intra_threads`] libtorch threads (a per-thread OpenMP setting,
    /// so each thread sets its own). Returns the results in input order; the first error wins.
    pub fn run<I: Send, R: Send>(
        &self,
        inputs: Vec<I>,
        f: impl Fn(I) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let mut inputs = inputs.into_iter();
        let Some(first) = inputs.next() else {
            return Ok(Vec::new());
        };
        set_intra_threads(self.intra_threads);
        let rest: Vec<I> = inputs.collect();
        let Some(pool) = self.pool.as_ref().filter(|_| !rest.is_empty()) else {
            let mut out = vec![f(first)?];
            for input in rest {
                out.push(f(input)?);
            }
            return Ok(out);
        };
        let f = &f;
        let mut slots: Vec<Option<Result<R>>> = (0..rest.len()).map(|_| None).collect();
        let first_out = pool.in_place_scope(|s| {
            for (input, slot) in rest.into_iter().zip(slots.iter_mut()) {
                s.spawn(move |_| *slot = Some(f(input)));
            }
            f(first)
        });
        let mut out = vec![first_out?];
        for slot in slots {
            out.push(slot.unwrap_or_else(|| {
                Err(Error::State(
                    "a task worker finished without a result".into(),
                ))
            })?);
        }
        Ok(out)
    }
}

thread_local! {
    /// The intra-op thread count this thread last set (0: never).
    static INTRA_THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sets this thread's libtorch intra-op threads (OpenMP's setting is per thread), only when it
/// changes: libtorch's set_num_threads also empties oneDNN's cache of compiled convolution
/// primitives, which then have to be compiled again.
fn set_intra_threads(n: usize) {
    INTRA_THREADS.with(|current| {
        if current.get() != n {
            tch::set_num_threads(n as i32);
            current.set(n);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_chunks() {
        let conv = 112_005;
        let w = Workers::plan(0, 2, 8, conv, Device::Cpu);
        assert_eq!((w.count, w.intra_threads), (2, 1));
        assert_eq!(w.chunks(8), vec![0..4, 4..8]);
        let w = Workers::plan(0, 4, 3, conv, Device::Cpu);
        assert_eq!((w.count, w.intra_threads), (3, 1));
        assert_eq!(w.chunks(3), vec![0..1, 1..2, 2..3]);
        let w = Workers::plan(3, 2, 25, 1761, Device::Cpu);
        assert_eq!(w.chunks(25), vec![0..9, 9..17, 17..25]);
        let small = Workers::plan(0, 2, 25, 1761, Device::Cpu);
        assert_eq!((small.count, small.intra_threads), (1, 2));
        assert_eq!(Workers::plan(0, 16, 32, conv, Device::Cuda(0)).count, 1);
        assert_eq!(Workers::single(2).count, 1);
        assert_eq!(Workers::plan(1, 2, 8, conv, Device::Cpu).intra_threads, 2);
    }

    #[test]
    fn runs_every_input_in_order() {
        let w = Workers::plan(3, 3, 3, 1, Device::Cpu);
        let out = w.run(vec![1, 2, 3], |i| Ok(i * 10)).unwrap();
        assert_eq!(out, vec![10, 20, 30]);
        let err = w
            .run(vec![1, 2], |i| {
                if i == 2 {
                    Err(Error::State("two".into()))
                } else {
                    Ok(i)
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("two"));
    }
}
