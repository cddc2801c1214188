//! Background prefetching of meta-batches, so compute never waits on task sampling or I/O.
//!
//! A [`Prefetcher`] owns one thread that calls [`TaskSource::meta_batch`] for iterations
//! `start, start + 1, ...` in order and sends the batches (moved to the configured device) through
//! a bounded crossbeam channel of `depth` slots. The consumer receives them in order with
//! [`Prefetcher::next_batch`] or as an iterator. The first error ends the stream: it is delivered
//! in its turn, after which the thread has stopped. Dropping the prefetcher closes the channel and
//! joins the thread, which exits at its next send. This module must not sample tasks itself.

use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use tch::Device;

use super::{MetaBatch, Split, TaskSource};
use crate::{Error, Result};

/// What to prefetch: the tasks `tasks` of `split` for iterations `start..`, `depth` batches ahead,
/// delivered on `device`.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    pub seed: u64,
    pub split: Split,
    pub tasks: Range<usize>,
    pub start: u64,
    pub depth: usize,
    pub device: Device,
}

impl PrefetchConfig {
    /// From iteration 0, two batches ahead, on the CPU.
    pub fn new(seed: u64, split: Split, tasks: Range<usize>) -> PrefetchConfig {
        PrefetchConfig {
            seed,
            split,
            tasks,
            start: 0,
            depth: 2,
            device: Device::Cpu,
        }
    }

    /// Starts the background thread.
    pub fn spawn(self, source: Arc<dyn TaskSource>) -> Result<Prefetcher> {
        Prefetcher::spawn(source, self)
    }
}

metaloop_runtime::setters!(PrefetchConfig {
    /// The first iteration (to resume from a checkpoint).
    start: u64,
    /// Batches prepared ahead of the consumer (at least 1).
    depth: usize,
    /// The device the batches are moved to on the background thread.
    device: Device,
});

/// Meta-batches of iterations `start..`, prepared on a background thread (see the module notes).
#[derive(Debug)]
pub struct Prefetcher {
    receiver: Option<Receiver<Result<MetaBatch>>>,
    thread: Option<JoinHandle<()>>,
    next_iteration: u64,
    finished: bool,
}

impl Prefetcher {
    /// Starts the background thread for `config`.
    pub fn spawn(source: Arc<dyn TaskSource>, config: PrefetchConfig) -> Result<Prefetcher> {
        let (sender, receiver) = bounded(config.depth.max(1));
        let start = config.start;
        let thread = std::thread::Builder::new()
            .name("metaloop-prefetch".into())
            .spawn(move || {
                let mut iteration = config.start;
                loop {
                    let batch = source
                        .meta_batch(config.seed, iteration, config.tasks.clone(), config.split)
                        .and_then(|b| {
                            if config.device == Device::Cpu {
                                Ok(b)
                            } else {
                                b.to_device(config.device)
                            }
                        });
                    let failed = batch.is_err();
                    // A send error means the consumer dropped the receiver: stop.
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                    iteration += 1;
                }
            })
            .map_err(|e| Error::Prefetch(format!("cannot start the thread: {e}")))?;
        Ok(Prefetcher {
            receiver: Some(receiver),
            thread: Some(thread),
            next_iteration: start,
            finished: false,
        })
    }

    /// The iteration the next batch belongs to.
    pub fn next_iteration(&self) -> u64 {
        self.next_iteration
    }

    /// The next batch, waiting for it if it is not ready. After an error, every call returns an
    /// error.
    pub fn next_batch(&mut self) -> Result<MetaBatch> {
        if self.finished {
            return Err(Error::Prefetch(format!(
                "the stream ended before iteration {}",
                self.next_iteration
            )));
        }
        let received = match &self.receiver {
            Some(r) => r.recv(),
            None => return Err(Error::Prefetch("the receiver is gone".into())),
        };
        match received {
            Ok(Ok(batch)) => {
                self.next_iteration += 1;
                Ok(batch)
            }
            Ok(Err(e)) => {
                self.finished = true;
                Err(e)
            }
            Err(_) => {
                self.finished = true;
                Err(Error::Prefetch(format!(
                    "the thread stopped before iteration {} (it panicked)",
                    self.next_iteration
                )))
            }
        }
    }
}

impl Iterator for Prefetcher {
    type Item = Result<MetaBatch>;

    /// `Some` for every iteration; `None` only after an error was returned.
    fn next(&mut self) -> Option<Result<MetaBatch>> {
        if self.finished {
            None
        } else {
            Some(self.next_batch())
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail; it then returns.
        drop(self.receiver.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
