//! The model file, `model.safetensors` (and `model.best.safetensors`): θ0 under PyTorch's
//! state_dict names, and each learned inner hyperparameter as `inner.<name>`, of any shape
//! (Meta-SGD's `inner.lr` `[P]`, LSLR's `inner.lr` `[steps, G]`, `learn_lr`'s `inner.lr` and
//! `learn_momentum`'s `inner.momentum` `[G]`, G in θ0's tensor order). PyTorch reads θ0 back with
//! `load_state_dict(..., strict=False)`. With `eval.batchnorm = "running"` the BatchNorm running
//! statistics follow, under PyTorch's buffer names ("0.1.running_mean").
//!
//! This is the one module that writes and reads these files, and the one that knows the
//! `inner.` prefix. Checkpoints hold the same tensors beside the outer optimizer's state
//! (engine::resume). One rule on reading: every tensor the model has, with its shape, and
//! nothing else; an error names the tensor (and the file, when there is one).

use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::atomic::write_atomic;
use crate::host::cpu;
use crate::meta_params::MetaParams;
use crate::rundir;
use crate::tensor_file::{parse_tensors, safetensors_bytes};
use crate::{Error, Result};

/// The prefix of learned inner hyperparameters' names.
const INNER: &str = "inner.";

/// The model file's tensors: θ0 under its PyTorch names, then each learned inner
/// hyperparameter as `inner.<name>`, as detached CPU copies.
pub fn tensors(meta: &MetaParams) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, t) in meta.theta().iter() {
        out.push((name.to_string(), cpu(&t)?));
    }
    for h in meta.learned() {
        out.push((format!("{INNER}{}", h.name), cpu(&h.tensor)?));
    }
    for (name, t) in meta.running() {
        out.push((name.clone(), cpu(t)?));
    }
    Ok(out)
}

/// The names [`tensors`] gives for `meta`, in its order.
pub fn names(meta: &MetaParams) -> Vec<String> {
    let mut names: Vec<String> = meta.theta().iter().map(|(n, _)| n.to_string()).collect();
    names.extend(meta.learned().iter().map(|h| format!("{INNER}{}", h.name)));
    names.extend(meta.running().iter().map(|(n, _)| n.clone()));
    names
}

/// Writes `meta` as the model file `path`, atomically. Without learned hyperparameters it is
/// θ0 alone, as `Params::save` writes it (with PyTorch's `format: pt` metadata).
pub fn write(path: PathBuf, meta: &MetaParams) -> Result<PathBuf> {
    if meta.learned().is_empty() && meta.running().is_empty() {
        return rundir::write_params(path, meta.theta());
    }
    let scratch = path.with_extension("safetensors.scratch");
    let bytes = safetensors_bytes(&tensors(meta)?, &scratch)?;
    write_atomic(&path, &bytes)?;
    Ok(path)
}

/// The tensors of the model file `path`, on the CPU, in the file's order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tensors(&bytes).map_err(|e| Error::InvalidSetting {
        what: "model file",
        reason: format!("{}: not a safetensors file: {e}", path.display()),
    })
}

/// Sets `meta` from the model file `path` (see [`assign`]).
pub fn load(path: &Path, meta: &mut MetaParams) -> Result<()> {
    assign(meta, &read(path)?, Some(path))
}

/// Sets θ0 and the learned inner hyperparameters of `meta` from a model file's `tensors`: every
/// tensor of θ0 and every `inner.<name>` the algorithm learns, each with the model's shape, and
/// nothing else. Values take the model's dtype and device. `file` names the file in errors.
pub fn assign(
    meta: &mut MetaParams,
    tensors: &[(String, Tensor)],
    file: Option<&Path>,
) -> Result<()> {
    let f = fitted(meta, tensors, "model file", file)?;
    meta.set(&f.theta, &f.learned, &f.running)
}

/// A model file's tensors, checked and converted to the model's dtype and device: θ0's by name,
/// the learned hyperparameters' and the running statistics' in `MetaParams` order.
pub(crate) struct Fitted {
    pub(crate) theta: Vec<(String, Tensor)>,
    pub(crate) learned: Vec<Tensor>,
    pub(crate) running: Vec<Tensor>,
}

/// [`assign`]'s tensors, checked and converted but not set. `what` names the tensors' origin in
/// errors (a checkpoint holds them too).
pub(crate) fn fitted(
    meta: &MetaParams,
    tensors: &[(String, Tensor)],
    what: &'static str,
    file: Option<&Path>,
) -> Result<Fitted> {
    let wrong = |reason: String| Error::InvalidSetting {
        what,
        reason: match file {
            Some(f) => format!("{}: {reason}", f.display()),
            None => reason,
        },
    };
    let fit = |name: &str, like: &Tensor| -> Result<Tensor> {
        let (_, t) = tensors
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| wrong(format!("tensor `{name}` is missing")))?;
        if t.size() != like.size() {
            return Err(wrong(format!(
                "tensor `{name}` has shape {:?}, the model needs {:?}",
                t.size(),
                like.size()
            )));
        }
        Ok(t.f_to_device(like.device())?.f_to_kind(like.kind())?)
    };
    let names = names(meta);
    if let Some((extra, _)) = tensors.iter().find(|(n, _)| !names.contains(n)) {
        return Err(wrong(format!(
            "tensor `{extra}` is not one of this model's"
        )));
    }
    let theta = meta
        .theta()
        .iter()
        .map(|(name, view)| Ok((name.to_string(), fit(name, &view)?)))
        .collect::<Result<_>>()?;
    let learned = meta
        .learned()
        .iter()
        .map(|h| fit(&format!("{INNER}{}", h.name), &h.tensor))
        .collect::<Result<_>>()?;
    let running = meta
        .running()
        .iter()
        .map(|(name, t)| fit(name, t))
        .collect::<Result<_>>()?;
    Ok(Fitted {
        theta,
        learned,
        running,
    })
}
