//! 2-D convolution with `torch.nn.functional.conv2d` semantics (cross-correlation, zero
//! padding, one stride and one padding for both axes).
//!
//! The arithmetic follows ATen's `slow_conv2d` (the CPU path for f64): each image is
//! unfolded into columns (`im2col`, rows ordered channel, kernel row, kernel column), the
//! product with the weight goes through the engine's sequential-k FMA `gemm`, and the
//! bias is added to the finished dot product, as BLAS does with `beta = 1`.

use crate::engine::faults::{self, Fault};
use ndarray::{Array2, ArrayView2, Axis, Ix4};

use super::gemm::gemm;
use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, padding: usize) -> Result<Var> {
        let (xs, ws, bs) = (self.value(x).shape(), self.value(w).shape(), b.map(|b| self.value(b).shape()));
        let geo = Geometry::new(xs, ws, bs, stride, padding)?;
        let value = forward(self.value(x), self.value(w), b.map(|b| self.value(b)), &geo);
        Ok(self.push(value, Op::Conv2d { x, w, b, stride, padding }))
    }
}

/// The sizes of one convolution, checked once.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    pub fn new(x: &[usize], w: &[usize], b: Option<&[usize]>, stride: usize, padding: usize) -> Result<Self> {
        let bad = |why: &str| {
            Error::Shape(format!("conv2d: input {x:?}, weight {w:?}, bias {b:?}, stride {stride}, padding {padding}: {why}"))
        };
        if x.len() != 4 || w.len() != 4 {
            return Err(bad("input must be [N,C,H,W] and weight [O,C,kh,kw]"));
        }
        if x[1] != w[1] {
            return Err(bad("input and weight channel counts differ"));
        }
        if let Some(b) = b {
            if b != [w[0]] {
                return Err(bad("bias must be [O]"));
            }
        }
        if stride == 0 {
            return Err(bad("stride must be positive"));
        }
        if w[2] == 0 || w[3] == 0 || x[2] + 2 * padding < w[2] || x[3] + 2 * padding < w[3] {
            return Err(bad("kernel is empty or larger than the padded input"));
        }
        Ok(Geometry {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: w[0],
            kh: w[2],
            kw: w[3],
            oh: (x[2] + 2 * padding - w[2]) / stride + 1,
            ow: (x[3] + 2 * padding - w[3]) / stride + 1,
            stride,
            padding,
        })
    }

    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn l(&self) -> usize {
        self.oh * self.ow
    }

    /// The input position that column entry (`row`, `col`) reads, if it is not padding.
    /// `row` enumerates (channel, kernel row, kernel column); `col` the output pixels.
    fn source(&self, row: usize, col: usize) -> Option<(usize, usize, usize)> {
        let (ci, i, j) = (row / (self.kh * self.kw), (row / self.kw) % self.kh, row % self.kw);
        let (oy, ox) = (col / self.ow, col % self.ow);
        let y = (oy * self.stride + i).checked_sub(self.padding).filter(|&y| y < self.h)?;
        let x = (ox * self.stride + j).checked_sub(self.padding).filter(|&x| x < self.w)?;
        Some((ci, y, x))
    }
}

/// One image unfolded into `[C·kh·kw, OH·OW]`, zeros where the window covers padding.
fn im2col<F: Float>(x: &Tensor<F>, n: usize, geo: &Geometry) -> Array2<F> {
    Array2::from_shape_fn((geo.k(), geo.l()), |(row, col)| match geo.source(row, col) {
        Some((ci, y, xx)) => x[[n, ci, y, xx]],
        None => F::zero(),
    })
}

fn weight_matrix<'a, F: Float>(w: &'a Tensor<F>, geo: &Geometry) -> ArrayView2<'a, F> {
    w.view().into_shape_with_order((geo.o, geo.k())).expect("checked [O,C,kh,kw]")
}

pub fn forward<F: Float>(x: &Tensor<F>, w: &Tensor<F>, b: Option<&Tensor<F>>, geo: &Geometry) -> Tensor<F> {
    let w2 = weight_matrix(w, geo);
    let mut out = Tensor::zeros(vec![geo.n, geo.o, geo.oh, geo.ow]);
    for n in 0..geo.n {
        let mut prod = gemm(w2, im2col(x, n, geo).view());
        if let Some(b) = b {
            for (mut row, &bias) in prod.axis_iter_mut(Axis(0)).zip(b.iter()) {
                row.mapv_inplace(|v| bias + v);
            }
        }
        let prod = prod.into_shape_with_order((geo.o, geo.oh, geo.ow)).expect("O×L");
        out.index_axis_mut(Axis(0), n).assign(&prod);
    }
    out
}

/// Gradients of input, weight and bias (only those asked for) given the upstream `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    g: &Tensor<F>,
    stride: usize,
    padding: usize,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let geo = Geometry::new(x.shape(), w.shape(), None, stride, padding).expect("checked in forward");
    let g4 = g.view().into_dimensionality::<Ix4>().expect("conv2d output is 4-D");
    let g_image = |n: usize| g4.index_axis(Axis(0), n).into_shape_with_order((geo.o, geo.l())).expect("O×L");

    // ATen's slow_conv2d_backward: grad_columns = Wᵀ·G per image, then col2im adds each
    // column entry into its input pixel, visiting kernel offsets in row-major order.
    let gx = need_x.then(|| {
        let w2 = weight_matrix(w, &geo);
        let mut gx = Tensor::zeros(x.raw_dim());
        for n in 0..geo.n {
            let cols = gemm(w2.t(), g_image(n));
            for ((row, col), &v) in cols.indexed_iter() {
                if let Some((ci, y, xx)) = geo.source(row, col) {
                    gx[[n, ci, y, xx]] += v;
                }
            }
        }
        gx
    });

    // ATen accumulates the per-image products into grad_weight (gemm with beta = 1).
    let gw = need_w.then(|| {
        let mut gw = Array2::<F>::zeros((geo.o, geo.k()));
        for n in 0..geo.n {
            let cols = im2col(x, n, &geo);
            gw += &gemm(g_image(n), cols.t());
        }
        let gw: Tensor<F> = gw.into_shape_with_order(w.raw_dim()).expect("O×K is the weight's size");
        if faults::on(Fault::ConvWeightGradFlipped) {
            // Flipped along both kernel axes: a true convolution's gradient.
            let mut flipped = gw.clone();
            flipped.invert_axis(Axis(2));
            flipped.invert_axis(Axis(3));
            return flipped.as_standard_layout().into_owned();
        }
        gw
    });

    let gb = need_b.then(|| {
        let mut gb = Tensor::zeros(vec![geo.o]);
        for n in 0..geo.n {
            let gn = g_image(n);
            for o in 0..geo.o {
                for &v in gn.row(o) {
                    gb[[o]] += v;
                }
            }
        }
        gb
    });
    (gx, gw, gb)
}
