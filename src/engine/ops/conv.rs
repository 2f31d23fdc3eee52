//! 2-D convolution with `torch.nn.functional.conv2d` semantics (cross-correlation, zero
//! padding, one stride and one padding for both axes).
//!
//! The arithmetic follows ATen's `slow_conv2d` (the CPU path for f64): each image is
//! unfolded into columns (`im2col`, rows ordered channel, kernel row, kernel column), the
//! product with the weight goes through the engine's sequential-k FMA `gemm`, and the
//! bias is added to the finished dot product, as BLAS does with `beta = 1`.
//!
//! For f32 with stride 1 on AVX-512 the same chains are computed by the implicit-GEMM
//! kernels in `implicit` (forward, input and weight gradient), which read the image or
//! the gradient in place instead of materialising the column matrix; unit tests below
//! pin them bit for bit to the im2col path, which f64 and other machines still take.
//! This file holds the maths and the choice of kernel; the data movement of the im2col
//! path (unfolding, folding back, scratch) is in `unfold`.

pub mod general;
#[cfg(target_arch = "x86_64")]
mod implicit;
mod unfold;

use unfold::{as_f32, as_f32_mut, col2im, im2col_into, with_cols, with_scratch};

use crate::engine::faults::{self, Fault};

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use super::elementwise::from_chunks;
use super::gemm::{gemm_into, gemm_into_uninit};
use super::reduce::channel_sums;
use crate::engine::{parallel, Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, padding: usize) -> Result<Var> {
        let (xs, ws, bs) = (self.value(x).shape(), self.value(w).shape(), b.map(|b| self.value(b).shape()));
        let geo = Geometry::new(xs, ws, bs, stride, padding)?;
        // The unfolded images are kept when the weight gradient will need them.
        let keep = self.requires_grad(w);
        let (value, cols) = forward_keeping(self.value(x), self.value(w), b.map(|b| self.value(b)), &geo, keep);
        Ok(self.push_saving(value, Op::Conv2d { x, w, b, stride, padding }, cols))
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
            Error::Shape(format!(
                "conv2d: input {x:?}, weight {w:?}, bias {b:?}, stride {stride}, padding {padding}: {why}"
            ))
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
}

thread_local! {
    /// Per-thread `Gᵀ` of one image for the implicit weight-gradient kernel.
    static GRAD_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn weight_matrix<'a, F: Float>(w: &'a Tensor<F>, geo: &Geometry) -> ArrayView2<'a, F> {
    w.view().into_shape_with_order((geo.o, geo.k())).expect("checked [O,C,kh,kw]")
}

/// The images are independent, so they are shared between the cores (each image's
/// arithmetic is unchanged; only which thread does it changes). Each product is written
/// straight into the image's part of the output, then the bias is added to it.
pub fn forward<F: Float>(x: &Tensor<F>, w: &Tensor<F>, b: Option<&Tensor<F>>, geo: &Geometry) -> Tensor<F> {
    forward_keeping(x, w, b, geo, false).0
}

/// `forward`, also returning every image's unfolded columns (`[N][C·kh·kw][OH·OW]`)
/// when `keep` (an empty vector otherwise): memory for one less `im2col` per image in
/// the backward pass (7.8 MB for the CNN's conv2 at batch 25).
pub fn forward_keeping<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    b: Option<&Tensor<F>>,
    geo: &Geometry,
    keep: bool,
) -> (Tensor<F>, Vec<F>) {
    let w2 = weight_matrix(w, geo);
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let bias: Option<Vec<F>> = b.map(|b| b.iter().copied().collect());
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), true) = (as_f32(x), implicit::available(geo)) {
        // Nothing to keep: the weight gradient reads the image again the same way.
        let w_std = w2.as_standard_layout();
        let wpack = implicit::pack_weights(as_f32(w_std.as_slice().expect("standard layout")).expect("f32"), geo);
        let bias_f = bias.as_deref().map(|b| as_f32(b).expect("f32"));
        let (image_in, image_out) = (geo.c * geo.h * geo.w, geo.o * geo.l());
        let out = from_chunks(ndarray::IxDyn(&[geo.n, geo.o, geo.oh, geo.ow]), image_out, |start, dst| {
            let n = start / image_out.max(1);
            with_scratch(implicit::padded_len(geo), |xpad: &mut [f32]| {
                implicit::pad_image(&xf[n * image_in..(n + 1) * image_in], geo, xpad);
                // SAFETY: AVX-512F checked by `available`; the buffers are sized for `geo`
                // and the kernel writes every value of `dst`.
                unsafe { implicit::forward_image(xpad, &wpack, bias_f, geo, dst.as_mut_ptr().cast()) };
            });
        });
        return (out, Vec::new());
    }
    let (image_in, image_out, image_cols) = (geo.c * geo.h * geo.w, geo.o * geo.l(), geo.k() * geo.l());
    // Neither the output nor the kept columns are zeroed first: the products and
    // `im2col_into` write every value (zeroing 10 MB cost more than the unfolding saved).
    let mut kept: Vec<F> = Vec::with_capacity(if keep { geo.n * image_cols } else { 0 });
    let kept_at = parallel::SendPtr(kept.as_mut_ptr());
    let shape = ndarray::IxDyn(&[geo.n, geo.o, geo.oh, geo.ow]);
    let out = from_chunks(shape, image_out, |start, dst| {
        let n = start / image_out.max(1);
        let image = &x[n * image_in..(n + 1) * image_in];
        if keep {
            // SAFETY: image n's columns, inside the capacity and disjoint between tasks;
            // `kept` outlives the call.
            let spare = unsafe { std::slice::from_raw_parts_mut(kept_at.get().add(n * image_cols).cast(), image_cols) };
            let cols = ArrayView2::from_shape((geo.k(), geo.l()), im2col_into(image, geo, spare)).expect("K×L");
            gemm_into_uninit(w2, cols, &mut *dst);
        } else {
            with_cols(image, geo, |cols| {
                gemm_into_uninit(w2, cols, &mut *dst);
            });
        }
        // SAFETY: the product wrote every value of `dst`.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<F>(), dst.len()) };
        if let Some(bias) = &bias {
            for (row, &bo) in dst.chunks_exact_mut(geo.l()).zip(bias) {
                row.iter_mut().for_each(|d| *d = bo + *d);
            }
        }
    });
    if keep {
        // SAFETY: every image's columns were written above.
        unsafe { kept.set_len(geo.n * image_cols) };
    }
    (out, kept)
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
    backward_with_cols(x, w, g, stride, padding, (need_x, need_w, need_b), None)
}

/// `backward`, reading the unfolded images from `cols` (as `forward_keeping` returns
/// them) instead of unfolding `x` again, when given.
pub fn backward_with_cols<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    g: &Tensor<F>,
    stride: usize,
    padding: usize,
    (need_x, need_w, need_b): (bool, bool, bool),
    cols: Option<&[F]>,
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let geo = Geometry::new(x.shape(), w.shape(), None, stride, padding).expect("checked in forward");
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    let (image_in, image_out) = (geo.c * geo.h * geo.w, geo.o * geo.l());
    let g_image =
        |n: usize| ArrayView2::from_shape((geo.o, geo.l()), &gs[n * image_out..(n + 1) * image_out]).expect("O×L");
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");

    // ATen's slow_conv2d_backward: grad_columns = Wᵀ·G per image, then col2im adds each
    // column entry into its input pixel, visiting kernel offsets in row-major order (fused
    // into one kernel for f32 on AVX-512).
    let gx = need_x.then(|| {
        let mut gx = vec![F::zero(); x.len()];
        #[cfg(target_arch = "x86_64")]
        if let (Some(gf), true) = (as_f32(gs), implicit::available(&geo)) {
            let w_std = w.as_standard_layout();
            let wpack = implicit::pack_weights_for_input_grad(as_f32(w_std.as_slice().expect("standard layout")).expect("f32"), &geo);
            parallel::for_each_chunk(&mut gx, image_in.max(1), |n, dst| {
                // SAFETY: AVX-512F checked by `available`; the buffers are sized for `geo`.
                unsafe { implicit::input_grad_image(&gf[n * image_out..(n + 1) * image_out], &wpack, &geo, as_f32_mut(dst).expect("f32")) };
            });
            return Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match");
        }
        // Wᵀ is made row-major once, so that every image's product reads it in place
        // instead of repacking the transposed view.
        let wt = weight_matrix(w, &geo).t().as_standard_layout().into_owned();
        parallel::for_each_chunk(&mut gx, image_in.max(1), |n, dst| {
            with_scratch(geo.k() * geo.l(), |cols: &mut [F]| {
                gemm_into(
                    wt.view(),
                    g_image(n),
                    ArrayViewMut2::from_shape((geo.k(), geo.l()), &mut *cols).expect("K×L"),
                );
                col2im(cols, dst, &geo);
            });
        });
        Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
    });

    // ATen accumulates the per-image products into grad_weight (gemm with beta = 1):
    // each product is finished on its own, then added in image order. The products are
    // computed in parallel and the sum is still taken in that order.
    let gw = need_w.then(|| {
        // Each product is computed transposed, `colsᵀ`-free: (G·colsᵀ)ᵀ = cols·Gᵀ has
        // the same products in the same order per entry, and reads the big `cols` in
        // place. The sum over images and one transpose at the end give grad_weight.
        let per_image = geo.o * geo.k();
        let mut prods = vec![F::zero(); geo.n * per_image];
        parallel::for_each_chunk(&mut prods, per_image.max(1), |n, dst| {
            #[cfg(target_arch = "x86_64")]
            if let (Some(xf), Some(gf), true) = (as_f32(xs), as_f32(gs), implicit::weight_grad_available(&geo)) {
                let dst = as_f32_mut(dst).expect("f32");
                return with_scratch(implicit::padded_len(&geo), |xpad: &mut [f32]| {
                    implicit::pad_image(&xf[n * image_in..(n + 1) * image_in], &geo, xpad);
                    GRAD_T.with_borrow_mut(|gt| {
                        implicit::transpose_grad(&gf[n * image_out..(n + 1) * image_out], &geo, gt);
                        // SAFETY: `weight_grad_available` checked AVX-512F and the shape;
                        // the buffers are sized for `geo`.
                        unsafe { implicit::weight_grad_image(xpad, gt, &geo, dst) };
                    });
                });
            }
            let mut product = |c: ArrayView2<F>| {
                gemm_into(c, g_image(n).t(), ArrayViewMut2::from_shape((geo.k(), geo.o), dst).expect("K×O"));
            };
            match cols {
                Some(all) => {
                    let size = geo.k() * geo.l();
                    product(ArrayView2::from_shape((geo.k(), geo.l()), &all[n * size..(n + 1) * size]).expect("K×L"))
                }
                None => with_cols(&xs[n * image_in..(n + 1) * image_in], &geo, product),
            }
        });
        // Entries are independent, so they are split between the cores; each entry still
        // adds its images in order.
        let mut sum_t = vec![F::zero(); per_image];
        parallel::for_each_chunk(&mut sum_t, 1024, |part, acc| {
            let start = part * 1024;
            for p in prods.chunks_exact(per_image.max(1)) {
                acc.iter_mut().zip(&p[start..]).for_each(|(acc, &v)| *acc += v);
            }
        });
        let sum_t = ArrayView2::from_shape((geo.k(), geo.o), &sum_t).expect("K×O");
        let gw: Vec<F> = sum_t.t().iter().copied().collect();
        let gw = Tensor::from_shape_vec(w.raw_dim(), gw).expect("O×K is the weight's size");
        if faults::on(Fault::ConvWeightGradFlipped) {
            // Flipped along both kernel axes: a true convolution's gradient.
            let mut flipped = gw.clone();
            flipped.invert_axis(Axis(2));
            flipped.invert_axis(Axis(3));
            return flipped.as_standard_layout().into_owned();
        }
        gw
    });
    // Each channel's sum runs over images, then positions, one add at a time.
    let gb = need_b.then(|| {
        let gb = channel_sums(gs, (geo.n, geo.o, geo.l()), |_, v: F| v);
        Tensor::from_shape_vec(vec![geo.o], gb).expect("one per channel")
    });
    (gx, gw, gb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    /// The implicit-GEMM kernels against `im2col` + `gemm`, bit for bit: forward with
    /// bias, the input gradient (against `gemm` + `col2im`) and the transposed
    /// weight-gradient product, over channel counts that do
    /// and do not fill a register block, widths around 16, kernels 3 and 5.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn implicit_kernels_match_im2col_and_gemm() {
        use super::implicit;
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 31) % 201) as f32 / 37.0 - 2.7;
        // (channels, height, width, outputs, kernel height, kernel width, padding): the CNN's
        // two layers, then remainders of the register blocks, padding beyond k - 1, a
        // non-square kernel, a one-column output, an image narrower than the kernel, more
        // than 32 outputs (no implicit weight gradient there).
        for &(c, h, w, o, kh, kw, pad) in &[
            (1, 28, 28, 16, 5, 5, 2),
            (16, 14, 14, 32, 5, 5, 2),
            (3, 9, 17, 5, 3, 3, 1),
            (2, 6, 20, 20, 3, 3, 0),
            (4, 5, 33, 12, 5, 5, 3),
            (9, 7, 6, 3, 3, 3, 3),
            (2, 8, 11, 17, 2, 5, 1),
            (3, 4, 1, 4, 3, 3, 1),
            (2, 3, 2, 6, 5, 5, 2),
            (5, 6, 7, 40, 3, 3, 1),
        ] {
            let geo = Geometry::new(&[1, c, h, w], &[o, c, kh, kw], Some(&[o]), 1, pad).unwrap();
            if !implicit::available(&geo) {
                return;
            }
            let x: Vec<f32> = (0..c * h * w).map(|i| value(i, 1)).collect();
            let wt: Vec<f32> = (0..o * geo.k()).map(|i| value(i, 2)).collect();
            let bias: Vec<f32> = (0..o).map(|i| value(i, 3)).collect();
            let g: Vec<f32> = (0..o * geo.l()).map(|i| value(i, 4)).collect();
            let mut cols = vec![MaybeUninit::new(0f32); geo.k() * geo.l()];
            let cols = ArrayView2::from_shape((geo.k(), geo.l()), im2col_into(&x, &geo, &mut cols)).unwrap().to_owned();
            let w2 = ArrayView2::from_shape((o, geo.k()), &wt).unwrap();
            let g2 = ArrayView2::from_shape((o, geo.l()), &g).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

            let mut expected = super::super::gemm::gemm(w2, cols.view());
            for (mut row, &b) in expected.rows_mut().into_iter().zip(&bias) {
                row.iter_mut().for_each(|d| *d = b + *d);
            }
            let mut xpad = vec![0f32; implicit::padded_len(&geo)];
            implicit::pad_image(&x, &geo, &mut xpad);
            let wpack = implicit::pack_weights(&wt, &geo);
            let mut out = vec![f32::NAN; o * geo.l()];
            // SAFETY: AVX-512F checked by `available`; buffers sized for `geo`.
            unsafe { implicit::forward_image(&xpad, &wpack, Some(&bias), &geo, out.as_mut_ptr()) };
            assert_eq!(bits(expected.as_slice().unwrap()), bits(&out), "forward {c}x{h}x{w}, {o} out, kernel {kh}x{kw}, padding {pad}");

            let mut cols_dx = super::super::gemm::gemm(w2.t(), g2);
            let mut expected_dx = vec![0f32; c * h * w];
            col2im(cols_dx.as_slice_mut().unwrap(), &mut expected_dx, &geo);
            let mut gx = vec![f32::NAN; c * h * w];
            let wpack_dx = implicit::pack_weights_for_input_grad(&wt, &geo);
            // SAFETY: AVX-512F checked by `available`; buffers sized for `geo`.
            unsafe { implicit::input_grad_image(&g, &wpack_dx, &geo, &mut gx) };
            assert_eq!(bits(&expected_dx), bits(&gx), "input grad {c}x{h}x{w}, {o} out, kernel {kh}x{kw}, padding {pad}");

            if implicit::weight_grad_available(&geo) {
                let expected = super::super::gemm::gemm(cols.view(), g2.t());
                let mut gt = Vec::new();
                implicit::transpose_grad(&g, &geo, &mut gt);
                let mut prods = vec![f32::NAN; geo.k() * o];
                // SAFETY: checked by `weight_grad_available`; buffers sized for `geo`.
                unsafe { implicit::weight_grad_image(&xpad, &gt, &geo, &mut prods) };
                assert_eq!(bits(expected.as_slice().unwrap()), bits(&prods), "weight grad {c}x{h}x{w}, {o} out, kernel {kh}x{kw}, padding {pad}");
            }
        }
    }
}
