//! The element types the engine is generic over: `f32` and `f64`.

use std::fmt::{Debug, Display};
use std::ops::{AddAssign, MulAssign, SubAssign};

use crate::dtype::DType;

/// What an op needs from its element type. Implemented for `f32` and `f64` only.
pub trait Float:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + 'static
{
    const DTYPE: DType;
    fn of(v: f64) -> Self;
    fn as_f64(self) -> f64;
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    fn of(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
}
