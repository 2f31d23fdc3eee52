//! 2-D max pooling with window = stride = `kernel`, no padding, floor mode.
//!
//! Forward records, per output, the flat input index it took. Ties go to the first
//! maximum in row-major scan order and NaN wins, because ATen's kernel replaces the
//! running maximum only on `val > maxval || isnan(val)`; backward sends the whole
//! gradient to that one recorded position, as ATen's `max_pool2d_with_indices_backward`.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn max_pool2d(&mut self, x: Var, kernel: usize) -> Result<Var> {
        let (value, argmax) = forward(self.value(x), kernel)?;
        Ok(self.push(value, Op::MaxPool2d { x, argmax: argmax.into() }))
    }
}

/// The pooled tensor and, per output element, the flat index of the input it came from.
pub fn forward<F: Float>(x: &Tensor<F>, kernel: usize) -> Result<(Tensor<F>, Vec<usize>)> {
    let s = x.shape();
    if s.len() != 4 || kernel == 0 || s[2] < kernel || s[3] < kernel {
        return Err(Error::Shape(format!(
            "max_pool2d: input {s:?} with kernel {kernel}: need [N,C,H,W] with H, W >= kernel >= 1"
        )));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (oh, ow) = (h / kernel, w / kernel);
    let data = x.as_standard_layout();
    let data = data.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(n * c * oh * ow);
    let mut argmax = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let base = plane * h * w;
        for oy in 0..oh {
            for ox in 0..ow {
                let first = base + oy * kernel * w + ox * kernel;
                let (mut best, mut at) = (F::neg_infinity(), first);
                for i in 0..kernel {
                    for j in 0..kernel {
                        let idx = first + i * w + j;
                        let v = data[idx];
                        // Branch-free select (the comparison is unpredictable on data);
                        // same rule and scan order as before.
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        at = if take { idx } else { at };
                    }
                }
                out.push(best);
                argmax.push(at);
            }
        }
    }
    let value = Tensor::from_shape_vec(vec![n, c, oh, ow], out).expect("sizes match");
    Ok((value, argmax))
}

pub fn backward<F: Float>(x: &Tensor<F>, argmax: &Arc<[usize]>, g: &Tensor<F>) -> Tensor<F> {
    if faults::on(Fault::MaxPoolGradToAllTies) {
        return backward_to_all_ties(x, argmax, g);
    }
    let mut gx = vec![F::zero(); x.len()];
    for (&at, &gv) in argmax.iter().zip(g.iter()) {
        gx[at] += gv;
    }
    Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
}

/// The `MaxPoolGradToAllTies` fault: every position equal to its window's maximum gets
/// the whole gradient.
fn backward_to_all_ties<F: Float>(x: &Tensor<F>, argmax: &Arc<[usize]>, g: &Tensor<F>) -> Tensor<F> {
    let s = x.shape();
    let (h, w) = (s[2], s[3]);
    let (oh, ow) = (g.shape()[2], g.shape()[3]);
    let k = h / oh;
    let data = x.as_standard_layout();
    let data = data.as_slice().expect("standard layout");
    let mut gx = vec![F::zero(); x.len()];
    for (o, (&at, &gv)) in argmax.iter().zip(g.iter()).enumerate() {
        let plane = o / (oh * ow);
        let (oy, ox) = ((o % (oh * ow)) / ow, o % ow);
        let first = plane * h * w + oy * k * w + ox * k;
        for i in 0..k {
            for j in 0..k {
                let idx = first + i * w + j;
                if data[idx] == data[at] {
                    gx[idx] += gv;
                }
            }
        }
    }
    Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
}
