//! Layer, RMS and group normalisation: each normalises rows of the input (the trailing
//! `normalized_shape` of every leading index; a sample's channel group over its spatial
//! positions) with the row's mean (not for RMS) and biased variance, then applies an
//! optional per-element weight and bias. The three share one kernel: a row `r` of `len`
//! values, whose element `k` takes weight `(r % groups) · per_group + k / spatial`
//! (layer and RMS norm: one group, `per_group = len`, `spatial = 1`).
//!
//! The statistics and every step are computed in f64 and rounded to `F` at the end:
//! exact arithmetic for f64 inputs, and for f32 at least as accurate as ATen's float
//! kernels. The backward follows `native_layer_norm_backward` in
//! `torch/_decomp/decompositions.py` (and `native_group_norm_backward`): with
//! `x̂ = (x - mean) · rstd` and `ĝ = g · w`,
//! `dx = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂))` per row (RMS norm: without the
//! `mean(ĝ)` term), `dw = Σ g · x̂`, `db = Σ g`.

use std::sync::Arc;

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

/// How the input divides into rows and how a row's elements map to weight entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub len: usize,
    pub groups: usize,
    pub per_group: usize,
    pub spatial: usize,
}

impl Rows {
    /// Rows over the trailing `normalized` elements: layer and RMS norm.
    pub fn trailing(total: usize, normalized: usize) -> Rows {
        let len = normalized.max(1);
        Rows { rows: total / len, len: normalized, groups: 1, per_group: normalized, spatial: 1 }
    }

    /// `x [N, C, *]` in `groups` groups of channels: group norm.
    pub fn groups(shape: &[usize], groups: usize) -> Rows {
        let (n, c) = (shape[0], shape[1]);
        let spatial: usize = shape[2..].iter().product();
        let per_group = c / groups;
        Rows { rows: n * groups, len: per_group * spatial, groups, per_group, spatial }
    }

    /// How many weight entries there are.
    fn weights(&self) -> usize {
        self.groups * self.per_group
    }

    fn weight_index(&self, r: usize, k: usize) -> usize {
        (r % self.groups) * self.per_group + k / self.spatial.max(1)
    }
}

/// What the backward needs: the layout, whether the mean was subtracted, and per row
/// the mean (0 for RMS norm) and `rstd = 1 / sqrt(var + eps)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub rows: Rows,
    pub center: bool,
    pub mean: Arc<[f64]>,
    pub rstd: Arc<[f64]>,
}

impl<F: Float> Graph<F> {
    /// `layer_norm` (`center`) or `rms_norm` (not) over the trailing `normalized`
    /// elements, or `group_norm` with `Rows::groups`. `w` and `b` each optional, of
    /// `rows.weights()` entries.
    pub fn row_norm(
        &mut self,
        what: &str,
        x: Var,
        w: Option<Var>,
        b: Option<Var>,
        rows: Rows,
        center: bool,
        eps: f64,
    ) -> Result<Var> {
        let xv = self.value(x);
        if rows.rows * rows.len != xv.len() {
            return Err(Error::Shape(format!(
                "{what}: input {:?} does not divide into {} rows of {}",
                xv.shape(),
                rows.rows,
                rows.len
            )));
        }
        for v in [w, b].into_iter().flatten() {
            if self.value(v).len() != rows.weights() {
                return Err(Error::Shape(format!(
                    "{what}: weight or bias {:?}: expected {} entries",
                    self.value(v).shape(),
                    rows.weights()
                )));
            }
        }
        let xs: Vec<f64> = xv.iter().map(|v| v.as_f64()).collect();
        let flat = |v: Option<Var>| v.map(|v| self.value(v).iter().map(|v| v.as_f64()).collect::<Vec<f64>>());
        let (ws, bs) = (flat(w), flat(b));
        let n = rows.len.max(1) as f64;
        let (mut means, mut rstds) = (Vec::with_capacity(rows.rows), Vec::with_capacity(rows.rows));
        let mut out = Vec::with_capacity(xs.len());
        for (r, row) in xs.chunks(rows.len.max(1)).take(rows.rows).enumerate() {
            let mean = if center { row.iter().sum::<f64>() / n } else { 0.0 };
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps).sqrt();
            for (k, v) in row.iter().enumerate() {
                let i = rows.weight_index(r, k);
                let mut y = (v - mean) * rstd;
                if let Some(ws) = &ws {
                    y *= ws[i];
                }
                if let Some(bs) = &bs {
                    y += bs[i];
                }
                out.push(F::of(y));
            }
            means.push(mean);
            rstds.push(rstd);
        }
        let value = Tensor::from_shape_vec(xv.raw_dim(), out).expect("sizes match");
        let saved = Saved { rows, center, mean: means.into(), rstd: rstds.into() };
        Ok(self.push(value, Op::RowNorm { x, w, b, saved: Arc::new(saved) }))
    }
}

/// Gradients of the input, weight and bias (those asked for).
pub fn backward<F: Float>(
    x: &Tensor<F>,
    w: Option<&Tensor<F>>,
    affine_shape: &[usize],
    saved: &Saved,
    g: &Tensor<F>,
    need: (bool, bool, bool),
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let rows = saved.rows;
    let xs: Vec<f64> = x.iter().map(|v| v.as_f64()).collect();
    let gs: Vec<f64> = g.iter().map(|v| v.as_f64()).collect();
    let ws: Option<Vec<f64>> = w.map(|w| w.iter().map(|v| v.as_f64()).collect());
    let n = rows.len.max(1) as f64;
    let mut dx = vec![0.0; if need.0 { xs.len() } else { 0 }];
    let (mut dw, mut db) = (vec![0.0; rows.weights()], vec![0.0; rows.weights()]);
    let len = rows.len.max(1);
    for r in 0..rows.rows {
        let (mean, rstd) = (saved.mean[r], saved.rstd[r]);
        let (xr, gr) = (&xs[r * len..r * len + rows.len], &gs[r * len..r * len + rows.len]);
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let ghat: Vec<f64> =
            gr.iter().enumerate().map(|(k, g)| ws.as_ref().map_or(*g, |ws| g * ws[rows.weight_index(r, k)])).collect();
        if need.0 {
            let a = if saved.center { ghat.iter().sum::<f64>() / n } else { 0.0 };
            let c = ghat.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / n;
            for k in 0..rows.len {
                dx[r * len + k] = rstd * (ghat[k] - a - xhat[k] * c);
            }
        }
        for k in 0..rows.len {
            let i = rows.weight_index(r, k);
            dw[i] += gr[k] * xhat[k];
            db[i] += gr[k];
        }
    }
    let to = |v: Vec<f64>, dim: ndarray::IxDyn| {
        Tensor::from_shape_vec(dim, v.into_iter().map(F::of).collect()).expect("sizes match")
    };
    let wdim = ndarray::IxDyn(affine_shape);
    (need.0.then(|| to(dx, x.raw_dim())), need.1.then(|| to(dw, wdim.clone())), need.2.then(|| to(db, wdim)))
}
