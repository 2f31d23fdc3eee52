//! Softmax, log-softmax and cross-entropy over axis 1 of `[N,C]`.
//!
//! The order of operations is ATen's CPU one: softmax multiplies by the reciprocal of
//! the sum (`_vec_softmax_lastdim`), log-softmax subtracts the maximum and then the log
//! of the sum (`_vec_log_softmax_lastdim`), and cross-entropy is `nll_loss` applied to
//! log-softmax, exactly as `torch.nn.functional.cross_entropy` composes them. Sums run
//! sequentially; ATen's SIMD reductions and its vectorised `exp` round differently.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use ndarray::Ix2;

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    /// Softmax over axis 1 of a `[N,C]` tensor.
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        as2("softmax", self.value(x))?;
        self.softmax_dim(x, 1)
    }

    /// Softmax over `axis` of a tensor of any rank >= 1.
    pub fn softmax_dim(&mut self, x: Var, axis: usize) -> Result<Var> {
        let value = softmax_forward(self.value(x), axis)?;
        Ok(self.push(value, Op::Softmax(x, axis)))
    }

    /// Log-softmax over axis 1 of a `[N,C]` tensor.
    pub fn log_softmax(&mut self, x: Var) -> Result<Var> {
        as2("log_softmax", self.value(x))?;
        self.log_softmax_dim(x, 1)
    }

    pub fn log_softmax_dim(&mut self, x: Var, axis: usize) -> Result<Var> {
        let value = log_softmax_forward(self.value(x), axis)?;
        Ok(self.push(value, Op::LogSoftmax(x, axis)))
    }

    /// Mean over rows of `-input[n, targets[n]]`, for log-probabilities `input` `[N,C]`.
    pub fn nll_loss(&mut self, input: Var, targets: &[usize]) -> Result<Var> {
        self.nll_loss_with(input, targets, Reduction::Mean)
    }

    /// `nll_loss` with PyTorch's `reduction`: `None` gives the `[N]` per-row losses.
    pub fn nll_loss_with(&mut self, input: Var, targets: &[usize], reduction: Reduction) -> Result<Var> {
        let value = nll_forward_with(self.value(input), targets, reduction)?;
        Ok(self.push(value, Op::NllLoss { input, targets: targets.into(), reduction }))
    }

    /// `nll_loss(log_softmax(logits), targets)`: a 0-d mean loss.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[usize]) -> Result<Var> {
        check_targets(self.value(logits).shape(), targets)?;
        let lp = self.log_softmax(logits)?;
        self.nll_loss(lp, targets)
    }

    /// `F.cross_entropy(logits, targets, reduction=, label_smoothing=)` composed as ATen's
    /// `cross_entropy_loss_label_smoothing`: `(1 - ls)·nll + (ls / C)·reduce(-Σ_c lp)`
    /// with `lp = log_softmax(logits, 1)`; without smoothing it is `nll_loss(lp)`.
    pub fn cross_entropy_with(
        &mut self,
        logits: Var,
        targets: &[usize],
        reduction: Reduction,
        label_smoothing: f64,
    ) -> Result<Var> {
        check_targets(self.value(logits).shape(), targets)?;
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::Invalid(format!(
                "cross_entropy: label_smoothing {label_smoothing} must be within [0, 1]"
            )));
        }
        let classes = self.value(logits).shape()[1];
        let lp = self.log_softmax_dim(logits, 1)?;
        let nll = self.nll_loss_with(lp, targets, reduction)?;
        if label_smoothing <= 0.0 {
            return Ok(nll);
        }
        let per_row = self.sum_dim(lp, &[1], false)?;
        let smooth = self.neg(per_row);
        let smooth = match reduction {
            Reduction::Mean => self.mean(smooth),
            Reduction::Sum => self.sum(smooth),
            Reduction::None => smooth,
        };
        let keep = self.constant(ndarray::arr0(F::of(1.0 - label_smoothing)).into_dyn());
        let share = self.constant(ndarray::arr0(F::of(label_smoothing / classes as f64)).into_dyn());
        let a = self.mul(nll, keep)?;
        let b = self.mul(smooth, share)?;
        self.add(a, b)
    }

    /// `F.mse_loss(input, target, reduction=)`: `(input - target)²`, reduced.
    pub fn mse_loss(&mut self, input: Var, target: Var, reduction: Reduction) -> Result<Var> {
        let (x, t) = (self.value(input), self.value(target));
        if x.shape() != t.shape() {
            return Err(Error::Shape(format!(
                "mse_loss: input {:?} and target {:?} must have one shape",
                x.shape(),
                t.shape()
            )));
        }
        let mut sq = x - t;
        sq.mapv_inplace(|d| d * d);
        let value = match reduction {
            Reduction::None => sq,
            Reduction::Sum => ndarray::arr0(sq.sum()).into_dyn(),
            Reduction::Mean => ndarray::arr0(sq.sum() / F::of(sq.len() as f64)).into_dyn(),
        };
        Ok(self.push(value, Op::MseLoss { input, target, reduction }))
    }
}

/// How a loss reduces over its samples (PyTorch's `reduction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Mean,
    Sum,
    None,
}

fn as2<'a, F: Float>(op: &str, x: &'a Tensor<F>) -> Result<ndarray::ArrayView2<'a, F>> {
    x.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::Shape(format!("{op}: input {:?} must be [N,C]", x.shape())))
}

/// `(outer, n, inner)`: the sizes before, at and after `axis`.
fn split<F>(x: &Tensor<F>, axis: usize) -> (usize, usize, usize) {
    let s = x.shape();
    (s[..axis].iter().product(), s[axis], s[axis + 1..].iter().product())
}

/// Applies `f(input lanes, output lane)` to every lane along `axis` (the values whose
/// indices differ only at `axis`) of tensors of one shape: a row of a `[N,C]` tensor
/// over axis 1.
fn lanes<F: Float, const K: usize>(
    op: &str,
    xs: [&Tensor<F>; K],
    axis: usize,
    mut f: impl FnMut([&[F]; K], &mut [F]),
) -> Result<Tensor<F>> {
    let x = xs[0];
    if axis >= x.ndim() {
        return Err(Error::Shape(format!("{op}: dimension {axis} is out of range for shape {:?}", x.shape())));
    }
    let (outer, n, inner) = split(x, axis);
    let std: Vec<_> = xs.iter().map(|t| t.as_standard_layout()).collect();
    let slices: Vec<&[F]> = std.iter().map(|t| t.as_slice().expect("standard layout")).collect();
    let mut out = vec![F::zero(); x.len()];
    if n > 0 {
        if inner == 1 {
            for (r, chunk) in out.chunks_mut(n).enumerate() {
                f(std::array::from_fn(|k| &slices[k][r * n..(r + 1) * n]), chunk);
            }
        } else {
            let mut bufs: Vec<Vec<F>> = vec![vec![F::zero(); n]; K];
            let mut lane_out = vec![F::zero(); n];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |c: usize| o * n * inner + c * inner + i;
                    for (buf, src) in bufs.iter_mut().zip(&slices) {
                        for (c, b) in buf.iter_mut().enumerate() {
                            *b = src[at(c)];
                        }
                    }
                    f(std::array::from_fn(|k| &bufs[k][..]), &mut lane_out);
                    for (c, &v) in lane_out.iter().enumerate() {
                        out[at(c)] = v;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_shape_vec(x.raw_dim(), out).expect("sizes match"))
}

/// Max that lets NaN through, as ATen's `vec::maximum` propagates NaN.
fn row_max<F: Float>(row: &[F]) -> F {
    // Once the running maximum is NaN, `v > m` is false for every v, so NaN stays.
    row.iter().fold(F::neg_infinity(), |m, &v| if v > m || v.is_nan() { v } else { m })
}

pub fn softmax_forward<F: Float>(x: &Tensor<F>, axis: usize) -> Result<Tensor<F>> {
    lanes("softmax", [x], axis, |[row], out| {
        let max = row_max(row);
        let mut sum = F::zero();
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - max).exp();
            sum += *o;
        }
        let r = F::one() / sum;
        out.iter_mut().for_each(|o| *o = *o * r);
    })
}

pub fn log_softmax_forward<F: Float>(x: &Tensor<F>, axis: usize) -> Result<Tensor<F>> {
    lanes("log_softmax", [x], axis, |[row], out| {
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
pub fn softmax_backward<F: Float>(y: &Tensor<F>, g: &Tensor<F>, axis: usize) -> Tensor<F> {
    lanes("softmax", [y, g], axis, |[yr, gr], out| {
        let mut s = F::zero();
        for (&gv, &yv) in gr.iter().zip(yr) {
            s += gv * yv;
        }
        for ((o, &gv), &yv) in out.iter_mut().zip(gr).zip(yr) {
            *o = (gv - s) * yv;
        }
    })
    .expect("forward checked")
}

/// `dx = g - exp(y)·Σg`, as ATen's `_vec_log_softmax_backward`.
pub fn log_softmax_backward<F: Float>(y: &Tensor<F>, g: &Tensor<F>, axis: usize) -> Tensor<F> {
    lanes("log_softmax", [y, g], axis, |[yr, gr], out| {
        let mut s = F::zero();
        for &gv in gr {
            s += gv;
        }
        for ((o, &gv), &yv) in out.iter_mut().zip(gr).zip(yr) {
            *o = gv - yv.exp() * s;
        }
    })
    .expect("forward checked")
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
    nll_forward_with(input, targets, Reduction::Mean)
}

/// `nll_forward` with a reduction: `Sum` is the cascade's total, `None` the per-row
/// `-input[n, targets[n]]`.
pub fn nll_forward_with<F: Float>(input: &Tensor<F>, targets: &[usize], reduction: Reduction) -> Result<Tensor<F>> {
    check_targets(input.shape(), targets)?;
    if reduction == Reduction::None {
        let v: Vec<F> = targets.iter().enumerate().map(|(b, &t)| -input[[b, t]]).collect();
        return Ok(Tensor::from_shape_vec(vec![targets.len()], v).expect("one per row"));
    }
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
    Ok(ndarray::arr0(if reduction == Reduction::Sum { total } else { total / F::of(batch as f64) }).into_dyn())
}

/// `-(g / N)` at each row's target, zero elsewhere (ATen's `nll_loss_backward_out_frame`).
pub fn nll_backward<F: Float>(
    input: &Tensor<F>,
    targets: &Arc<[usize]>,
    g: &Tensor<F>,
    reduction: Reduction,
) -> Tensor<F> {
    let mut out = Tensor::zeros(input.raw_dim());
    if reduction == Reduction::None {
        for ((n, &t), &gv) in targets.iter().enumerate().zip(g.iter()) {
            out[[n, t]] = -gv;
        }
        return out;
    }
    let g = g.iter().next().copied().unwrap_or_else(F::zero);
    let grad = if faults::on(Fault::CrossEntropyGradUnscaled) || reduction == Reduction::Sum {
        -g
    } else {
        -(g / F::of(targets.len() as f64))
    };
    for (n, &t) in targets.iter().enumerate() {
        out[[n, t]] = grad;
    }
    out
}

/// ATen's `mse_loss_backward`: `norm · (input - target) · g` with `norm = 2/numel` for the
/// mean and 2 otherwise; the target's gradient is the same with the operands swapped.
pub fn mse_backward<F: Float>(
    x: &Tensor<F>,
    t: &Tensor<F>,
    g: &Tensor<F>,
    reduction: Reduction,
    need_x: bool,
    need_t: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>) {
    let norm = F::of(if reduction == Reduction::Mean { 2.0 / x.len() as f64 } else { 2.0 });
    let one = |a: &Tensor<F>, b: &Tensor<F>| -> Tensor<F> {
        let mut out = a - b;
        match reduction {
            Reduction::None => ndarray::Zip::from(&mut out).and(g).for_each(|o, &gv| *o = norm * *o * gv),
            _ => {
                let gv = g.iter().next().copied().unwrap_or_else(F::zero);
                out.mapv_inplace(|d| norm * d * gv);
            }
        }
        out
    };
    (need_x.then(|| one(x, t)), need_t.then(|| one(t, x)))
}
