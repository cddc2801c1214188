//! Safetensors files as bytes: serialising named tensors, and parsing a file's bytes with the
//! size checks of the safetensors crate (a checkpoint's bytes are parsed after their sha256 is
//! checked). Nothing here prints.

use std::fs;
use std::path::Path;

use tch::{Device, Tensor};

use crate::{Error, Result};

/// Serialises tensors to safetensors bytes (detached, contiguous, on the CPU).
pub(crate) fn safetensors_bytes(tensors: &[(String, Tensor)], scratch: &Path) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    // tch serialises to a file only; write to a scratch file and read the bytes back.
    let written = Tensor::write_safetensors(&cpu, scratch)
        .map_err(Error::from)
        .and_then(|()| {
            fs::read(scratch).map_err(|source| Error::Io {
                path: scratch.to_path_buf(),
                source,
            })
        });
    let _ = fs::remove_file(scratch);
    written
}

/// The named tensors of a safetensors file's bytes, on the CPU, in the file's order.
pub fn parse_tensors(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    // The header is a JSON object, without order: take the tensors in the order of their data.
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        use safetensors::Dtype as D;
        use tch::Kind as K;
        let kind = match view.dtype() {
            D::F64 => K::Double,
            D::F32 => K::Float,
            D::F16 => K::Half,
            D::BF16 => K::BFloat16,
            D::I64 => K::Int64,
            D::I32 => K::Int,
            D::I16 => K::Int16,
            D::I8 => K::Int8,
            D::U8 => K::Uint8,
            D::BOOL => K::Bool,
            other => return Err(format!("{name}: dtype {other:?} is not read")),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        // SafeTensors::deserialize checked that the data holds exactly shape × dtype bytes.
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| format!("{name}: {e}"))?;
        out.push((name, t));
    }
    Ok(out)
}
