//! When two numbers count as equal.

use serde::Serialize;

use crate::dtype::DType;

/// `|a - b| <= atol + rtol * |b|`, with `b` the reference: `torch.testing.assert_close`'s
/// rule. NaN or infinity on either side never satisfies it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// PyTorch's `assert_close` defaults for the dtype.
    pub fn torch_default(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Tolerance { rtol: 1.3e-6, atol: 1e-5 },
            DType::F64 => Tolerance { rtol: 1e-7, atol: 1e-7 },
        }
    }

    pub fn holds(&self, a: f64, b: f64) -> bool {
        a.is_finite() && b.is_finite() && (a - b).abs() <= self.atol + self.rtol * b.abs()
    }
}
