//! The studies `parity-report` runs: each takes settings, runs the backends, measures
//! parity, and returns one serialisable result that the report module formats.

pub mod abc;
pub mod bench;
pub mod campaign;
pub mod claims;
pub mod fuzz;
pub mod gate;
pub mod grads;
pub mod lockstep;
pub mod memory;
pub mod mnist;
pub mod ops;
pub mod own;
pub mod mutants;
pub mod peak;
pub mod probe;
pub mod run;
pub mod suite;

use crate::backends::BackendKind;

/// Version of this tool, stamped into every JSON result.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every pair of distinct backends, the second of each pair being the more trusted one
/// (torch over candle over engine): `engine-candle`, `engine-torch`, `candle-torch`.
pub fn backend_pairs(kinds: &[BackendKind]) -> Vec<(BackendKind, BackendKind)> {
    let mut sorted = kinds.to_vec();
    sorted.sort();
    let mut pairs = Vec::new();
    for (i, &a) in sorted.iter().enumerate() {
        for &b in &sorted[i + 1..] {
            pairs.push((a, b));
        }
    }
    pairs
}

pub fn pair_name(a: BackendKind, b: BackendKind) -> String {
    format!("{a}-{b}")
}
