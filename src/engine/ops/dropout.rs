//! Dropout with a mask supplied by the caller, so every backend can be fed the same one.
//!
//! On the CPU ATen's `dropout` builds `noise = bernoulli(1-p)`, divides it in place by
//! `1-p` (a true division in the tensor's type) and returns `input * noise`. The same two
//! roundings happen here: `noise = mask / (1-p)`, then `x * noise`.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    /// `p == 0` returns `x` itself, as ATen does; `p == 1` zeroes everything, as ATen
    /// does by multiplying with a zero scalar regardless of the mask.
    pub fn dropout(&mut self, x: Var, mask: &Tensor<F>, p: f64) -> Result<Var> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout: probability {p} is outside [0, 1]")));
        }
        let xv = self.value(x);
        if mask.shape() != xv.shape() {
            return Err(Error::Shape(format!("dropout: mask {:?} differs from input {:?}", mask.shape(), xv.shape())));
        }
        if p == 0.0 {
            return Ok(x);
        }
        let noise: Vec<f64> = if p == 1.0 {
            vec![0.0; mask.len()]
        } else {
            let keep = F::of(1.0 - p);
            match mask.as_slice() {
                Some(m) => m.iter().map(|&m| (m / keep).as_f64()).collect(),
                None => mask.iter().map(|&m| (m / keep).as_f64()).collect(),
            }
        };
        let value = forward(xv, &noise);
        Ok(self.push(value, Op::Dropout { x, noise: noise.into() }))
    }
}

fn forward<F: Float>(x: &Tensor<F>, noise: &[f64]) -> Tensor<F> {
    let mut y = x.as_standard_layout().into_owned();
    scale(y.as_slice_mut().expect("standard layout"), noise);
    y
}

/// `v · noise` element by element, over plain slices (a dynamic-rank `iter_mut` walks
/// an index per element).
fn scale<F: Float>(values: &mut [F], noise: &[f64]) {
    for (v, &n) in values.iter_mut().zip(noise) {
        *v = *v * F::of(n);
    }
}

/// The product rule with a constant factor: `dx = g · noise`.
pub fn backward<F: Float>(noise: &Arc<[f64]>, g: &Tensor<F>) -> Tensor<F> {
    let mut gx = g.as_standard_layout().into_owned();
    if faults::on(Fault::DropoutMaskIgnoredInBackward) {
        let scale = noise.iter().fold(0.0f64, |m, &n| m.max(n));
        return gx.mapv(|v| v * F::of(scale));
    }
    scale(gx.as_slice_mut().expect("standard layout"), noise);
    gx
}
