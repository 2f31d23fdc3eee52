//! Seeded batch order. The harness fixes the order and hands the same batches to every
//! backend, so the comparison never depends on a framework's own sampler or RNG.

use super::seed::{stream, DOMAIN_SHUFFLE};

/// A permutation of `0..n` for one training epoch: a Fisher–Yates (Durstenfeld) shuffle
/// driven by the SplitMix64 stream for `(DOMAIN_SHUFFLE, seed, epoch)` (mixing rule in
/// [`super::seed`]).
///
/// For `i` from `n-1` down to `1`, `j = (r * (i+1)) >> 64` with `r` the next u64 (a
/// 128-bit multiply-shift: no rejection loop, bias below `n / 2^64`), then swap `i`, `j`.
/// This is not PyTorch's `RandomSampler` order; it does not need to be, since every
/// backend receives this order.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = stream(&[DOMAIN_SHUFFLE, seed, epoch as u64]);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// Test (and evaluation) order: the file's order, no shuffle.
pub fn file_order(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Consecutive batches of `batch` indices; the last, shorter batch is kept, as with
/// PyTorch's `DataLoader` default `drop_last=False`.
///
/// # Panics
/// If `batch == 0`: a batch size is configuration, to be validated where it is parsed.
pub fn batches(order: &[usize], batch: usize) -> impl Iterator<Item = &[usize]> {
    assert!(batch > 0, "batch size must be at least 1");
    order.chunks(batch)
}

/// How many batches [`batches`] yields for `n` examples.
pub fn batch_count(n: usize, batch: usize) -> usize {
    n.div_ceil(batch.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_of_small_inputs_is_trivial() {
        assert!(epoch_order(0, 1, 0).is_empty());
        assert_eq!(epoch_order(1, 1, 0), vec![0]);
    }

    #[test]
    fn last_partial_batch_is_kept() {
        let order = file_order(10);
        let sizes: Vec<usize> = batches(&order, 4).map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(batch_count(10, 4), 3);
    }
}
