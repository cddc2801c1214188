//! How a [`TrainerBuilder`] assembles a [`Trainer`]: it validates the config, builds the parts
//! that were not given from it and initialises the meta-parameters. A child of engine::train,
//! which reaches the fields of both.

use super::*;

impl TrainerBuilder {
    /// Validates the config, builds what was not given, initialises the meta-parameters.
    pub fn build(self) -> Result<Trainer> {
        self.build_keeping_comm().map_err(|(e, _)| e)
    }

    /// [`TrainerBuilder::build`], which on failure gives the communicator back: the ranks can
    /// then agree on which of them failed before the job ends (the launcher prints a bad input
    /// once, not once per rank). Nothing here is collective.
    #[allow(clippy::result_large_err)]
    pub fn build_keeping_comm(
        mut self,
    ) -> std::result::Result<Trainer, (Error, Box<dyn Communicator>)> {
        let comm = self.communicator.take().unwrap_or_else(|| Box::new(Local));
        match self.assemble(comm.rank(), comm.size()) {
            Ok(mut trainer) => {
                trainer.comm = comm;
                Ok(trainer)
            }
            Err(e) => Err((e, comm)),
        }
    }

    /// Everything but the communicator, for rank `rank` of `size`: the trainer holds `Local`
    /// until [`TrainerBuilder::build_keeping_comm`] puts the real one in.
    fn assemble(self, rank: usize, size: usize) -> Result<Trainer> {
        let cfg = self.cfg;
        cfg.validate().map_err(Error::Config)?;
        let device = match self.device {
            Some(d) => d,
            None => setup::device(cfg.run.device)?,
        };
        setup::precision(cfg.run.precision, device)?;
        setup::conv_kernels(cfg.run.conv_tasks, cfg.run.channels_last);
        let kind = setup::kind(cfg.run.dtype);
        let source = match self.tasks {
            Some(s) => s,
            None => setup::task_source(&cfg)?,
        };
        let own_model = self.model.is_none();
        let protocol = EvalProtocol::new(&cfg, &source, own_model)?;
        let model = match self.model {
            Some(m) => m,
            None => {
                let channels = source.input_shape().first().copied().unwrap_or(1);
                setup::build_model(&cfg, channels)?
            }
        };
        let loss = self.loss.unwrap_or_else(|| loss::for_task(cfg.task.kind));
        let algorithm = self
            .algorithm
            .unwrap_or_else(|| algorithms::build(cfg.algorithm.name));
        let theta = setup::initial_params(&cfg, model.as_ref(), kind, device)?;
        let learned = algorithm.learned(&cfg.algorithm, theta.layout(), (kind, device))?;
        let frozen = algorithm.frozen(theta.layout());
        let running = crate::running::for_config(&cfg, theta.layout(), (kind, device))?;
        let meta = MetaParams {
            theta,
            learned,
            frozen,
            running,
        };
        let outer = OuterStep::new(&cfg, self.fused, &meta)?;
        let threads = self
            .threads
            .unwrap_or_else(|| tch::get_num_threads().max(1) as usize);
        let (requested, threads) = worker_threads(&cfg, device, threads);
        let workers = Workers::plan(
            requested,
            threads,
            rank_slice(cfg.outer.meta_batch, rank, size).len(),
            meta.theta.layout().numel(),
            device,
        );
        Ok(Trainer {
            compute: cfg.clone(),
            plan: None,
            cfg,
            comm: Box::new(Local),
            net: Net {
                model,
                loss,
                kind,
                device,
                fused: self.fused,
            },
            algorithm,
            meta,
            outer,
            tasks: TaskFeed::new(source),
            workers,
            protocol,
        })
    }
}

/// The workers `run.workers` asks for and the threads they share. Reproducible on the CPU: one
/// intra-op thread per worker, since libtorch's CPU kernels split their reductions by the thread
/// count (engine::exact).
fn worker_threads(cfg: &TrainConfig, device: Device, threads: usize) -> (usize, usize) {
    match (cfg.run.reproducible, device) {
        (true, Device::Cpu) => {
            let n = if cfg.run.workers == 0 {
                threads
            } else {
                cfg.run.workers
            };
            (n, n)
        }
        _ => (cfg.run.workers, threads),
    }
}
