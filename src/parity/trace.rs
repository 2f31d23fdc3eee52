//! How two loss traces part ways: per-step relative difference, the first step beyond
//! tolerance, and how fast the difference grows.

use serde::Serialize;

use super::Tolerance;

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TraceDiff {
    /// |a - b| / |b| per step (b is the reference); NaN where either side is not finite.
    pub rel: Vec<f64>,
    pub max_rel: f64,
    /// The first step (0-based) where the tolerance fails, if any.
    pub first_divergence: Option<usize>,
    /// Least-squares slope of log10(rel) over the steps where rel > 0: decades gained
    /// per step (positive means the traces drift apart).
    pub decades_per_step: Option<f64>,
    pub within_tolerance: bool,
}

pub fn compare_traces(a: &[f64], b: &[f64], tol: Tolerance) -> TraceDiff {
    let n = a.len().min(b.len());
    let rel: Vec<f64> = (0..n)
        .map(|i| {
            let (x, y) = (a[i], b[i]);
            if x.is_finite() && y.is_finite() {
                (x - y).abs() / y.abs().max(f64::MIN_POSITIVE)
            } else {
                f64::NAN
            }
        })
        .collect();
    let mut first_divergence = (0..n).find(|&i| !tol.holds(a[i], b[i]));
    if first_divergence.is_none() && a.len() != b.len() {
        first_divergence = Some(n);
    }
    let max_rel = rel.iter().fold(0.0f64, |m, &r| if r.is_nan() || m.is_nan() { f64::NAN } else { m.max(r) });
    TraceDiff {
        decades_per_step: log_slope(&rel),
        max_rel,
        first_divergence,
        within_tolerance: first_divergence.is_none(),
        rel,
    }
}

fn log_slope(rel: &[f64]) -> Option<f64> {
    let pts: Vec<(f64, f64)> =
        rel.iter().enumerate().filter(|(_, r)| r.is_finite() && **r > 0.0).map(|(i, r)| (i as f64, r.log10())).collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_step_beyond_tolerance_and_the_growth() {
        let b = [1.0, 1.0, 1.0, 1.0];
        let a = [1.0 + 1e-12, 1.0 + 1e-10, 1.0 + 1e-8, 1.0 + 1e-6];
        let d = compare_traces(&a, &b, Tolerance { rtol: 1e-9, atol: 0.0 });
        assert_eq!(d.first_divergence, Some(2));
        assert!((d.decades_per_step.unwrap() - 2.0).abs() < 1e-3);
        assert!(!d.within_tolerance);
    }

    #[test]
    fn nan_in_a_trace_is_a_divergence() {
        let d = compare_traces(&[1.0, f64::NAN], &[1.0, 1.0], Tolerance { rtol: 1.0, atol: 1.0 });
        assert_eq!(d.first_divergence, Some(1));
        assert!(d.max_rel.is_nan());
    }
}
