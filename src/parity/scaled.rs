//! The error relative to a scale: the one measure behind every gradient verdict
//! (`grads`, `run`, the op probes, the gate's suite and the tests), derived once here.

use super::{compare, compare_patterns, matching_non_finite, TensorDiff, Tolerance};
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
    worst_scaled_over_with(a, b, dtype, false)
}

/// `worst_scaled_over`; with `patterns`, NaN and infinity agree where both sides have
/// them in the same entries (`matching_non_finite`), and the scale is the largest finite
/// magnitude. NaN when a class differs.
pub fn worst_scaled_over_with(a: &[HostTensor], b: &[HostTensor], dtype: DType, patterns: bool) -> Result<f64> {
    let finite: Vec<HostTensor>;
    let b_scale = if patterns {
        finite = b.iter().map(|t| HostTensor { shape: t.shape.clone(), data: t.data.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect() }).collect();
        &finite[..]
    } else {
        b
    };
    let scale = largest_magnitude(b_scale).max(f64::MIN_POSITIVE);
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = if patterns { compare_patterns(x, y, dtype, Tolerance::torch_default(dtype))? } else { compare(x, y, dtype, Tolerance::torch_default(dtype))? };
        worst = max_nan(worst, if d.non_finite { f64::NAN } else { d.max_abs / scale });
    }
    Ok(worst)
}

/// `compare`, with the scaled error of a tensor that is tiny next to the rest of its
/// model (`|b| < floor_fraction · model_scale` everywhere) measured against that floor:
/// a bias in front of batch norm has an exact gradient of zero, and rounding noise
/// around zero is no disagreement.
pub fn compare_floored(a: &HostTensor, b: &HostTensor, dtype: DType, model_scale: f64, floor_fraction: f64) -> Result<TensorDiff> {
    compare_floored_with(a, b, dtype, model_scale, floor_fraction, false)
}

/// `compare_floored`; with `patterns`, NaN and infinity matched by pattern
/// (`matching_non_finite`).
pub fn compare_floored_with(a: &HostTensor, b: &HostTensor, dtype: DType, model_scale: f64, floor_fraction: f64, patterns: bool) -> Result<TensorDiff> {
    let (a, b) = match patterns.then(|| matching_non_finite(a, b)).flatten() {
        Some((x, y)) => (std::borrow::Cow::Owned(x), std::borrow::Cow::Owned(y)),
        None => (std::borrow::Cow::Borrowed(a), std::borrow::Cow::Borrowed(b)),
    };
    let (a, b) = (a.as_ref(), b.as_ref());
    let mut d = compare(a, b, dtype, Tolerance::torch_default(dtype))?;
    let floor = floor_fraction * model_scale;
    if !d.non_finite && largest_magnitude([b]) < floor {
        d.scaled = d.max_abs / floor;
    }
    Ok(d)
}
