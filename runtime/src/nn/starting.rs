//! Starting weights: PyTorch-named tensors from a safetensors file (e.g. a pretrained feature
//! extractor) loaded into a model's freshly initialised [`Params`], with a fresh head where the
//! file has none or one for another number of ways. Names and shapes are checked; a mismatch is
//! [`Error::StartingWeights`] naming the tensor. It must not know which model it loads (the
//! caller names the head).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use super::BnState;
use crate::params::kind_of;
use crate::{Error, Layout, Params, Result};

/// What [`load_starting_weights`] made.
#[derive(Debug)]
pub struct StartingWeights {
    /// Every parameter: the file's values, or the seeded initialisation for the fresh ones.
    pub params: Params,
    /// The head parameters left at their initialisation (absent from the file, or another shape).
    pub fresh: Vec<String>,
    /// The file's BatchNorm running statistics ("x.running_mean", "x.running_var" of a module
    /// "x" with parameters in the model), for callers that normalise with running statistics.
    pub running: BnState,
}

const BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Loads `path` into parameters of `layout` (a `requires_grad` leaf `[P]` of `kind` on
/// `device`). Parameters start from [`Params::init_layout`] with `seed`; every one of them must
/// be in the file with its shape, except the `head` parameters, which stay fresh when the file
/// lacks them or has them at another shape. Only tensors whose names start with `prefix` are
/// read (with `prefix` removed; `""` reads all), and each of those must be a parameter of the
/// model or a BatchNorm buffer of one of its modules (PyTorch's `running_mean`, `running_var`,
/// `num_batches_tracked`).
pub fn load_starting_weights(
    layout: Arc<Layout>,
    path: &Path,
    prefix: &str,
    head: &[String],
    seed: u64,
    kind: Kind,
    device: Device,
) -> Result<StartingWeights> {
    let fail = |tensor: &str, reason: String| Error::StartingWeights {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    };
    let bytes =
        crate::files::read_bounded(path, crate::files::MAX_TENSOR_FILE).map_err(|source| {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tensors: BTreeMap<&str, &str> = file
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix).map(|local| (local, n.as_str())))
        .collect();
    let running =
        read_buffers(&file, &tensors, &layout, kind, device).map_err(|(t, r)| fail(&t, r))?;
    let params = Params::init_layout(layout.clone(), seed, Kind::Double, Device::Cpu)?;
    let mut fresh = Vec::new();
    for spec in layout.specs() {
        let is_head = head.iter().any(|h| *h == spec.name);
        let found = tensors.get(spec.name.as_str()).map(|&name| {
            let view = file.tensor(name).map_err(|e| fail(name, e.to_string()))?;
            Ok::<_, Error>((
                name,
                view.shape().iter().map(|&d| d as i64).collect::<Vec<_>>(),
            ))
        });
        let (name, shape) = match found.transpose()? {
            Some((name, shape)) if shape == spec.shape => (name, shape),
            _ if is_head => {
                fresh.push(spec.name.clone());
                continue;
            }
            Some((name, shape)) => {
                let reason = format!(
                    "has shape {shape:?} in the file, the model expects {:?}",
                    spec.shape
                );
                return Err(fail(name, reason));
            }
            None => {
                let reason = format!(
                    "missing from the file (the model needs shape {:?})",
                    spec.shape
                );
                return Err(fail(&format!("{prefix}{}", spec.name), reason));
            }
        };
        let value = read(&file, name, Kind::Double).map_err(|r| fail(name, r))?;
        params.set(&spec.name, &value.f_reshape(shape.as_slice())?)?;
    }
    let flat = params
        .flat()
        .f_detach()?
        .f_to_kind(kind)?
        .f_to_device(device)?
        .f_set_requires_grad(true)?;
    Ok(StartingWeights {
        params: Params::from_flat(layout, flat)?,
        fresh,
        running,
    })
}

/// The file's tensors (local name -> file name) that are not parameters: each must be a
/// BatchNorm buffer of a module with a "weight" in `layout`; the running statistics among them,
/// as a [`BnState`]. An error is (file name, reason).
fn read_buffers(
    file: &SafeTensors<'_>,
    tensors: &BTreeMap<&str, &str>,
    layout: &Layout,
    kind: Kind,
    device: Device,
) -> std::result::Result<BnState, (String, String)> {
    let mut running = BnState::new();
    for (&local, &name) in tensors {
        if layout.get(local).is_some() {
            continue;
        }
        let owner = BUFFERS
            .iter()
            .find_map(|b| local.strip_suffix(b)?.strip_suffix('.'));
        let Some(module) = owner.filter(|m| layout.get(&format!("{m}.weight")).is_some()) else {
            let reason =
                "is neither a parameter of the model nor a BatchNorm buffer of one of its modules";
            return Err((name.to_string(), reason.to_string()));
        };
        if local.ends_with("num_batches_tracked") {
            continue;
        }
        // The weight's shape: [C], or [S, C] for a per-step BatchNorm (MAML++).
        let shape = layout
            .get(&format!("{module}.weight"))
            .map(|s| s.shape.clone())
            .unwrap_or_default();
        let channels: i64 = shape.iter().product();
        let value = read(file, name, kind).map_err(|r| (name.to_string(), r))?;
        if value.numel() as i64 != channels {
            let reason = format!(
                "has {} elements, its module's weight has shape {shape:?}",
                value.numel()
            );
            return Err((name.to_string(), reason));
        }
        let value = value
            .f_view(shape.as_slice())
            .and_then(|v| v.f_to_device(device))
            .map_err(|e| (name.to_string(), e.to_string()))?;
        running.insert(local, value);
    }
    Ok(running)
}

/// Tensor `name` of `file` as a flat CPU tensor of `kind`; the reason when its dtype is not a
/// float one.
fn read(file: &SafeTensors<'_>, name: &str, kind: Kind) -> std::result::Result<Tensor, String> {
    let view = file.tensor(name).map_err(|e| e.to_string())?;
    let file_kind = kind_of(view.dtype())
        .ok_or_else(|| format!("has dtype {:?}, expected a float dtype", view.dtype()))?;
    let numel: usize = view.shape().iter().product();
    // SafeTensors::deserialize checked that the data holds exactly shape × dtype bytes.
    Tensor::f_from_data_size(view.data(), &[numel as i64], file_kind)
        .and_then(|t| t.f_to_kind(kind))
        .map_err(|e| e.to_string())
}
