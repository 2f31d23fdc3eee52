//! The error relative to a scale: the one measure behind every gradient verdict
//! (`grads`, `run`, the op probes, the gate's suite and the tests), derived once here.

use super::{compare, TensorDiff, Tolerance};
use crate::dtype::DType;
use crate::error::Result;
use crate::host::HostTensor;

/// The larger of two measures, NaN when either is (a NaN must never hide behind a max).
pub fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The largest magnitude among `tensors`' entries.
pub fn largest_magnitude<'a>(tensors: impl IntoIterator<Item = &'a HostTensor>) -> f64 {
    tensors.into_iter().flat_map(|t| t.data.iter()).fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Worst `max|a-b| / s` over lists of tensors, where `s` is the largest magnitude of
/// all of `b`: one scale for the whole list. NaN if anything is not finite.
pub fn worst_scaled_over(a: &[HostTensor], b: &[HostTensor], dtype: DType) -> Result<f64> {
    let scale = largest_magnitude(b).max(f64::MIN_POSITIVE);
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = compare(x, y, dtype, Tolerance::torch_default(dtype))?;
        worst = max_nan(worst, if d.non_finite { f64::NAN } else { d.max_abs / scale });
    }
    Ok(worst)
}

/// `compare`, with the scaled error of a tensor that is tiny next to the rest of its
/// model (`|b| < floor_fraction · model_scale` everywhere) measured against that floor:
/// a bias in front of batch norm has an exact gradient of zero, and rounding noise
/// around zero is no disagreement.
pub fn compare_floored(a: &HostTensor, b: &HostTensor, dtype: DType, model_scale: f64, floor_fraction: f64) -> Result<TensorDiff> {
    let mut d = compare(a, b, dtype, Tolerance::torch_default(dtype))?;
    let floor = floor_fraction * model_scale;
    if !d.non_finite && largest_magnitude([b]) < floor {
        d.scaled = d.max_abs / floor;
    }
    Ok(d)
}
