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
use crate::models::program::pooled_len;

impl<F: Float> Graph<F> {
    pub fn max_pool2d(&mut self, x: Var, kernel: usize) -> Result<Var> {
        let (value, argmax) = forward(self.value(x), kernel)?;
        Ok(self.push(value, Op::MaxPool2d { x, argmax: argmax.into(), window: [kernel, kernel, 0] }))
    }

    /// Max-pooling with any stride and padding (PyTorch's `max_pool2d`, floor mode).
    /// Window = stride without padding takes the fast kernels above.
    pub fn max_pool2d_with(&mut self, x: Var, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        self.max_pool2d_mode(x, kernel, stride, padding, false)
    }

    /// `max_pool2d_with` in floor or ceil mode (`ceil_mode`: PyTorch's output size,
    /// the extra windows clipped to the image).
    pub fn max_pool2d_mode(&mut self, x: Var, kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> Result<Var> {
        let s = self.value(x).shape();
        let same_as_floor = !ceil_mode
            || s.len() == 4 && (2..4).all(|d| pooled_len(s[d], kernel, stride.max(1), padding, true) == pooled_len(s[d], kernel, stride.max(1), padding, false));
        if stride == kernel && padding == 0 && same_as_floor {
            return self.max_pool2d(x, kernel);
        }
        let (value, argmax) = forward_strided(self.value(x), kernel, stride, padding, ceil_mode)?;
        Ok(self.push(value, Op::MaxPool2d { x, argmax: argmax.into(), window: [kernel, stride, padding] }))
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
            #[cfg(target_arch = "x86_64")]
            2 if F::DTYPE == crate::dtype::DType::F32 && std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: AVX-512F is present; F is f32 (checked above), so the casts
                // only relabel the element type.
                unsafe {
                    let cast = |s: &[F]| std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len());
                    let out = std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len());
                    simd::pool_plane_2x2_f32(cast(input), w, ow, out, argmax, base)
                }
            }
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

/// The 2×2 plane with AVX-512, sixteen windows at a time: the even and odd columns of
/// both rows are separated with permutes, and each window runs the same three
/// compare-and-select steps as `pool_plane_2x2` (`v > best`, ordered, or `v` NaN), lane
/// by lane, so the values and indices are the same.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F must be present; `input` holds the plane (`2·oh` rows of `w`), `out` and
    /// `argmax` its `oh·ow` outputs.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pool_plane_2x2_f32(input: &[f32], w: usize, ow: usize, out: &mut [f32], argmax: &mut [usize], base: usize) {
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        let lanes = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
        let oh = out.len() / ow.max(1);
        for oy in 0..oh {
            let (r0, r1) = (input.as_ptr().add(2 * oy * w), input.as_ptr().add((2 * oy + 1) * w));
            let first = (base + 2 * oy * w) as i64;
            let mut ox = 0;
            while ox < ow {
                let n = (ow - ox).min(16);
                // Input values 2·ox .. 2·ox + 2n of each row, as two vectors of 16.
                let (lo, hi) = ((2 * n).min(16) as u32, (2 * n).saturating_sub(16) as u32);
                let (m_lo, m_hi) = (((1u64 << lo) - 1) as u16, ((1u64 << hi) - 1) as u16);
                let load = |r: *const f32| {
                    let (a, b) = (_mm512_maskz_loadu_ps(m_lo, r.add(2 * ox)), _mm512_maskz_loadu_ps(m_hi, r.add(2 * ox + 16)));
                    (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
                };
                let ((t0, t1), (b0, b1)) = (load(r0), load(r1));
                let mut best = t0;
                let mut pos = _mm512_setzero_si512();
                for (v, p) in [(t1, 1), (b0, w as i32), (b1, w as i32 + 1)] {
                    let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    best = _mm512_mask_blend_ps(take, best, v);
                    pos = _mm512_mask_blend_epi32(take, pos, _mm512_set1_epi32(p));
                }
                let m_out = ((1u32 << n) - 1) as u16;
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(oy * ow + ox), m_out, best);
                // Flat indices: first + 2·(ox + lane) + pos, as 64-bit lanes in two halves.
                let start = _mm512_add_epi64(_mm512_set1_epi64(first + 2 * ox as i64), lanes);
                let dst = argmax.as_mut_ptr().add(oy * ow + ox) as *mut i64;
                let halves = [_mm512_castsi512_si256(pos), _mm512_extracti64x4_epi64::<1>(pos)];
                for (h, half) in halves.into_iter().enumerate() {
                    let idx = _mm512_add_epi64(start, _mm512_add_epi64(_mm512_cvtepi32_epi64(half), _mm512_set1_epi64(16 * h as i64)));
                    let m = (m_out >> (8 * h)) as u8;
                    _mm512_mask_storeu_epi64(dst.add(8 * h), m, idx);
                }
                ox += n;
            }
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

/// The reference form of the forward: every window scanned in row-major order, padding
/// as -inf (never taken: a window always holds a real entry when padding <= kernel/2).
pub fn forward_strided<F: Float>(x: &Tensor<F>, kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> Result<(Tensor<F>, Vec<usize>)> {
    let s = x.shape();
    if s.len() != 4 || kernel == 0 || stride == 0 || 2 * padding > kernel || s[2] + 2 * padding < kernel || s[3] + 2 * padding < kernel {
        return Err(Error::Shape(format!(
            "max_pool2d: input {s:?} with kernel {kernel}, stride {stride}, padding {padding}: need [N,C,H,W], kernel and stride >= 1, padding <= kernel/2 and H, W + 2·padding >= kernel"
        )));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let len = |l: usize| pooled_len(l, kernel, stride, padding, ceil_mode).expect("checked above");
    let (oh, ow) = (len(h), len(w));
    let data = x.as_standard_layout();
    let data = data.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(n * c * oh * ow);
    let mut argmax = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let base = plane * h * w;
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (F::neg_infinity(), usize::MAX);
                for i in 0..kernel {
                    let y = (oy * stride + i) as isize - padding as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for j in 0..kernel {
                        let xx = (ox * stride + j) as isize - padding as isize;
                        if xx < 0 || xx >= w as isize {
                            continue;
                        }
                        let idx = base + y as usize * w + xx as usize;
                        let v = data[idx];
                        // ATen: `val > maxval || isnan(val)` from the first real entry.
                        if at == usize::MAX || v > best || v.is_nan() {
                            (best, at) = (v, idx);
                        }
                    }
                }
                out.push(best);
                argmax.push(at);
            }
        }
    }
    Ok((Tensor::from_shape_vec(vec![n, c, oh, ow], out).expect("sizes match"), argmax))
}

/// `window`: kernel, stride and padding (only the fault below needs them).
pub fn backward<F: Float>(x: &Tensor<F>, argmax: &Arc<[usize]>, window: [usize; 3], g: &Tensor<F>) -> Tensor<F> {
    if faults::on(Fault::MaxPoolGradToAllTies) {
        return backward_to_all_ties(x, argmax, window, g);
    }
    let s = x.shape();
    let (plane_in, plane_out) = ((s[2] * s[3]).max(1), (g.shape()[2] * g.shape()[3]).max(1));
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    // Each output's recorded input lies in its own plane, so planes are independent;
    // each task zeroes its plane (while it is in cache) and adds the gradients in.
    super::elementwise::from_chunks(x.raw_dim(), plane_in, |start, dst| {
        let p = start / plane_in;
        // SAFETY: all-zero bits are +0.0; every value is written before it is read.
        unsafe { std::ptr::write_bytes(dst.as_mut_ptr(), 0, dst.len()) };
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<F>(), dst.len()) };
        let range = p * plane_out..(p + 1) * plane_out;
        for (&at, &gv) in argmax[range.clone()].iter().zip(&gs[range]) {
            dst[at - p * plane_in] += gv;
        }
    })
}

/// The `MaxPoolGradToAllTies` fault: every position of the window equal to its maximum
/// gets the whole gradient.
fn backward_to_all_ties<F: Float>(x: &Tensor<F>, argmax: &Arc<[usize]>, [k, stride, padding]: [usize; 3], g: &Tensor<F>) -> Tensor<F> {
    let s = x.shape();
    let (h, w) = (s[2], s[3]);
    let (oh, ow) = (g.shape()[2], g.shape()[3]);
    let data = x.as_standard_layout();
    let data = data.as_slice().expect("standard layout");
    let g = g.as_standard_layout();
    let mut gx = vec![F::zero(); x.len()];
    for (o, (&at, &gv)) in argmax.iter().zip(g.iter()).enumerate() {
        let plane = o / (oh * ow);
        let (oy, ox) = ((o % (oh * ow)) / ow, o % ow);
        // The window's rows and columns inside the image (padding holds no input).
        let rows = (oy * stride).saturating_sub(padding)..(oy * stride + k).saturating_sub(padding).min(h);
        for i in rows {
            for j in (ox * stride).saturating_sub(padding)..(ox * stride + k).saturating_sub(padding).min(w) {
                let idx = plane * h * w + i * w + j;
                if data[idx] == data[at] {
                    gx[idx] += gv;
                }
            }
        }
    }
    Tensor::from_shape_vec(x.raw_dim(), gx).expect("sizes match")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 2×2 kernel against the scalar one, value and index, on planes with
    /// ties, NaN, −∞ and widths around the vector length.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_2x2_matches_the_scalar_kernel() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let palette = [0.0f32, 1.0, -1.0, 1.0, f32::NAN, f32::NEG_INFINITY, 2.5, 0.0];
        for (case, &(h, w)) in [(2, 2), (4, 6), (6, 28), (8, 34), (4, 64), (2, 66), (14, 14), (28, 28)].iter().enumerate() {
            let input: Vec<f32> = (0..h * w).map(|i| palette[(i * 7 + i / 3 + case) % palette.len()]).collect();
            let (oh, ow) = (h / 2, w / 2);
            let (mut v1, mut a1) = (vec![0f32; oh * ow], vec![0usize; oh * ow]);
            let (mut v2, mut a2) = (vec![0f32; oh * ow], vec![0usize; oh * ow]);
            pool_plane_2x2(&input, w, ow, &mut v1, &mut a1, 1000);
            // SAFETY: AVX-512F was detected above.
            unsafe { simd::pool_plane_2x2_f32(&input, w, ow, &mut v2, &mut a2, 1000) };
            assert_eq!(a1, a2, "{h}x{w}: indices");
            assert_eq!(v1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), v2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{h}x{w}");
        }
    }
}
