//! Statistics over seeds: mean, sample standard deviation, and the paired comparison
//! behind every claim verdict (Student's t interval of the mean per-seed difference).

use serde::Serialize;

/// Mean and sample standard deviation (n-1); `sd` is None below two values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    pub sd: Option<f64>,
}

pub fn spread(values: &[f64]) -> Spread {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = (n >= 2).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    Spread { n, mean, sd }
}

/// A paired comparison of two conditions over the same seeds: `b - a` per seed.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Paired {
    /// Seeds compared (pairs where both conditions finished and are finite).
    pub n: usize,
    pub mean_difference: f64,
    /// The two-sided 95% confidence interval of the mean difference (Student's t with
    /// n-1 degrees of freedom); None below two seeds.
    pub ci95: Option<(f64, f64)>,
    /// `b > a`, `b < a`, or `not resolved` (the interval holds 0, or too few seeds).
    pub outcome: &'static str,
}

pub const HIGHER: &str = "higher";
pub const LOWER: &str = "lower";
pub const UNRESOLVED: &str = "not resolved";

/// `b - a` seed by seed; non-finite pairs are left out (NaN never counts as evidence).
pub fn paired(a: &[f64], b: &[f64]) -> Paired {
    let d: Vec<f64> = a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| y - x).collect();
    let n = d.len();
    if n == 0 {
        return Paired { n, mean_difference: f64::NAN, ci95: None, outcome: UNRESOLVED };
    }
    let s = spread(&d);
    let ci95 = s.sd.map(|sd| {
        let half = t95(n - 1) * sd / (n as f64).sqrt();
        (s.mean - half, s.mean + half)
    });
    let outcome = match ci95 {
        Some((lo, _)) if lo > 0.0 => HIGHER,
        Some((_, hi)) if hi < 0.0 => LOWER,
        _ => UNRESOLVED,
    };
    Paired { n, mean_difference: s.mean, ci95, outcome }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95%).
pub fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110,
        2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + 2.4 / df as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_standard_deviation() {
        let s = spread(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert!((s.sd.unwrap() - 1.2909944487358056).abs() < 1e-15);
        assert_eq!(spread(&[5.0]).sd, None);
    }

    #[test]
    fn a_paired_interval_that_holds_zero_is_not_resolved() {
        // Differences 1, 2, 3: mean 2, sd 1, half-width 4.303/sqrt(3) = 2.484.
        let p = paired(&[0.0, 0.0, 0.0], &[1.0, 2.0, 3.0]);
        assert_eq!(p.outcome, UNRESOLVED);
        let (lo, hi) = p.ci95.unwrap();
        assert!((lo - (2.0 - 2.4843)).abs() < 1e-3 && (hi - (2.0 + 2.4843)).abs() < 1e-3);
        let p = paired(&[0.0, 0.0, 0.0], &[2.0, 2.1, 1.9]);
        assert_eq!(p.outcome, HIGHER);
        let p = paired(&[2.0, 2.1, 1.9], &[0.0, 0.0, 0.0]);
        assert_eq!(p.outcome, LOWER);
        assert_eq!(paired(&[1.0], &[2.0]).outcome, UNRESOLVED);
        assert_eq!(paired(&[f64::NAN, 1.0], &[1.0, 2.0]).n, 1);
    }
}
