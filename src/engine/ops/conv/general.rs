//! Convolution with dilation and groups, and transposed convolution
//! (`torch.nn.functional.conv2d` and `conv_transpose2d`), as direct loops in any float.
//!
//! Both relate an *image* side A `[N, Ca, Ha, Wa]` and a *grid* side B `[N, Cb, Hb, Wb]`
//! through a weight `[Cb, Ca/groups, kh, kw]`: grid position (yb, xb) with kernel tap
//! (ky, kx) meets image position `(yb·stride - padding + ky·dilation, ...)`, and grid
//! channel `cb` of group `cb / (Cb/groups)` meets that group's image channels. A
//! convolution reads A (its input) and writes B (its output): `B = Σ A·W`. A transposed
//! convolution is its adjoint: it reads B (its input) and writes A, `A += B·W` at every
//! meeting. So three loops over the same meetings make all six rules:
//!
//! | | forward | input gradient | weight gradient |
//! |---|---|---|---|
//! | conv2d | gather: B += A·W | scatter: gA += gB·W | gW += A·gB |
//! | conv_transpose2d | scatter: A += B·W | gather: gB += gA·W | gW += gA·B |
//!
//! The bias is per channel of the output (B for conv2d, A for the transpose), and its
//! gradient is the output gradient summed over batch and positions. The models' plain
//! convolutions (dilation 1, one group) keep the im2col and implicit-GEMM path of
//! `conv.rs`; the order of sums here differs from ATen's, within rounding.

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

/// The sizes of one general convolution, checked once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub transposed: bool,
    n: usize,
    groups: usize,
    /// Image side A.
    ca: usize,
    ha: usize,
    wa: usize,
    /// Grid side B.
    cb: usize,
    hb: usize,
    wb: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

/// Attributes of a general convolution (`output_padding` only for the transpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub output_padding: usize,
}

impl Geometry {
    pub fn new(transposed: bool, x: &[usize], w: &[usize], b: Option<&[usize]>, a: Attrs) -> Result<Self> {
        let name = if transposed { "conv_transpose2d" } else { "conv2d" };
        let bad = |why: &str| Error::Shape(format!("{name}: input {x:?}, weight {w:?}, bias {b:?}, {a:?}: {why}"));
        if x.len() != 4 || w.len() != 4 {
            return Err(bad("input and weight must be 4-D"));
        }
        if a.stride == 0 || a.dilation == 0 || a.groups == 0 || w[2] == 0 || w[3] == 0 {
            return Err(bad("stride, dilation, groups and the kernel must be positive"));
        }
        let g = a.groups;
        let span = |k: usize| a.dilation * (k - 1) + 1;
        let (ca, ha, wa, cb, hb, wb);
        if !transposed {
            if w[1] * g != x[1] || w[0] % g != 0 {
                return Err(bad("weight must be [O, C/groups, kh, kw] with groups dividing C and O"));
            }
            if x[2] + 2 * a.padding < span(w[2]) || x[3] + 2 * a.padding < span(w[3]) {
                return Err(bad("the dilated kernel is larger than the padded input"));
            }
            (ca, ha, wa) = (x[1], x[2], x[3]);
            cb = w[0];
            hb = (x[2] + 2 * a.padding - span(w[2])) / a.stride + 1;
            wb = (x[3] + 2 * a.padding - span(w[3])) / a.stride + 1;
        } else {
            if w[0] != x[1] || x[1] % g != 0 {
                return Err(bad("weight must be [C, O/groups, kh, kw] with groups dividing C"));
            }
            if a.output_padding >= a.stride && a.output_padding >= a.dilation {
                return Err(bad("output_padding must be smaller than the stride or the dilation"));
            }
            let size = |len: usize, k: usize| {
                ((len.max(1) - 1) * a.stride + span(k) + a.output_padding).checked_sub(2 * a.padding).filter(|&l| l > 0 && len > 0)
            };
            let (Some(h), Some(wd)) = (size(x[2], w[2]), size(x[3], w[3])) else {
                return Err(bad("the output would be empty"));
            };
            (cb, hb, wb) = (x[1], x[2], x[3]);
            (ca, ha, wa) = (w[1] * g, h, wd);
        }
        let out_channels = if transposed { ca } else { cb };
        if let Some(b) = b {
            if b != [out_channels] {
                return Err(bad("bias must have one entry per output channel"));
            }
        }
        Ok(Geometry { transposed, n: x[0], groups: g, ca, ha, wa, cb, hb, wb, kh: w[2], kw: w[3], stride: a.stride, padding: a.padding, dilation: a.dilation })
    }

    fn a_shape(&self) -> Vec<usize> {
        vec![self.n, self.ca, self.ha, self.wa]
    }

    fn b_shape(&self) -> Vec<usize> {
        vec![self.n, self.cb, self.hb, self.wb]
    }

    /// Calls `f(a, b, w)` with the flat indices of every meeting of image entry `a`,
    /// grid entry `b` and weight entry `w`.
    #[inline(always)]
    fn meetings(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (cag, cbg) = (self.ca / self.groups, self.cb / self.groups);
        let plane_a = self.ha * self.wa;
        for n in 0..self.n {
            for cb in 0..self.cb {
                let group = cb / cbg;
                let b_plane = (n * self.cb + cb) * self.hb * self.wb;
                for j in 0..cag {
                    let a_plane = (n * self.ca + group * cag + j) * plane_a;
                    let w_base = (cb * cag + j) * self.kh * self.kw;
                    for ky in 0..self.kh {
                        for yb in 0..self.hb {
                            let ya = (yb * self.stride + ky * self.dilation) as isize - self.padding as isize;
                            if ya < 0 || ya >= self.ha as isize {
                                continue;
                            }
                            for kx in 0..self.kw {
                                let wi = w_base + ky * self.kw + kx;
                                for xb in 0..self.wb {
                                    let xa = (xb * self.stride + kx * self.dilation) as isize - self.padding as isize;
                                    if xa < 0 || xa >= self.wa as isize {
                                        continue;
                                    }
                                    f(a_plane + ya as usize * self.wa + xa as usize, b_plane + yb * self.wb + xb, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn flat<F: Float>(t: &Tensor<F>) -> std::borrow::Cow<'_, [F]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

/// Adds `bias[c]` to every entry of channel c of `out` (`[N, C, H, W]`, flat).
fn add_bias<F: Float>(out: &mut [F], bias: &[F], plane: usize) {
    let c = bias.len();
    for (i, chunk) in out.chunks_mut(plane.max(1)).enumerate() {
        let b = bias[i % c];
        chunk.iter_mut().for_each(|v| *v += b);
    }
}

/// Per channel, the sum of `g` (`[N, C, H, W]`, flat) over batch and positions.
fn channel_sums<F: Float>(g: &[F], c: usize, plane: usize) -> Vec<F> {
    let mut s = vec![F::zero(); c];
    for (i, chunk) in g.chunks(plane.max(1)).enumerate() {
        s[i % c] += chunk.iter().fold(F::zero(), |acc, &v| acc + v);
    }
    s
}

pub fn forward<F: Float>(geo: &Geometry, x: &Tensor<F>, w: &Tensor<F>, b: Option<&Tensor<F>>) -> Tensor<F> {
    let (x, w) = (flat(x), flat(w));
    let (shape, mut out) = if !geo.transposed {
        let mut out = vec![F::zero(); geo.n * geo.cb * geo.hb * geo.wb];
        geo.meetings(|a, bi, wi| out[bi] += x[a] * w[wi]);
        (geo.b_shape(), out)
    } else {
        let mut out = vec![F::zero(); geo.n * geo.ca * geo.ha * geo.wa];
        geo.meetings(|a, bi, wi| out[a] += x[bi] * w[wi]);
        (geo.a_shape(), out)
    };
    if let Some(b) = b {
        add_bias(&mut out, &flat(b), shape[2] * shape[3]);
    }
    Tensor::from_shape_vec(shape, out).expect("sizes match")
}

/// Gradients of input, weight and bias (each when `need` asks for it).
pub fn backward<F: Float>(
    geo: &Geometry,
    x: &Tensor<F>,
    w: &Tensor<F>,
    g: &Tensor<F>,
    need: (bool, bool, bool),
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let (xv, wv, gv) = (flat(x), flat(w), flat(g));
    let gx = need.0.then(|| {
        let mut gx = vec![F::zero(); x.len()];
        if !geo.transposed {
            geo.meetings(|a, bi, wi| gx[a] += gv[bi] * wv[wi]);
        } else {
            geo.meetings(|a, bi, wi| gx[bi] += gv[a] * wv[wi]);
        }
        Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
    });
    let gw = need.1.then(|| {
        let mut gw = vec![F::zero(); w.len()];
        if !geo.transposed {
            geo.meetings(|a, bi, wi| gw[wi] += xv[a] * gv[bi]);
        } else {
            geo.meetings(|a, bi, wi| gw[wi] += gv[a] * xv[bi]);
        }
        Tensor::from_shape_vec(w.raw_dim(), gw).expect("sizes match")
    });
    let gb = need.2.then(|| {
        let s = g.shape();
        Tensor::from_shape_vec(vec![s[1]], channel_sums(&gv, s[1], s[2] * s[3])).expect("sizes match")
    });
    (gx, gw, gb)
}

impl<F: Float> Graph<F> {
    /// `conv2d` with dilation and groups (the direct loops above), or
    /// `conv_transpose2d` when `transposed`.
    pub fn conv2d_general(&mut self, x: Var, w: Var, b: Option<Var>, transposed: bool, attrs: Attrs) -> Result<Var> {
        let (xs, ws, bs) = (self.value(x).shape(), self.value(w).shape(), b.map(|b| self.value(b).shape()));
        let geo = Geometry::new(transposed, xs, ws, bs, attrs)?;
        let value = forward(&geo, self.value(x), self.value(w), b.map(|b| self.value(b)));
        Ok(self.push(value, Op::ConvGeneral { x, w, b, geo }))
    }
}
