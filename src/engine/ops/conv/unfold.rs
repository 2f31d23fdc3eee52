//! Unfolding images into columns and folding columns back (`im2col`, `col2im`), with
//! the per-thread scratch they use: the data movement of the im2col convolution, apart
//! from its maths in `conv.rs`.

use std::mem::MaybeUninit;

use ndarray::ArrayView2;

use super::Geometry;
use crate::engine::Float;

/// The outputs `lo..hi` (of `count`) whose window offset `k` lands inside the input
/// (`0 <= o·stride + k - padding < size`); the others read padding.
#[inline]
pub(super) fn inside(count: usize, k: usize, stride: usize, padding: usize, size: usize) -> std::ops::Range<usize> {
    let lo = padding.saturating_sub(k).div_ceil(stride);
    let hi = (size + padding).saturating_sub(k).div_ceil(stride).min(count);
    lo.min(hi)..hi
}

/// One image unfolded into `cols` (`[C·kh·kw, OH·OW]`, row-major), zeros where the
/// window covers padding; every entry is written, so `cols` may start uninitialised.
/// `x` is the image's `[C, H, W]` values, row-major. Only copies, so the order of the
/// loops is free: each output row's in-bounds run is copied at once.
pub(super) fn im2col_into<'a, F: Float>(x: &[F], geo: &Geometry, cols: &'a mut [MaybeUninit<F>]) -> &'a [F] {
    let (l, ow, s) = (geo.l(), geo.ow, geo.stride);
    #[cfg(target_arch = "x86_64")]
    if s == 1 && F::DTYPE == crate::dtype::DType::F32 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present and F is f32, so the casts only relabel the type;
        // the kernel writes every value of `cols`.
        unsafe {
            let xs = std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len());
            simd::im2col_s1_f32(xs, geo, cols.as_mut_ptr().cast::<f32>());
            return std::slice::from_raw_parts(cols.as_ptr().cast::<F>(), cols.len());
        }
    }
    // All-zero bits are +0.0 in f32 and f64.
    let zero = |d: &mut [MaybeUninit<F>]| unsafe { std::ptr::write_bytes(d.as_mut_ptr(), 0, d.len()) };
    for (row, dst) in cols.chunks_exact_mut(l).enumerate() {
        let (ci, i, j) = (row / (geo.kh * geo.kw), (row / geo.kw) % geo.kh, row % geo.kw);
        let plane = &x[ci * geo.h * geo.w..(ci + 1) * geo.h * geo.w];
        let xs = inside(ow, j, s, geo.padding, geo.w);
        let ys = inside(geo.oh, i, s, geo.padding, geo.h);
        zero(&mut dst[..ys.start * ow]);
        zero(&mut dst[ys.end * ow..]);
        for oy in ys {
            let y = oy * s + i - geo.padding;
            let src = &plane[y * geo.w..(y + 1) * geo.w];
            let dst_row = &mut dst[oy * ow..(oy + 1) * ow];
            zero(&mut dst_row[..xs.start]);
            zero(&mut dst_row[xs.end..]);
            if s == 1 {
                let x0 = xs.start + j - geo.padding;
                let (from, to) = (&src[x0..x0 + xs.len()], &mut dst_row[xs.clone()]);
                // SAFETY: equal lengths, distinct buffers; F is Copy.
                unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr().cast::<F>(), from.len()) };
            } else {
                for ox in xs.clone() {
                    dst_row[ox].write(src[ox * s + j - geo.padding]);
                }
            }
        }
    }
    // SAFETY: every value of `cols` was written above.
    unsafe { std::slice::from_raw_parts(cols.as_ptr().cast::<F>(), cols.len()) }
}

/// `im2col` for stride 1 with AVX-512: each output row of a column row is one or two
/// masked loads (lanes outside the image read as zero) and stores, instead of a
/// `memset` and a `memcpy` call per run of 14 or 28 values.
#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    use super::{inside, Geometry};
    use std::arch::x86_64::*;

    /// A mask of the lowest `n` (at most 16) lanes.
    pub fn lanes(n: usize) -> u16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// For each kernel column j, a row of `len` values cut into 16-lane pieces: where
    /// each piece starts, the lanes it stores (inside `len`), the lanes whose partner
    /// index `first(start, j) + q` lies inside `0..limit`, and `first` itself. The row
    /// loops of im2col (partner: the input column) and of the fused input gradient
    /// (partner: the output column) are masked by these.
    pub fn lane_plan(
        kw: usize,
        len: usize,
        limit: usize,
        first: impl Fn(usize, usize) -> isize,
    ) -> Vec<Vec<(usize, u16, u16, isize)>> {
        (0..kw)
            .map(|j| {
                (0..len)
                    .step_by(16)
                    .map(|start| {
                        let store = lanes(len - start);
                        let first = first(start, j);
                        let (lo, hi) = ((-first).clamp(0, 16) as u32, (limit as isize - first).clamp(0, 16) as u32);
                        let valid = if hi > lo { (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16 } else { 0 };
                        (start, store, valid & store, first)
                    })
                    .collect()
            })
            .collect()
    }

    /// # Safety
    /// AVX-512F must be present; `x` is one image (`C·H·W`), `cols` has room for
    /// `K·L` values; stride 1.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col_s1_f32(x: &[f32], geo: &Geometry, cols: *mut f32) {
        let (l, ow, pad) = (geo.l(), geo.ow, geo.padding as isize);
        // The pieces of an output row per kernel column j; lane q of the piece at ox
        // reads input column ox + q + j - pad (an image value when inside 0..w).
        let plan = lane_plan(geo.kw, ow, geo.w, |ox, j| ox as isize + j as isize - pad);
        for row in 0..geo.k() {
            let (ci, i, j) = (row / (geo.kh * geo.kw), (row / geo.kw) % geo.kh, row % geo.kw);
            let plane = x.as_ptr().add(ci * geo.h * geo.w);
            let dst = cols.add(row * l);
            let ys = inside(geo.oh, i, 1, geo.padding, geo.h);
            for oy in 0..geo.oh {
                let out = dst.add(oy * ow);
                if ys.contains(&oy) {
                    let src = plane.add((oy + i - geo.padding) * geo.w);
                    for &(ox, store, valid, first) in &plan[j] {
                        // Masked-off lanes are not read, so the start may lie before the row.
                        let v = _mm512_maskz_loadu_ps(valid, src.wrapping_offset(first));
                        _mm512_mask_storeu_ps(out.add(ox), store, v);
                    }
                } else {
                    for &(ox, store, ..) in &plan[j] {
                        _mm512_mask_storeu_ps(out.add(ox), store, _mm512_setzero_ps());
                    }
                }
            }
        }
    }
}

/// `im2col` of one image into this thread's scratch buffer, handed to `f` as a
/// `[C·kh·kw, OH·OW]` view. The buffer is kept between calls, so the steady state
/// allocates nothing per image.
pub(super) fn with_cols<F: Float, R>(x: &[F], geo: &Geometry, f: impl FnOnce(ArrayView2<F>) -> R) -> R {
    with_scratch(geo.k() * geo.l(), |cols: &mut [F]| {
        // SAFETY: viewing initialised values as possibly uninitialised is always sound.
        let cols = unsafe { std::slice::from_raw_parts_mut(cols.as_mut_ptr().cast::<MaybeUninit<F>>(), cols.len()) };
        f(ArrayView2::from_shape((geo.k(), geo.l()), im2col_into(x, geo, cols)).expect("K×L"))
    })
}

thread_local! {
    /// Per-thread scratch for unfolded images, as 8-byte words (fits f32 and f64).
    static SCRATCH: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A scratch slice of `len` values of `F` (contents unspecified), reused across calls
/// on this thread. Taken out of the cell while in use, so a nested call gets its own.
pub(super) fn with_scratch<F: Float, R>(len: usize, f: impl FnOnce(&mut [F]) -> R) -> R {
    const { assert!(std::mem::size_of::<F>() <= 8 && std::mem::align_of::<F>() <= 8) };
    let mut buf = SCRATCH.with(|c| c.take());
    let words = (len * std::mem::size_of::<F>()).div_ceil(8);
    if buf.len() < words {
        buf.resize(words, 0);
    }
    // SAFETY: the words are initialised, suitably aligned for F and hold at least
    // `len` values of F; every bit pattern is a valid f32 or f64.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<F>(), len) };
    let out = f(slice);
    SCRATCH.with(|c| c.set(buf));
    out
}

/// ATen's col2im: adds every entry of `cols` (`[C·kh·kw, OH·OW]`) into the input pixel
/// it was read from, row by row of `cols` as before. Within one row and output row the
/// entries go to distinct pixels, so each pixel receives its contributions in the same
/// order as the entry-by-entry loop.
pub(super) fn col2im<F: Float>(cols: &[F], gx: &mut [F], geo: &Geometry) {
    let (l, ow, s) = (geo.l(), geo.ow, geo.stride);
    for (row, src) in cols.chunks_exact(l).enumerate() {
        let (ci, i, j) = (row / (geo.kh * geo.kw), (row / geo.kw) % geo.kh, row % geo.kw);
        let plane = &mut gx[ci * geo.h * geo.w..(ci + 1) * geo.h * geo.w];
        let xs = inside(ow, j, s, geo.padding, geo.w);
        for oy in inside(geo.oh, i, s, geo.padding, geo.h) {
            let y = oy * s + i - geo.padding;
            let dst = &mut plane[y * geo.w..(y + 1) * geo.w];
            let src_row = &src[oy * ow..(oy + 1) * ow];
            if s == 1 {
                let x0 = xs.start + j - geo.padding;
                for (d, &v) in dst[x0..x0 + xs.len()].iter_mut().zip(&src_row[xs.clone()]) {
                    *d += v;
                }
            } else {
                for ox in xs.clone() {
                    dst[ox * s + j - geo.padding] += src_row[ox];
                }
            }
        }
    }
}

/// `s` as f32 values when `F` is f32 (the implicit kernels are f32 only).
pub(super) fn as_f32<F: Float>(s: &[F]) -> Option<&[f32]> {
    // SAFETY: F is f32 when its dtype says so, so the cast only relabels the type.
    (F::DTYPE == crate::dtype::DType::F32).then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

pub(super) fn as_f32_mut<F: Float>(s: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    (F::DTYPE == crate::dtype::DType::F32).then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

