//! Comparison metrics, tolerances, trace diffs and verdicts. Nothing here knows what a
//! backend is: it compares numbers.

mod gradcheck;
mod metrics;
mod scaled;
pub mod stats;
mod tolerance;
mod trace;
mod verdict;

pub use gradcheck::numeric_gradient;
pub use metrics::{compare, compare_patterns, matching_non_finite, ulp_distance, TensorDiff};
pub use scaled::{compare_floored, compare_floored_with, largest_magnitude, max_nan, worst_scaled_over, worst_scaled_over_with};
pub use tolerance::Tolerance;
pub use trace::{compare_traces, TraceDiff};
pub use verdict::{no_majority, odd_one_out};
