//! Reductions to a scalar and over dimensions.

use ndarray::{Axis, Zip};

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

/// A reduction over some dimensions of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimReduce {
    Sum,
    /// The sum divided by the number of reduced entries (ATen's `mean.dim`).
    Mean,
    /// `amax`: ties share the gradient evenly (ATen's `scale_grad_by_count`).
    Amax,
}

impl<F: Float> Graph<F> {
    /// Sum of all elements, as a 0-d tensor.
    pub fn sum(&mut self, a: Var) -> Var {
        let value = ndarray::arr0(self.value(a).sum()).into_dyn();
        self.push(value, Op::Sum(a))
    }

    /// Mean of all elements, as a 0-d tensor.
    pub fn mean(&mut self, a: Var) -> Var {
        let x = self.value(a);
        let value = ndarray::arr0(x.sum() / F::of(x.len() as f64)).into_dyn();
        self.push(value, Op::Mean(a))
    }
}

impl<F: Float> Graph<F> {
    /// `x.sum(axes, keepdim)`; `axes` sorted and distinct.
    pub fn sum_dim(&mut self, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce_dim(DimReduce::Sum, x, axes, keepdim)
    }

    pub fn mean_dim(&mut self, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce_dim(DimReduce::Mean, x, axes, keepdim)
    }

    pub fn amax(&mut self, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce_dim(DimReduce::Amax, x, axes, keepdim)
    }

    pub fn reduce_dim(&mut self, kind: DimReduce, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
        let xv = self.value(x);
        let rank = xv.ndim();
        if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= rank) {
            return Err(Error::Shape(format!(
                "{kind:?} over {axes:?}: axes must be sorted, distinct and below the rank {rank}"
            )));
        }
        if kind == DimReduce::Amax && axes.iter().any(|&a| xv.shape()[a] == 0) {
            return Err(Error::Shape(format!(
                "amax over {axes:?} of {:?}: an empty dimension has no maximum",
                xv.shape()
            )));
        }
        let kept = reduce_keepdim(kind, xv, axes);
        let value = if keepdim { kept } else { squeeze(kept, axes) };
        Ok(self.push(value, Op::ReduceDim { kind, x, axes: axes.into(), keepdim }))
    }
}

/// The reduction with every reduced axis kept as size 1.
fn reduce_keepdim<F: Float>(kind: DimReduce, x: &Tensor<F>, axes: &[usize]) -> Tensor<F> {
    let mut out = x.to_owned();
    for &a in axes.iter().rev() {
        out = match kind {
            DimReduce::Sum | DimReduce::Mean => out.sum_axis(Axis(a)),
            // NaN propagates, as ATen's max reductions do.
            DimReduce::Amax => {
                out.fold_axis(
                    Axis(a),
                    F::neg_infinity(),
                    |&m, &v| if m.is_nan() || !(v > m || v.is_nan()) { m } else { v },
                )
            }
        }
        .insert_axis(Axis(a));
    }
    if kind == DimReduce::Mean {
        let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
        let c = F::of(count as f64);
        out.mapv_inplace(|v| v / c);
    }
    out
}

fn squeeze<F: Float>(mut t: Tensor<F>, axes: &[usize]) -> Tensor<F> {
    for &a in axes.iter().rev() {
        t = t.index_axis_move(Axis(a), 0);
    }
    t
}

/// `g` (shaped like the output) with the reduced axes put back as size 1.
fn unsqueeze<F: Float>(g: &Tensor<F>, axes: &[usize], keepdim: bool) -> Tensor<F> {
    let mut t = g.to_owned();
    if !keepdim {
        for &a in axes {
            t = t.insert_axis(Axis(a));
        }
    }
    t
}

/// Gradient of a reduction over `axes`: the upstream gradient spread back over the reduced
/// entries (divided by their count for the mean; for amax, over the entries equal to the
/// maximum, each receiving `g / count` as ATen's `scale_grad_by_count`).
pub fn reduce_dim_backward<F: Float>(
    kind: DimReduce,
    x: &Tensor<F>,
    y: &Tensor<F>,
    g: &Tensor<F>,
    axes: &[usize],
    keepdim: bool,
) -> Tensor<F> {
    let gk = unsqueeze(g, axes, keepdim);
    let gb = gk.broadcast(x.raw_dim()).expect("reduced shape broadcasts");
    match kind {
        DimReduce::Sum => gb.to_owned(),
        DimReduce::Mean => {
            let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
            let c = F::of(count as f64);
            gb.mapv(|v| v / c)
        }
        DimReduce::Amax => {
            let yk = unsqueeze(y, axes, keepdim);
            let yb = yk.broadcast(x.raw_dim()).expect("reduced shape broadcasts");
            let mut mask = Tensor::<F>::zeros(x.raw_dim());
            Zip::from(&mut mask)
                .and(x)
                .and(&yb)
                .for_each(|m, &xv, &yv| *m = if xv == yv { F::one() } else { F::zero() });
            let mut count = mask.clone();
            for &a in axes.iter().rev() {
                count = count.sum_axis(Axis(a)).insert_axis(Axis(a));
            }
            let scaled = &gk / &count;
            let scaled = scaled.broadcast(x.raw_dim()).expect("reduced shape broadcasts");
            let mut out = Tensor::<F>::zeros(x.raw_dim());
            Zip::from(&mut out).and(&scaled).and(&mask).for_each(|o, &s, &m| *o = s * m);
            out
        }
    }
}

/// Every element contributed once: the gradient is the upstream scalar everywhere.
pub fn sum_backward<F: Float>(a: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    Tensor::from_elem(a.raw_dim(), scalar(g))
}

pub fn mean_backward<F: Float>(a: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    Tensor::from_elem(a.raw_dim(), scalar(g) / F::of(a.len() as f64))
}

fn scalar<F: Float>(g: &Tensor<F>) -> F {
    g.iter().next().copied().unwrap_or_else(F::zero)
}

/// ATen's `multi_row_sum` (SumKernel.cpp), the order in which `tensor.sum(dim)` adds up
/// the entries along a non-contiguous axis, e.g. the rows of a `[N,out]` gradient:
/// blocks of 16 summed from zero, each block added into a carry that is itself flushed
/// upward in a cascade of four levels. Up to 16 values this is a plain running sum.
pub fn cascade_sum<F: Float>(values: impl ExactSizeIterator<Item = F>) -> F {
    const LEVELS: usize = 4;
    let size = values.len();
    let ceil_log2 = if size <= 2 { 1 } else { (usize::BITS - (size - 1).leading_zeros()) as usize };
    let level_power = 4.max(ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [F::zero(); LEVELS];
    let mut values = values;
    let mut i = 0;
    while i + level_step <= size {
        for v in values.by_ref().take(level_step) {
            acc[0] += v;
        }
        i += level_step;
        for j in 1..LEVELS {
            let carry = acc[j - 1];
            acc[j] += carry;
            acc[j - 1] = F::zero();
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for v in values {
        acc[0] += v;
    }
    for j in 1..LEVELS {
        let level = acc[j];
        acc[0] += level;
    }
    acc[0]
}

/// Per channel of a contiguous `[N, C, size]` buffer, `Σ term(c, v)` accumulated in `A`
/// from `A::default()`, one add at a time in the order sample, then position (the
/// order ATen's per-channel reductions use). Eight channels advance together, so eight
/// independent chains overlap instead of waiting on each other's adds, and groups of
/// eight are shared between the engine's threads. Used by the convolution's bias
/// gradient (in F) and batch norm's statistics (in double).
pub fn channel_sums<F, A>(xs: &[F], (n, channels, size): (usize, usize, usize), term: impl Fn(usize, F) -> A + Sync) -> Vec<A>
where
    F: Float,
    A: Copy + Default + std::ops::AddAssign + Send,
{
    const GROUP: usize = 8;
    let mut sums = vec![A::default(); channels];
    crate::engine::parallel::for_each_chunk(&mut sums, GROUP, |grp, out| {
        let c0 = grp * GROUP;
        let mut acc = [A::default(); GROUP];
        for s in 0..n {
            let sample = &xs[(s * channels + c0) * size..];
            if out.len() == GROUP {
                for p in 0..size {
                    for (q, a) in acc.iter_mut().enumerate() {
                        *a += term(c0 + q, sample[q * size + p]);
                    }
                }
            } else {
                for (q, a) in acc.iter_mut().enumerate().take(out.len()) {
                    sample[q * size..(q + 1) * size].iter().for_each(|&v| *a += term(c0 + q, v));
                }
            }
        }
        out.copy_from_slice(&acc[..out.len()]);
    });
    sums
}

#[cfg(test)]
mod tests {
    use super::cascade_sum;

    #[test]
    fn cascade_sum_is_a_running_sum_up_to_sixteen_values() {
        let v: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 1e-7).collect();
        let running = v.iter().fold(0.0f32, |a, &b| a + b);
        assert_eq!(cascade_sum(v.iter().copied()), running);
    }

    #[test]
    fn cascade_sum_adds_blocks_of_sixteen() {
        // 1e8 swallows a single 1.0 in f32, but not a block of sixteen of them.
        let mut v = vec![1e8f32];
        v.extend(std::iter::repeat_n(1.0f32, 47));
        let blocks = [&v[..16], &v[16..32], &v[32..]].map(|b| b.iter().fold(0.0f32, |a, &x| a + x));
        assert_eq!(cascade_sum(v.iter().copied()), (blocks[0] + blocks[1]) + blocks[2]);
        assert_ne!(cascade_sum(v.iter().copied()), v.iter().fold(0.0f32, |a, &x| a + x));
    }
}
