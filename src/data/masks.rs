//! Dropout masks. Each framework's own dropout draws from its own RNG, so the harness
//! draws the masks once and hands the same ones to every backend; only then can their
//! results agree.

use super::seed::{stream, DOMAIN_DROPOUT};

/// A keep-mask of `len` entries for dropout probability `p`: each entry is 1.0 with
/// probability `1 - p`, else 0.0. Entry `k` is kept iff the `k`-th uniform `u ∈ [0, 1)`
/// of the stream for `(DOMAIN_DROPOUT, seed, step, site)` satisfies `u >= p` (mixing rule
/// in [`super::seed`]); `site` tells apart the dropout layers within one step.
///
/// The mask is not scaled: backends compute `x * mask / (1 - p)` as PyTorch's dropout
/// does. `p == 0` gives all ones (and `p == 1` all zeros).
///
/// # Panics
/// If `p` is not in `[0, 1]` (configuration, to be validated where it is parsed).
pub fn dropout_mask(len: usize, p: f64, seed: u64, step: usize, site: usize) -> Vec<f64> {
    assert!((0.0..=1.0).contains(&p), "dropout probability must be in [0, 1], got {p}");
    if p == 0.0 {
        return vec![1.0; len];
    }
    let mut rng = stream(&[DOMAIN_DROPOUT, seed, step as u64, site as u64]);
    (0..len).map(|_| if rng.next_f64() >= p { 1.0 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_one_drops_everything() {
        assert!(dropout_mask(100, 1.0, 3, 0, 0).iter().all(|&m| m == 0.0));
    }

    #[test]
    fn sites_and_steps_get_different_masks() {
        let a = dropout_mask(256, 0.5, 7, 0, 0);
        assert_ne!(a, dropout_mask(256, 0.5, 7, 0, 1));
        assert_ne!(a, dropout_mask(256, 0.5, 7, 1, 0));
        assert_eq!(a, dropout_mask(256, 0.5, 7, 0, 0));
    }
}
