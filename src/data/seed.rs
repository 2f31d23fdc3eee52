//! Deriving one independent SplitMix64 stream per (purpose, seed, …) tuple.
//!
//! Mixing rule, simple enough to redo in a few lines of Python:
//!
//! ```text
//! h = 0
//! for part in [domain, seed, a, b, ...]:
//!     h = first_output(SplitMix64(h ^ part))
//! stream = SplitMix64(h)
//! ```
//!
//! Each step passes the running value through SplitMix64's finaliser, so neighbouring
//! tuples such as (seed, epoch) and (seed, epoch + 1) give unrelated streams, and a
//! `domain` tag keeps shuffles and dropout masks from ever sharing a stream.

use crate::models::rng::SplitMix64;

/// Domain tag of the epoch shuffles ([`super::batches::epoch_order`]).
pub const DOMAIN_SHUFFLE: u64 = 1;
/// Domain tag of the dropout masks ([`super::masks::dropout_mask`]).
pub const DOMAIN_DROPOUT: u64 = 2;

/// The stream for `parts` (the first part is the domain tag), per the rule above.
pub fn stream(parts: &[u64]) -> SplitMix64 {
    let h = parts.iter().fold(0u64, |h, &p| SplitMix64::new(h ^ p).next_u64());
    SplitMix64::new(h)
}
