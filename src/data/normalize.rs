//! Pixel normalisation exactly as the seed study's PyTorch pipeline computes it:
//! `ToTensor` (`x as f32 / 255`) then `Normalize((MEAN,), (STD,))` (`(v - MEAN) / STD`),
//! every step in f32.
//!
//! The f64 runs get these f32 values widened to f64 (widening is exact), so both dtypes,
//! and every backend, see bit-for-bit the inputs PyTorch would see; the f64 runs do not
//! get a "more precise" normalisation that would make them differ from the start.

/// MNIST training-set pixel mean after scaling to [0, 1] (the usual torchvision value).
/// Fashion-MNIST uses the same constants: that is the seed study's normalisation, kept
/// so both datasets go through one pipeline (Fashion-MNIST's own statistics differ).
pub const MEAN: f32 = 0.1307;
/// MNIST training-set pixel standard deviation after scaling to [0, 1]; see [`MEAN`].
pub const STD: f32 = 0.3081;

/// One pixel, normalised in f32 arithmetic.
pub fn normalize_pixel(p: u8) -> f32 {
    (p as f32 / 255.0 - MEAN) / STD
}

/// All 256 normalised values, widened to f64: batches are then a table lookup.
pub fn table() -> [f64; 256] {
    std::array::from_fn(|p| normalize_pixel(p as u8) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes() {
        assert_eq!(normalize_pixel(0), -0.1307f32 / 0.3081f32);
        assert_eq!(normalize_pixel(255), (1.0f32 - 0.1307) / 0.3081);
    }
}
