//! 2-D max pooling with window = stride = `kernel`, no padding, floor mode.
//!
//! Forward records, per output, the flat input index it took. Ties go to the first
//! maximum in row-major scan order and NaN wins, because ATen's kernel replaces the
//! running maximum only on `val > maxval || isnan(val)`; backward sends the whole
//! gradient to that one recorded position, as ATen's `max_pool2d_with_indices_backward`.

use crate::engine::faults::{self, Fault};
use std::sync::Arc;

use crate::engine::{parallel, Float, Graph, Op, Tensor, Var};
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
    let mut out = vec![F::zero(); n * c * oh * ow];
    let mut argmax = vec![0usize; n * c * oh * ow];
    // Planes are independent; they are shared between the cores.
    let plane_out = (oh * ow).max(1);
    let arg = parallel::SendPtr(argmax.as_mut_ptr());
    parallel::for_each_chunk(&mut out, plane_out, |plane, out| {
        // SAFETY: plane `plane`'s indices, disjoint between tasks; `argmax` outlives the call.
        let argmax = unsafe { std::slice::from_raw_parts_mut(arg.get().add(plane * plane_out), out.len()) };
        let base = plane * h * w;
        let input = &data[base..base + h * w];
        match kernel {
            2 => pool_plane_2x2(input, w, ow, out, argmax, base),
            _ => pool_plane_any(input, w, ow, kernel, out, argmax, base),
        }
    });
    let value = Tensor::from_shape_vec(vec![n, c, oh, ow], out).expect("sizes match");
    Ok((value, argmax))
}

/// The window's first maximum (NaN wins): ATen's `val > maxval || isnan(val)` scanned in
/// row-major order. Branch-free, since the comparison is unpredictable on data.
#[inline(always)]
fn take<F: Float>(v: F, idx: usize, best: &mut F, at: &mut usize) {
    let take = v > *best || v.is_nan();
    *best = if take { v } else { *best };
    *at = if take { idx } else { *at };
}

/// One plane pooled 2×2 (the models' case), written out so that the windows of a row
/// pair are independent straight-line code. The first value needs no comparison: it
/// beats the starting −∞ unless it is −∞ itself, and then the result is the same (−∞
/// at the window's first position). `base` is the plane's flat offset, for the indices.
fn pool_plane_2x2<F: Float>(input: &[F], w: usize, ow: usize, out: &mut [F], argmax: &mut [usize], base: usize) {
    for (oy, (out_row, arg_row)) in out.chunks_exact_mut(ow).zip(argmax.chunks_exact_mut(ow)).enumerate() {
        let (r0, r1) = (&input[2 * oy * w..2 * oy * w + 2 * ow], &input[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow]);
        for (ox, (o, a)) in out_row.iter_mut().zip(arg_row.iter_mut()).enumerate() {
            let mut best = r0[2 * ox];
            let mut pos = 0;
            for (v, p) in [(r0[2 * ox + 1], 1), (r1[2 * ox], w), (r1[2 * ox + 1], w + 1)] {
                let take = v > best || v.is_nan();
                best = if take { v } else { best };
                pos = if take { p } else { pos };
            }
            *o = best;
            *a = base + 2 * oy * w + 2 * ox + pos;
        }
    }
}

fn pool_plane_any<F: Float>(
    input: &[F],
    w: usize,
    ow: usize,
    k: usize,
    out: &mut [F],
    argmax: &mut [usize],
    base: usize,
) {
    for (o, (dst, arg)) in out.iter_mut().zip(argmax.iter_mut()).enumerate() {
        let (oy, ox) = (o / ow, o % ow);
        let first = oy * k * w + ox * k;
        let (mut best, mut at) = (F::neg_infinity(), base + first);
        for i in 0..k {
            for j in 0..k {
                take(input[first + i * w + j], base + first + i * w + j, &mut best, &mut at);
            }
        }
        (*dst, *arg) = (best, at);
    }
}

pub fn backward<F: Float>(x: &Tensor<F>, argmax: &Arc<[usize]>, g: &Tensor<F>) -> Tensor<F> {
    if faults::on(Fault::MaxPoolGradToAllTies) {
        return backward_to_all_ties(x, argmax, g);
    }
    let s = x.shape();
    let (plane_in, plane_out) = ((s[2] * s[3]).max(1), (g.shape()[2] * g.shape()[3]).max(1));
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    let mut gx = vec![F::zero(); x.len()];
    // Each output's recorded input lies in its own plane, so planes are independent.
    parallel::for_each_chunk(&mut gx, plane_in, |p, dst| {
        let range = p * plane_out..(p + 1) * plane_out;
        for (&at, &gv) in argmax[range.clone()].iter().zip(&gs[range]) {
            dst[at - p * plane_in] += gv;
        }
    });
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
