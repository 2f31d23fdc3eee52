//! Reading and writing named tensors as safetensors files: PyTorch state_dicts in
//! (`--params`), gradients out (`--save-grads`).

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::mnist::ParamSet;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;

/// Every tensor of a safetensors file, widened to f64. f32 and f64 tensors only.
pub fn read(path: &Path) -> Result<ParamSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| Error::file(path, format!("tensor '{name}': {e}")))?;
        let raw = view.data();
        let data: Vec<f64> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
            // PyTorch stores batch norm's `num_batches_tracked` as int64; no backend uses it.
            Dtype::I64 if name.ends_with("num_batches_tracked") => continue,
            other => return Err(Error::file(path, format!("tensor '{name}' is {other:?}; expected F32 or F64"))),
        };
        tensors.push((name, HostTensor::new(view.shape().to_vec(), data).map_err(|e| Error::file(path, e.to_string()))?));
    }
    Ok(ParamSet { tensors })
}

/// Writes `set` in `dtype` (f64 values of an f32 run narrow back exactly).
pub fn write(path: &Path, set: &ParamSet, dtype: DType) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = set
        .tensors
        .iter()
        .map(|(n, t)| {
            let bytes = match dtype {
                DType::F32 => t.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
                DType::F64 => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            };
            (n.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    };
    let views = encoded
        .iter()
        .map(|(n, shape, bytes)| Ok((n.as_str(), TensorView::new(st_dtype, shape.clone(), bytes).map_err(|e| Error::file(path, e.to_string()))?)))
        .collect::<Result<Vec<_>>>()?;
    let out = safetensors::serialize(views, None).map_err(|e| Error::file(path, e.to_string()))?;
    // Through a temporary file and a rename: a killed run leaves the old file or the new.
    crate::report::write_atomic(path, out)
}
