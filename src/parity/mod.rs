//! Comparison metrics, tolerances, trace diffs and verdicts. Nothing here knows what a
//! backend is: it compares numbers.

mod gradcheck;
mod metrics;
mod tolerance;
mod trace;

pub use gradcheck::numeric_gradient;
pub use metrics::{compare, ulp_distance, TensorDiff};
pub use tolerance::Tolerance;
pub use trace::{compare_traces, TraceDiff};
