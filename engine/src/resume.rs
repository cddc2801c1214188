//! Checkpoint state: everything a resume needs, as named tensors, and putting it back.
//!
//! The tensors are the model file's (engine::model_file: θ0 under PyTorch's names, `inner.<name>`)
//! plus the outer optimizer's state, `outer.step` and `outer.<buffer>`, and the count of clipped
//! outer steps, `outer.clips`. The learning-rate schedule needs no tensor: it is a function of
//! the iteration (engine::schedule). The sampler needs no
//! tensor: tasks are a pure function of (seed, iteration, task index). engine::checkpoint writes
//! and verifies the files. Nothing here prints.

use std::path::PathBuf;

use metaloop_runtime::optim::OptState;
use tch::Tensor;

use crate::checkpoint::{self, SamplerState};
use crate::config::TrainConfig;
use crate::host::cpu;
use crate::meta_params::MetaParams;
use crate::model_file;
use crate::outer::OuterStep;
use crate::rundir::{self, RunDir};
use crate::{Error, Result};

/// The prefix of the outer optimizer's tensors.
const OUTER: &str = "outer.";
/// The outer optimizer's step count.
const STEP: &str = "outer.step";
/// The number of clipped outer steps (`outer.clip_grad_norm`; absent in older checkpoints: 0).
const CLIPS: &str = "outer.clips";

/// The state of a meta-training run after `iteration` outer iterations.
pub struct Snapshot {
    pub iteration: u64,
    /// The model file's tensors, then `outer.step` and `outer.<buffer>` (CPU copies).
    pub tensors: Vec<(String, Tensor)>,
}

impl Snapshot {
    /// The state of `meta` and `outer` now.
    pub(crate) fn take(meta: &MetaParams, outer: &OuterStep) -> Result<Snapshot> {
        let mut tensors = model_file::tensors(meta)?;
        let state = outer.state();
        tensors.push((STEP.to_string(), Tensor::f_from_slice(&[state.step()])?));
        let clips = i64::try_from(outer.clips).unwrap_or(i64::MAX);
        tensors.push((CLIPS.to_string(), Tensor::f_from_slice(&[clips])?));
        for (n, t) in state.tensors() {
            tensors.push((format!("{OUTER}{n}"), cpu(t)?));
        }
        Ok(Snapshot {
            iteration: outer.iteration,
            tensors,
        })
    }

    /// Puts this state back into `meta` and `outer`: every tensor must be there, with the
    /// shape of this model and optimizer, and no other.
    pub(crate) fn restore(&self, meta: &mut MetaParams, outer: &mut OuterStep) -> Result<()> {
        let buffers: Vec<String> = outer
            .state()
            .tensors()
            .map(|(n, _)| format!("{OUTER}{n}"))
            .collect();
        let is_outer = |n: &str| n == STEP || n == CLIPS || buffers.iter().any(|b| b == n);
        let find = |name: &str| {
            self.tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::State(format!("tensor `{name}` is missing")))
        };
        let model: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter(|(n, _)| !is_outer(n))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let fitted = model_file::fitted(meta, &model, "checkpoint", None)?;
        let step = find(STEP)?.f_int64_value(&[0])?;
        let mut state = Vec::new();
        for (n, like) in outer.state().tensors() {
            let name = format!("{OUTER}{n}");
            let t = find(&name)?;
            if t.size() != like.size() {
                return Err(Error::State(format!(
                    "tensor `{name}` has shape {:?}, the optimizer needs {:?}",
                    t.size(),
                    like.size()
                )));
            }
            state.push((
                n.to_string(),
                t.f_to_device(like.device())?.f_to_kind(like.kind())?,
            ));
        }
        let clips = match self.tensors.iter().find(|(n, _)| n == CLIPS) {
            Some((_, t)) => u64::try_from(t.f_int64_value(&[0])?).unwrap_or(0),
            None => 0,
        };
        meta.set(&fitted.theta, &fitted.learned, &fitted.running)?;
        outer.restore(self.iteration, OptState::new(step, state), clips);
        Ok(())
    }

    /// Writes this state as the checkpoint of its iteration into `run` (after syncing the
    /// metrics logged so far), keeping `log.keep_checkpoints`. Returns the manifest's path.
    pub fn save(&self, run: &RunDir, cfg: &TrainConfig) -> Result<PathBuf> {
        let it = self.iteration;
        let _s = tracing::info_span!("checkpoint", iteration = it).entered();
        run.sync_metrics()?;
        checkpoint::write(
            &run.checkpoints_dir(),
            it,
            &self.tensors,
            &rundir::config_hash(cfg),
            SamplerState {
                seed: cfg.run.seed,
                iteration: it,
            },
            cfg.log.keep_checkpoints,
        )
    }
}
