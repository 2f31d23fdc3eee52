//! How far apart two tensors are, measured several ways.

use serde::Serialize;

use super::Tolerance;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;

/// Entries smaller than this fraction of the reference's largest magnitude are measured
/// relative to that floor instead of themselves, so exact zeros do not explode `max_rel`.
pub const REL_FLOOR: f64 = 1e-6;

/// The distance between a tensor `a` and a reference `b` of the same shape.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TensorDiff {
    /// max |a - b|
    pub max_abs: f64,
    /// max |a - b| / max(|b|, REL_FLOOR · max|b|)
    pub max_rel: f64,
    /// max |a - b| / max|b|: the error relative to the tensor's scale.
    pub scaled: f64,
    /// Largest distance in units in the last place of the run's dtype.
    pub max_ulps: u64,
    /// Cosine similarity of the flattened tensors (1 when both are zero).
    pub cosine: f64,
    /// Flat index of the entry with the largest absolute difference.
    pub worst_index: usize,
    /// NaN or infinity on either side: never a match.
    pub non_finite: bool,
    /// Every entry satisfies the tolerance.
    pub within_tolerance: bool,
}

impl TensorDiff {
    /// The worse of two diffs, metric by metric (for maxima over steps).
    pub fn worst(self, other: &TensorDiff) -> TensorDiff {
        let take_other = other.max_abs > self.max_abs || other.max_abs.is_nan();
        TensorDiff {
            max_abs: nan_max(self.max_abs, other.max_abs),
            max_rel: nan_max(self.max_rel, other.max_rel),
            scaled: nan_max(self.scaled, other.scaled),
            max_ulps: self.max_ulps.max(other.max_ulps),
            cosine: if other.cosine < self.cosine || other.cosine.is_nan() { other.cosine } else { self.cosine },
            worst_index: if take_other { other.worst_index } else { self.worst_index },
            non_finite: self.non_finite || other.non_finite,
            within_tolerance: self.within_tolerance && other.within_tolerance,
        }
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Compares `a` with the reference `b`. Different shapes are an error, not a diff.
pub fn compare(a: &HostTensor, b: &HostTensor, dtype: DType, tol: Tolerance) -> Result<TensorDiff> {
    if a.shape != b.shape {
        return Err(Error::Shape(format!("cannot compare shape {:?} with reference shape {:?}", a.shape, b.shape)));
    }
    let non_finite = !(a.all_finite() && b.all_finite());
    let scale = b.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (REL_FLOOR * scale).max(f64::MIN_POSITIVE);
    let (mut max_abs, mut max_rel, mut max_ulps, mut worst_index) = (0.0f64, 0.0f64, 0u64, 0usize);
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    let mut within = !non_finite;
    for (i, (&x, &y)) in a.data.iter().zip(&b.data).enumerate() {
        let d = (x - y).abs();
        if d > max_abs || d.is_nan() && !max_abs.is_nan() {
            max_abs = d;
            worst_index = i;
        }
        max_rel = nan_max(max_rel, d / y.abs().max(floor));
        max_ulps = max_ulps.max(ulp_distance(x, y, dtype));
        within &= tol.holds(x, y);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let cosine = match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (false, false) => dot / (na.sqrt() * nb.sqrt()),
        _ => 0.0,
    };
    let scaled = if scale > 0.0 { max_abs / scale } else if max_abs == 0.0 { 0.0 } else { f64::INFINITY };
    if non_finite {
        return Ok(TensorDiff {
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            scaled: f64::NAN,
            max_ulps: u64::MAX,
            cosine: f64::NAN,
            worst_index,
            non_finite,
            within_tolerance: false,
        });
    }
    Ok(TensorDiff { max_abs, max_rel, scaled, max_ulps, cosine, worst_index, non_finite, within_tolerance: within })
}

/// Where NaN and infinity are expected (inputs that hold them on purpose), a pair of
/// tensors agrees on them when every entry is of the same class on both sides: NaN, +inf,
/// -inf or finite. Returns the two tensors with those matching non-finite entries set to
/// 0 (so the finite entries are compared as usual), or None when some entry's class
/// differs: a NaN/inf disagreement, which `compare` on the originals reports as
/// `non_finite`. Outside such programs NaN and infinity are never agreement.
pub fn matching_non_finite(a: &HostTensor, b: &HostTensor) -> Option<(HostTensor, HostTensor)> {
    if a.shape != b.shape {
        return None;
    }
    let class = |v: f64| if v.is_nan() { 1u8 } else if v == f64::INFINITY { 2 } else if v == f64::NEG_INFINITY { 3 } else { 0 };
    if a.data.iter().zip(&b.data).any(|(&x, &y)| class(x) != class(y)) {
        return None;
    }
    let finite = |t: &HostTensor| HostTensor { shape: t.shape.clone(), data: t.data.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect() };
    Some((finite(a), finite(b)))
}

/// `compare`, with NaN and infinity matched by pattern (`matching_non_finite`): agreement
/// needs the same class in every entry and the finite entries close; a class that
/// differs is `non_finite`.
pub fn compare_patterns(a: &HostTensor, b: &HostTensor, dtype: DType, tol: Tolerance) -> Result<TensorDiff> {
    match matching_non_finite(a, b) {
        Some((x, y)) => compare(&x, &y, dtype, tol),
        None => compare(a, b, dtype, tol),
    }
}

/// Number of representable values of `dtype` between `a` and `b` (both rounded to it);
/// `u64::MAX` when either is NaN or infinite. +0 and -0 are 0 apart.
pub fn ulp_distance(a: f64, b: f64, dtype: DType) -> u64 {
    if !(a.is_finite() && b.is_finite()) {
        return u64::MAX;
    }
    // Map the bit patterns onto a line where consecutive floats are consecutive integers.
    let (ia, ib) = match dtype {
        DType::F32 => (ordered32(a as f32), ordered32(b as f32)),
        DType::F64 => (ordered64(a), ordered64(b)),
    };
    (ia - ib).unsigned_abs().min(u64::MAX as u128) as u64
}

fn ordered32(x: f32) -> i128 {
    let i = x.to_bits() as i32 as i128;
    if i < 0 {
        i32::MIN as i128 - i
    } else {
        i
    }
}

fn ordered64(x: f64) -> i128 {
    let i = x.to_bits() as i64 as i128;
    if i < 0 {
        i64::MIN as i128 - i
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> HostTensor {
        HostTensor { shape: vec![v.len()], data: v.to_vec() }
    }

    #[test]
    fn ulps_count_representable_steps() {
        assert_eq!(ulp_distance(1.0, 1.0 + f64::EPSILON, DType::F64), 1);
        assert_eq!(ulp_distance(1.0, 1.0 + f32::EPSILON as f64, DType::F32), 1);
        assert_eq!(ulp_distance(0.0, -0.0, DType::F64), 0);
        assert_eq!(ulp_distance(-f64::from_bits(1), f64::from_bits(1), DType::F64), 2);
        assert_eq!(ulp_distance(f64::NAN, 1.0, DType::F64), u64::MAX);
    }

    #[test]
    fn nan_or_infinity_is_never_agreement() {
        let tol = Tolerance { rtol: 1.0, atol: 1.0 };
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let d = compare(&t(&[1.0, bad]), &t(&[1.0, bad]), DType::F64, tol).unwrap();
            assert!(d.non_finite && !d.within_tolerance, "{bad} counted as agreement");
            let d = compare(&t(&[1.0, 2.0]), &t(&[1.0, bad]), DType::F64, tol).unwrap();
            assert!(!d.within_tolerance);
        }
    }

    #[test]
    fn non_finite_patterns_match_class_by_class() {
        let tol = Tolerance::torch_default(DType::F64);
        let d = compare_patterns(&t(&[1.0, f64::NAN, f64::INFINITY]), &t(&[1.0, f64::NAN, f64::INFINITY]), DType::F64, tol).unwrap();
        assert!(!d.non_finite && d.within_tolerance && d.scaled == 0.0);
        for (x, y) in [(f64::NAN, 1.0), (f64::NAN, f64::INFINITY), (f64::INFINITY, f64::NEG_INFINITY), (1.0, f64::NEG_INFINITY)] {
            let d = compare_patterns(&t(&[1.0, x]), &t(&[1.0, y]), DType::F64, tol).unwrap();
            assert!(d.non_finite && !d.within_tolerance, "{x} and {y} counted as agreement");
        }
        // Finite entries are still compared.
        let d = compare_patterns(&t(&[1.0, f64::NAN]), &t(&[2.0, f64::NAN]), DType::F64, tol).unwrap();
        assert!(!d.non_finite && !d.within_tolerance);
    }

    #[test]
    fn zeros_do_not_explode_the_relative_difference() {
        let d = compare(&t(&[1e-20, 1.0]), &t(&[0.0, 1.0]), DType::F64, Tolerance::torch_default(DType::F64)).unwrap();
        assert!(d.max_rel <= 1e-14, "max_rel {}", d.max_rel);
        assert_eq!(d.worst_index, 0);
    }

    #[test]
    fn tolerance_follows_assert_close() {
        let tol = Tolerance::torch_default(DType::F64);
        assert!(tol.holds(1.0 + 1e-8, 1.0));
        assert!(!tol.holds(1.0 + 1e-6, 1.0));
        let d = compare(&t(&[1.0, 2.0 + 1e-6]), &t(&[1.0, 2.0]), DType::F64, tol).unwrap();
        assert!(!d.within_tolerance);
        assert!((d.max_abs - 1e-6).abs() < 1e-12);
        assert!(compare(&t(&[1.0]), &HostTensor::scalar(1.0), DType::F64, tol).is_err());
    }
}
