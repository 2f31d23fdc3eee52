//! Average pooling (`avg_pool2d`), adaptive average pooling (`adaptive_avg_pool2d`) and
//! nearest upsampling by an integer factor (`upsample_nearest2d`): each output entry is
//! the sum of a rectangular window of its input plane divided by a divisor (upsampling:
//! a one-entry window, divisor 1). The windows are separable, rows per output row and
//! columns per output column, so one `Windows` describes each op, and backward spreads
//! `g / divisor` over the same window.
//!
//! PyTorch's rules, from ATen's `AvgPoolKernel.cpp` and `AdaptivePooling.h`:
//! - avg_pool2d: window rows `oy·stride - padding .. + kernel`, its end clipped to
//!   `H + padding`; with `count_include_pad` the divisor is that (padded) window's size,
//!   else the number of real entries after clipping to `0..H`. Output sizes as max-pool's
//!   (`pooled_len`), ceil mode included.
//! - adaptive: output row i averages input rows `floor(i·H/oh) .. ceil((i+1)·H/oh)`.
//! - nearest, integer scale s: output row i reads input row `i / s`.

use std::sync::Arc;

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};
use crate::models::program::pooled_len;

/// One axis: per output index, the input range and its share of the divisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    pub ranges: Vec<(usize, usize)>,
    pub counts: Vec<usize>,
}

/// The windows of one op over an `[N, C, H, W]` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    pub rows: Axis,
    pub cols: Axis,
    h: usize,
    w: usize,
}

impl Axis {
    fn avg(len: usize, k: usize, stride: usize, padding: usize, ceil_mode: bool, count_include_pad: bool) -> Option<Axis> {
        let out = pooled_len(len, k, stride, padding, ceil_mode)?;
        let (mut ranges, mut counts) = (Vec::with_capacity(out), Vec::with_capacity(out));
        for o in 0..out {
            let start = (o * stride) as isize - padding as isize;
            let end = (start + k as isize).min((len + padding) as isize);
            let padded = (end - start) as usize;
            let (s, e) = (start.max(0) as usize, (end.max(0) as usize).min(len));
            ranges.push((s, e.max(s)));
            counts.push(if count_include_pad { padded } else { e.saturating_sub(s) });
        }
        Some(Axis { ranges, counts })
    }

    fn adaptive(len: usize, out: usize) -> Axis {
        let ranges: Vec<(usize, usize)> = (0..out).map(|i| (i * len / out, ((i + 1) * len).div_ceil(out))).collect();
        let counts = ranges.iter().map(|&(s, e)| e - s).collect();
        Axis { ranges, counts }
    }

    fn nearest(len: usize, scale: usize) -> Axis {
        Axis { ranges: (0..len * scale).map(|i| (i / scale, i / scale + 1)).collect(), counts: vec![1; len * scale] }
    }
}

impl Windows {
    pub fn avg_pool(x: &[usize], k: usize, stride: usize, padding: usize, ceil_mode: bool, count_include_pad: bool) -> Result<Self> {
        let bad = || Error::Shape(format!("avg_pool2d: input {x:?}, kernel {k}, stride {stride}, padding {padding}: need [N,C,H,W], kernel and stride >= 1, padding <= kernel/2, H, W + 2·padding >= kernel"));
        if x.len() != 4 || k == 0 || stride == 0 || 2 * padding > k {
            return Err(bad());
        }
        let axis = |len| Axis::avg(len, k, stride, padding, ceil_mode, count_include_pad).ok_or_else(bad);
        Ok(Windows { rows: axis(x[2])?, cols: axis(x[3])?, h: x[2], w: x[3] })
    }

    pub fn adaptive(x: &[usize], oh: usize, ow: usize) -> Result<Self> {
        if x.len() != 4 || oh == 0 || ow == 0 || x[2] == 0 || x[3] == 0 {
            return Err(Error::Shape(format!("adaptive_avg_pool2d: input {x:?} to [{oh}, {ow}]: need [N,C,H,W], non-empty, and a positive output size")));
        }
        Ok(Windows { rows: Axis::adaptive(x[2], oh), cols: Axis::adaptive(x[3], ow), h: x[2], w: x[3] })
    }

    pub fn nearest(x: &[usize], scale: usize) -> Result<Self> {
        if x.len() != 4 || scale == 0 {
            return Err(Error::Shape(format!("upsample_nearest2d: input {x:?}, scale {scale}: need [N,C,H,W] and a scale >= 1")));
        }
        Ok(Windows { rows: Axis::nearest(x[2], scale), cols: Axis::nearest(x[3], scale), h: x[2], w: x[3] })
    }

    fn out_hw(&self) -> (usize, usize) {
        (self.rows.ranges.len(), self.cols.ranges.len())
    }
}

pub fn forward<F: Float>(x: &Tensor<F>, win: &Windows) -> Tensor<F> {
    let s = x.shape();
    let (planes, (h, w)) = (s[0] * s[1], (win.h, win.w));
    let (oh, ow) = win.out_hw();
    let data = x.as_standard_layout();
    let data = data.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &data[p * h * w..(p + 1) * h * w];
        for (&(y0, y1), &cy) in win.rows.ranges.iter().zip(&win.rows.counts) {
            for (&(x0, x1), &cx) in win.cols.ranges.iter().zip(&win.cols.counts) {
                let mut sum = F::zero();
                for y in y0..y1 {
                    for v in &plane[y * w + x0..y * w + x1] {
                        sum += *v;
                    }
                }
                out.push(if cy * cx == 1 { sum } else { sum / F::of((cy * cx) as f64) });
            }
        }
    }
    Tensor::from_shape_vec(vec![s[0], s[1], oh, ow], out).expect("sizes match")
}

pub fn backward<F: Float>(x: &Tensor<F>, win: &Windows, g: &Tensor<F>) -> Tensor<F> {
    let s = x.shape();
    let (planes, (h, w)) = (s[0] * s[1], (win.h, win.w));
    let (oh, ow) = win.out_hw();
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    let mut gx = vec![F::zero(); planes * h * w];
    for p in 0..planes {
        let plane = &mut gx[p * h * w..(p + 1) * h * w];
        let gp = &gs[p * oh * ow..(p + 1) * oh * ow];
        for (oy, (&(y0, y1), &cy)) in win.rows.ranges.iter().zip(&win.rows.counts).enumerate() {
            for (ox, (&(x0, x1), &cx)) in win.cols.ranges.iter().zip(&win.cols.counts).enumerate() {
                let gv = gp[oy * ow + ox];
                let share = if cy * cx == 1 { gv } else { gv / F::of((cy * cx) as f64) };
                for y in y0..y1 {
                    for v in &mut plane[y * w + x0..y * w + x1] {
                        *v += share;
                    }
                }
            }
        }
    }
    Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
}

impl<F: Float> Graph<F> {
    /// Averages over `windows` (built by `Windows::avg_pool`, `adaptive` or `nearest`).
    pub fn avg_windows(&mut self, x: Var, windows: Windows) -> Var {
        let value = forward(self.value(x), &windows);
        self.push(value, Op::AvgWindows { x, windows: Arc::new(windows) })
    }
}
