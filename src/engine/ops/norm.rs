//! Batch normalisation over axis 1 of `[N,C]` or `[N,C,H,W]`, written after ATen's CPU
//! kernels (`batch_norm_cpu_collect_stats`, `batch_norm_cpu_update_stats_template`,
//! `batch_norm_cpu_transform_input`, `batch_norm_backward_cpu`), including where they
//! compute in double: for f32 ATen's CPU accumulation type is double, so the batch sum,
//! the variance sum, `invstd` and the running-variance update are rounded to f32 only at
//! the end. For f64 those steps are plain f64 arithmetic, which `as_f64` leaves exact.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use super::reduce::channel_sums;
use crate::engine::{parallel, Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

/// A layer's running mean and variance, each of shape `[C]`, updated by training steps.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats<F> {
    pub mean: Tensor<F>,
    pub var: Tensor<F>,
}

impl<F: Float> RunningStats<F> {
    /// PyTorch's initial state: mean 0, variance 1.
    pub fn new(channels: usize) -> Self {
        RunningStats { mean: Tensor::zeros(vec![channels]), var: Tensor::ones(vec![channels]) }
    }
}

impl<F: Float> Graph<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        stats: &mut RunningStats<F>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Var> {
        let (value, saved) = forward(self.value(x), self.value(gamma), self.value(beta), stats, training, momentum, eps)?;
        let op = Op::BatchNorm { x, gamma, beta, mean: saved.mean.into(), invstd: saved.invstd.into(), training };
        Ok(self.push(value, op))
    }
}

/// What backward needs per channel, kept as f64 (exact for f32 values too).
pub struct Saved {
    /// The batch mean (training) or the running mean (eval).
    pub mean: Vec<f64>,
    /// `1/sqrt(var + eps)` as ATen's backward kernel sees it.
    pub invstd: Vec<f64>,
}

/// `(N, C, elements per channel per sample)`.
fn layout(x: &[usize], gamma: &[usize], beta: &[usize], stats: (&[usize], &[usize])) -> Result<(usize, usize, usize)> {
    let ok_rank = x.len() == 2 || x.len() == 4;
    let c = if x.len() >= 2 { x[1] } else { 0 };
    if !ok_rank || gamma != [c] || beta != [c] || stats.0 != [c] || stats.1 != [c] {
        return Err(Error::Shape(format!(
            "batch_norm: input {x:?}, gamma {gamma:?}, beta {beta:?}, running mean {:?}, running var {:?}: \
             need input [N,C] or [N,C,H,W] and every other tensor [C]",
            stats.0,
            stats.1
        )));
    }
    Ok((x[0], c, x[2..].iter().product()))
}

/// The `size` values of channel `c` in sample `n` of a contiguous `[N, C, size]` buffer.
fn plane<F>(data: &[F], n: usize, c: usize, channels: usize, size: usize) -> &[F] {
    let start = (n * channels + c) * size;
    &data[start..start + size]
}

#[allow(clippy::too_many_arguments)]
pub fn forward<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    stats: &mut RunningStats<F>,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<(Tensor<F>, Saved)> {
    let (n, channels, size) = layout(x.shape(), gamma.shape(), beta.shape(), (stats.mean.shape(), stats.var.shape()))?;
    let m = n * size;
    if training && m <= 1 {
        let msg = format!("batch_norm: input {:?}: training needs more than one value per channel", x.shape());
        return Err(Error::Shape(msg));
    }
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let mut out = vec![F::zero(); xs.len()];
    let mut saved = Saved { mean: Vec::with_capacity(channels), invstd: Vec::with_capacity(channels) };
    let mf = F::of(momentum);

    // Every pass walks the input in memory order (sample, channel, position) with one
    // accumulator per channel: each channel still sums its values in the order sample,
    // then position, as ATen does, but a `[N, C]` input (C = 784 for the softmax
    // regression) runs as whole rows instead of one value per channel and sample.
    let (mut sums, mut var_sums) = (vec![0.0f64; channels], vec![0.0f64; channels]);
    let mut means = vec![F::zero(); channels];
    let samples = xs.chunks_exact((channels * size).max(1));
    if training {
        if size == 1 {
            for sample in samples.clone() {
                sums.iter_mut().zip(sample).for_each(|(acc, &v)| *acc += v.as_f64());
            }
        } else {
            sums = channel_sums(xs, (n, channels, size), |_, v| v.as_f64());
        }
        for (mean, &sum) in means.iter_mut().zip(&sums) {
            *mean = F::of(sum / m as f64);
        }
        // The difference and its square round in F; only the running sum is double.
        let square = |c: usize, v: F| {
            let d = v - means[c];
            (d * d).as_f64()
        };
        if size == 1 {
            for sample in samples.clone() {
                for (c, (acc, &v)) in var_sums.iter_mut().zip(sample).enumerate() {
                    *acc += square(c, v);
                }
            }
        } else {
            var_sums = channel_sums(xs, (n, channels, size), square);
        }
    }
    let (gamma, beta) = (gamma.as_standard_layout(), beta.as_standard_layout());
    let (gamma, beta) = (gamma.as_slice().expect("[C]"), beta.as_slice().expect("[C]"));
    let (run_mean, run_var) = (stats.mean.as_slice_mut().expect("[C]"), stats.var.as_slice_mut().expect("[C]"));
    let (mut alpha, mut shift) = (vec![F::zero(); channels], vec![F::zero(); channels]);
    let biased_fault = faults::on(Fault::RunningVarBiased);
    for c in 0..channels {
        let (mean, fwd_invstd, bwd_invstd) = if training {
            let (mean, var_sum) = (means[c], F::of(var_sums[c]));
            let biased = var_sum / F::of(m as f64);
            let invstd =
                if biased != F::zero() || eps != 0.0 { F::of(1.0 / (biased.as_f64() + eps).sqrt()) } else { F::zero() };

            let rm = &mut run_mean[c];
            *rm = mf * mean + (F::one() - mf) * *rm;
            let unbiased = if biased_fault { biased.as_f64() } else { (var_sum / F::of((m - 1) as f64)).as_f64() };
            let rv = &mut run_var[c];
            *rv = F::of(mf.as_f64() * unbiased + ((F::one() - mf) * *rv).as_f64());
            (mean, invstd, invstd)
        } else {
            let rv = run_var[c];
            // The eval forward computes invstd in F, the eval backward in double.
            let fwd = F::one() / (rv + F::of(eps)).sqrt();
            let bwd = F::of(1.0 / (rv.as_f64() + eps).sqrt());
            (run_mean[c], fwd, bwd)
        };
        alpha[c] = fwd_invstd * gamma[c];
        shift[c] = beta[c] - mean * alpha[c];
        saved.mean.push(mean.as_f64());
        saved.invstd.push(bwd_invstd.as_f64());
    }
    for (o, v) in out.chunks_exact_mut((channels * size).max(1)).zip(samples) {
        for ((o, v), (&a, &b)) in o.chunks_exact_mut(size.max(1)).zip(v.chunks_exact(size.max(1))).zip(alpha.iter().zip(&shift)) {
            o.iter_mut().zip(v).for_each(|(o, &v)| *o = v * a + b);
        }
    }
    let value = Tensor::from_shape_vec(x.raw_dim(), out).expect("sizes match");
    Ok((value, saved))
}

/// Gradients of input, gamma and beta; only those asked for.
#[allow(clippy::too_many_arguments)]
pub fn backward<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    mean: &Arc<[f64]>,
    invstd: &Arc<[f64]>,
    training: bool,
    g: &Tensor<F>,
    need_x: bool,
    need_gamma: bool,
    need_beta: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let shape = x.shape();
    let (n, channels) = (shape[0], shape[1]);
    let size: usize = shape[2..].iter().product();
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let gs = g.as_standard_layout();
    let gs = gs.as_slice().expect("standard layout");
    let count = F::of((n * size) as f64);
    let gamma = gamma.as_standard_layout();
    let gamma = gamma.as_slice().expect("[C]");
    // Per channel, the two sums over its values in the order sample, then position.
    // Eight channels advance together (sixteen independent chains) and groups of eight
    // are shared between the threads.
    const GROUP: usize = 8;
    let mut sums = vec![(F::zero(), F::zero()); channels];
    parallel::for_each_chunk(&mut sums, GROUP, |grp, out| {
        let c0 = grp * GROUP;
        let mut acc = [(F::zero(), F::zero()); GROUP];
        let means: [F; GROUP] = std::array::from_fn(|q| F::of(mean.get(c0 + q).copied().unwrap_or(0.0)));
        for s in 0..n {
            let at = (s * channels + c0) * size;
            let (xg, gg) = (&xs[at..], &gs[at..]);
            if out.len() == GROUP {
                for p in 0..size {
                    for (q, (sum, dotp)) in acc.iter_mut().enumerate() {
                        let (xv, dy) = (xg[q * size + p], gg[q * size + p]);
                        *sum += dy;
                        *dotp += (xv - means[q]) * dy;
                    }
                }
            } else {
                for (q, (sum, dotp)) in acc.iter_mut().enumerate().take(out.len()) {
                    for p in 0..size {
                        let (xv, dy) = (xg[q * size + p], gg[q * size + p]);
                        *sum += dy;
                        *dotp += (xv - means[q]) * dy;
                    }
                }
            }
        }
        out.copy_from_slice(&acc[..out.len()]);
    });
    let mut dx = vec![F::zero(); if need_x { xs.len() } else { 0 }];
    if need_x {
        // Looked up once: a thread-local read per element cost as much as the formula.
        let full = training && !faults::on(Fault::BatchNormNoMeanVarTerms);
        let per_sample = (channels * size).max(1);
        parallel::for_each_chunk(&mut dx, per_sample, |s, out| {
            for (c, o) in out.chunks_exact_mut(size.max(1)).enumerate() {
                let (mean, invstd, w) = (F::of(mean[c]), F::of(invstd[c]), gamma[c]);
                let (sum, dotp) = sums[c];
                let k = dotp * invstd * invstd / count;
                let grad_mean = sum / count;
                let (xp, gp) = (plane(xs, s, c, channels, size), plane(gs, s, c, channels, size));
                for ((o, &xv), &dy) in o.iter_mut().zip(xp).zip(gp) {
                    *o = if full { (dy - grad_mean - (xv - mean) * k) * invstd * w } else { dy * invstd * w };
                }
            }
        });
    }
    let dgamma: Vec<F> = sums.iter().zip(invstd.iter()).map(|(&(_, dotp), &i)| dotp * F::of(i)).collect();
    let dbeta: Vec<F> = sums.iter().map(|&(sum, _)| sum).collect();
    let vec1 = |v: Vec<F>| Tensor::from_shape_vec(vec![channels], v).expect("one per channel");
    (
        need_x.then(|| Tensor::from_shape_vec(x.raw_dim(), dx).expect("sizes match")),
        need_gamma.then(|| vec1(dgamma)),
        need_beta.then(|| vec1(dbeta)),
    )
}
