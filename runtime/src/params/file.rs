//! Parameters to and from safetensors files, with PyTorch's `state_dict` names.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::{check_float, Layout, Params};
use crate::{Error, Result};

fn dtype_of(op: &'static str, kind: Kind) -> Result<Dtype> {
    match kind {
        Kind::Float => Ok(Dtype::F32),
        Kind::Double => Ok(Dtype::F64),
        Kind::Half => Ok(Dtype::F16),
        Kind::BFloat16 => Ok(Dtype::BF16),
        _ => Err(Error::Kind {
            op,
            kind,
            expected: "Float, Double, Half or BFloat16",
        }),
    }
}

pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F64 => Some(Kind::Double),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

impl Params {
    /// Writes one tensor per parameter, with its `state_dict` name and shape, to a safetensors
    /// file that PyTorch reads with `model.load_state_dict(safetensors.torch.load_file(path))`.
    /// Task-batched `[T, P]` parameters are refused: save each task with `task(i)?.save(..)`.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.tasks().is_some() {
            return Err(Error::Shape {
                op: "Params::save",
                expected: format!(
                    "[{}] (one task; save each task of [T, P] parameters with Params::task(i))",
                    self.layout.numel()
                ),
                got: self.flat.size(),
            });
        }
        let kind = self.kind();
        let dtype = dtype_of("Params::save", kind)?;
        let flat = self
            .flat
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let elt = kind.elt_size_in_bytes();
        let mut bytes = vec![0u8; flat.numel() * elt];
        flat.f_copy_data_u8(&mut bytes, flat.numel())?;
        let mut views = Vec::with_capacity(self.layout.len());
        for spec in &self.layout.specs {
            let start = spec.offset as usize * elt;
            let end = start + spec.numel as usize * elt;
            let shape = spec.shape.iter().map(|&d| d as usize).collect();
            let view = TensorView::new(dtype, shape, &bytes[start..end]).map_err(|e| {
                Error::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("`{}`: {e}", spec.name),
                }
            })?;
            views.push((spec.name.clone(), view));
        }
        // PyTorch's save_file writes this metadata too.
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let file = safetensors::serialize(views, &metadata).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, file).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads parameters saved by [`Params::save`] or by PyTorch (`safetensors.torch.save_file(
    /// model.state_dict(), path)`) into a `requires_grad` leaf `[P]` of `kind` on `device`.
    /// Every name of the layout must be in the file with its shape, and the file must hold no
    /// other tensor (as PyTorch's strict `load_state_dict`).
    pub fn load(layout: Arc<Layout>, path: &Path, kind: Kind, device: Device) -> Result<Params> {
        check_float("Params::load", kind)?;
        let fail = |message: String| Error::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let bytes =
            crate::files::read_bounded(path, crate::files::MAX_TENSOR_FILE).map_err(|source| {
                Error::Io {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
        let known: HashSet<&str> = layout.names().collect();
        let mut unexpected: Vec<&str> = file
            .names()
            .into_iter()
            .map(|n| n.as_str())
            .filter(|n| !known.contains(n))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            return Err(fail(format!(
                "unexpected tensors {unexpected:?} in the file (the model has: {})",
                layout.names().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut parts = Vec::with_capacity(layout.len());
        for spec in &layout.specs {
            let view = file.tensor(&spec.name).map_err(|_| {
                fail(format!(
                    "tensor `{}` (shape {:?}) is missing from the file",
                    spec.name, spec.shape
                ))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != spec.shape {
                return Err(fail(format!(
                    "tensor `{}` has shape {shape:?} in the file, the model expects {:?}",
                    spec.name, spec.shape
                )));
            }
            let file_kind = kind_of(view.dtype()).ok_or_else(|| {
                fail(format!(
                    "tensor `{}` has dtype {:?}; expected a float dtype",
                    spec.name,
                    view.dtype()
                ))
            })?;
            // SafeTensors::deserialize checked that the data holds exactly shape x dtype bytes.
            let tensor = Tensor::f_from_data_size(view.data(), &[spec.numel], file_kind)?;
            parts.push(tensor.f_to_kind(kind)?);
        }
        let flat = if parts.is_empty() {
            Tensor::f_zeros([0], (kind, Device::Cpu))?
        } else {
            Tensor::f_cat(&parts, 0)?
        };
        let flat = flat
            .f_to_device(device)?
            .f_detach()?
            .f_set_requires_grad(true)?;
        Ok(Params { layout, flat })
    }
}
