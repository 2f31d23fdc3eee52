//! `HostTensor`: the backend-neutral form in which values enter and leave a backend.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A dense row-major tensor of `f64` values. An `f32` run stores its `f32` values here
/// widened to `f64`, which is exact, so narrowing back gives the very same bits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} holds {n} values but {} were given",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }

    pub fn scalar(v: f64) -> Self {
        HostTensor { shape: vec![], data: vec![v] }
    }

    pub fn filled(shape: &[usize], v: f64) -> Self {
        let n = shape.iter().product();
        HostTensor { shape: shape.to_vec(), data: vec![v; n] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same values rounded to `dtype` (a no-op for `f64`).
    pub fn rounded(&self, dtype: DType) -> Self {
        HostTensor { shape: self.shape.clone(), data: self.data.iter().map(|&v| dtype.round(v)).collect() }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// Rows of a 2-D tensor, for JSON output in the `[[..], [..]]` form people read.
    pub fn rows(&self) -> Vec<Vec<f64>> {
        match self.shape.as_slice() {
            [_, c] if *c > 0 => self.data.chunks(*c).map(<[f64]>::to_vec).collect(),
            _ => vec![self.data.clone()],
        }
    }

    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}
