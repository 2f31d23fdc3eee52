//! Softmax, log-softmax and cross-entropy over axis 1 of `[N,C]`.
//!
//! The order of operations is ATen's CPU one: softmax multiplies by the reciprocal of
//! the sum (`_vec_softmax_lastdim`), log-softmax subtracts the maximum and then the log
//! of the sum (`_vec_log_softmax_lastdim`), and cross-entropy is `nll_loss` applied to
//! log-softmax, exactly as `torch.nn.functional.cross_entropy` composes them. Sums run
//! sequentially; ATen's SIMD reductions and its vectorised `exp` round differently.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use ndarray::{ArrayView1, Axis, Ix2};

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        let value = rows("softmax", self.value(x), |row, out| {
            let max = row_max(row);
            let mut sum = F::zero();
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v - max).exp();
                sum += *o;
            }
            let r = F::one() / sum;
            out.iter_mut().for_each(|o| *o = *o * r);
        })?;
        Ok(self.push(value, Op::Softmax(x)))
    }

    pub fn log_softmax(&mut self, x: Var) -> Result<Var> {
        let value = log_softmax_forward(self.value(x))?;
        Ok(self.push(value, Op::LogSoftmax(x)))
    }

    /// Mean over rows of `-input[n, targets[n]]`, for log-probabilities `input` `[N,C]`.
    pub fn nll_loss(&mut self, input: Var, targets: &[usize]) -> Result<Var> {
        let value = nll_forward(self.value(input), targets)?;
        Ok(self.push(value, Op::NllLoss { input, targets: targets.into() }))
    }

    /// `nll_loss(log_softmax(logits), targets)`: a 0-d mean loss.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[usize]) -> Result<Var> {
        check_targets(self.value(logits).shape(), targets)?;
        let lp = self.log_softmax(logits)?;
        self.nll_loss(lp, targets)
    }
}

fn as2<'a, F: Float>(op: &str, x: &'a Tensor<F>) -> Result<ndarray::ArrayView2<'a, F>> {
    x.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::Shape(format!("{op}: input {:?} must be [N,C]", x.shape())))
}

/// Applies `f(input row, output row)` to every row of a `[N,C]` tensor.
fn rows<F: Float>(op: &str, x: &Tensor<F>, f: impl Fn(ArrayView1<F>, &mut [F])) -> Result<Tensor<F>> {
    let x2 = as2(op, x)?;
    let c = x2.ncols();
    let mut out = vec![F::zero(); x2.len()];
    if c > 0 {
        for (row, chunk) in x2.axis_iter(Axis(0)).zip(out.chunks_mut(c)) {
            f(row, chunk);
        }
    }
    Ok(Tensor::from_shape_vec(x.raw_dim(), out).expect("sizes match"))
}

/// Max that lets NaN through, as ATen's `vec::maximum` propagates NaN.
fn row_max<F: Float>(row: ArrayView1<F>) -> F {
    // Once the running maximum is NaN, `v > m` is false for every v, so NaN stays.
    row.iter().fold(F::neg_infinity(), |m, &v| if v > m || v.is_nan() { v } else { m })
}

pub fn log_softmax_forward<F: Float>(x: &Tensor<F>) -> Result<Tensor<F>> {
    rows("log_softmax", x, |row, out| {
        let max = row_max(row);
        let mut sum = F::zero();
        for &v in row {
            sum += (v - max).exp();
        }
        let log_sum = sum.ln();
        // ATen keeps this order on purpose: (x - max) - log_sum, never x - (max + log_sum).
        for (o, &v) in out.iter_mut().zip(row) {
            *o = v - max - log_sum;
        }
    })
}

/// `dx = y · (g - Σ g·y)`, written `(g - s)·y` as ATen's `_vec_softmax_backward`.
pub fn softmax_backward<F: Float>(y: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    let (y2, g2) = (as2("softmax", y).expect("forward checked"), as2("softmax", g).expect("forward checked"));
    let mut out = Tensor::zeros(y.raw_dim());
    for (n, (yr, gr)) in y2.axis_iter(Axis(0)).zip(g2.axis_iter(Axis(0))).enumerate() {
        let mut s = F::zero();
        for (&gv, &yv) in gr.iter().zip(yr) {
            s += gv * yv;
        }
        for (c, (&gv, &yv)) in gr.iter().zip(yr).enumerate() {
            out[[n, c]] = (gv - s) * yv;
        }
    }
    out
}

/// `dx = g - exp(y)·Σg`, as ATen's `_vec_log_softmax_backward`.
pub fn log_softmax_backward<F: Float>(y: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    let (y2, g2) = (as2("log_softmax", y).expect("forward checked"), as2("log_softmax", g).expect("forward checked"));
    let mut out = Tensor::zeros(y.raw_dim());
    for (n, (yr, gr)) in y2.axis_iter(Axis(0)).zip(g2.axis_iter(Axis(0))).enumerate() {
        let mut s = F::zero();
        for &gv in gr {
            s += gv;
        }
        for (c, (&gv, &yv)) in gr.iter().zip(yr).enumerate() {
            out[[n, c]] = gv - yv.exp() * s;
        }
    }
    out
}

fn check_targets(shape: &[usize], targets: &[usize]) -> Result<()> {
    if shape.len() != 2 || shape[0] != targets.len() || shape[0] == 0 {
        return Err(Error::Shape(format!(
            "cross_entropy/nll_loss: input {shape:?} with {} targets: need [N,C] with N = number of targets >= 1",
            targets.len()
        )));
    }
    if let Some((n, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= shape[1]) {
        let msg = format!("cross_entropy/nll_loss: target {t} of row {n} is out of range for {} classes", shape[1]);
        return Err(Error::Invalid(msg));
    }
    Ok(())
}

/// ATen's `nll_loss_out_frame` sums the picked entries with a cascade of partial sums
/// (blocks of 16, eight levels) and divides the total by N; this replays that cascade.
pub fn nll_forward<F: Float>(input: &Tensor<F>, targets: &[usize]) -> Result<Tensor<F>> {
    check_targets(input.shape(), targets)?;
    const LEVELS: usize = 8;
    let batch = targets.len();
    let ceil_log2 = if batch <= 1 { 0 } else { usize::BITS - (batch - 1).leading_zeros() } as usize;
    let level_power = 4.max(ceil_log2 / LEVELS);
    let level_mask = (1usize << level_power) - 1;
    let mut partial = [F::zero(); LEVELS];
    for (b, &t) in targets.iter().enumerate() {
        partial[0] -= input[[b, t]];
        for j in 0..LEVELS - 1 {
            if b & (level_mask << (j * level_power)) != 0 {
                break;
            }
            let carried = partial[j];
            partial[j + 1] += carried;
            partial[j] = F::zero();
        }
    }
    let total = partial.iter().fold(F::zero(), |acc, &p| acc + p);
    Ok(ndarray::arr0(total / F::of(batch as f64)).into_dyn())
}

/// `-(g / N)` at each row's target, zero elsewhere (ATen's `nll_loss_backward_out_frame`).
pub fn nll_backward<F: Float>(input: &Tensor<F>, targets: &Arc<[usize]>, g: &Tensor<F>) -> Tensor<F> {
    let g = g.iter().next().copied().unwrap_or_else(F::zero);
    let grad = if faults::on(Fault::CrossEntropyGradUnscaled) { -g } else { -(g / F::of(targets.len() as f64)) };
    let mut out = Tensor::zeros(input.raw_dim());
    for (n, &t) in targets.iter().enumerate() {
        out[[n, t]] = grad;
    }
    out
}
