//! Implicit-GEMM convolution for f32, stride 1, with AVX-512: the same products as
//! `im2col` followed by the engine's `gemm`, with the same FMA chain per output entry,
//! but the column matrix is never written. Its entries are read straight from a
//! zero-padded copy of the image (20 KB for the CNN's conv2, in L1) where `im2col` would
//! write 313 KB per image and the product read it back.
//!
//! Why the bits cannot move: `im2col` puts `+0.0` where a window covers padding, and the
//! padded copy holds `+0.0` there too, so every FMA sees the same two operands in the
//! same k order, starting from `+0.0`; lanes beyond the output's edge compute values
//! that are never stored. `tests` below check both kernels against the im2col path bit
//! for bit.

use std::arch::x86_64::*;

use super::unfold::simd::{lane_plan, lanes};
use super::Geometry;

/// Output channels per register block of the forward kernel.
const MR: usize = 8;

/// Whether the kernels cover this convolution and this machine.
pub fn available(geo: &Geometry) -> bool {
    // Empty channel counts are left to the im2col path (nothing to pack or transpose).
    geo.stride == 1 && geo.c > 0 && geo.o > 0 && std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether `weight_grad_image` covers this convolution (beyond `available`).
pub fn weight_grad_available(geo: &Geometry) -> bool {
    available(geo) && matches!(geo.kw, 3 | 5) && geo.o <= 32
}

/// Values in the padded copy of one image (with slack for the widest vector read).
pub fn padded_len(geo: &Geometry) -> usize {
    geo.c * (geo.h + 2 * geo.padding) * (geo.w + 2 * geo.padding) + 32
}

/// Copies one `[C, H, W]` image into `dst` (`padded_len` values) with `padding` zeros
/// around each plane and zeros in the slack.
pub fn pad_image(x: &[f32], geo: &Geometry, dst: &mut [f32]) {
    let (pw, ph, p) = (geo.w + 2 * geo.padding, geo.h + 2 * geo.padding, geo.padding);
    dst.fill(0.0);
    for c in 0..geo.c {
        for y in 0..geo.h {
            let from = &x[(c * geo.h + y) * geo.w..][..geo.w];
            dst[(c * ph + y + p) * pw + p..][..geo.w].copy_from_slice(from);
        }
    }
}

/// The weights `[O, K]` rearranged for the forward kernel: blocks of `MR` output
/// channels, each `[K][MR]` (zeros past the last channel).
pub fn pack_weights(w: &[f32], geo: &Geometry) -> Vec<f32> {
    let k = geo.k();
    let blocks = geo.o.div_ceil(MR);
    let mut packed = vec![0.0; blocks * k * MR];
    for (o, row) in w.chunks_exact(k).enumerate() {
        let block = &mut packed[(o / MR) * k * MR..][..k * MR];
        for (kk, &v) in row.iter().enumerate() {
            block[kk * MR + o % MR] = v;
        }
    }
    packed
}

/// One image's output `[O, OH·OW]` into `out`, `bias[o] + Σ_k w[o][k]·col[k][l]`:
/// blocks of 8 channels × two 16-wide pieces of output rows in 16 registers, k walked
/// as (channel, kernel row, kernel column) like `im2col`'s rows.
///
/// # Safety
/// AVX-512F must be present (`available`); `xpad` comes from `pad_image`, `wpack` from
/// `pack_weights` for this geometry; `out` has room for `O·OH·OW` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn forward_image(xpad: &[f32], wpack: &[f32], bias: Option<&[f32]>, geo: &Geometry, out: *mut f32) {
    let (pw, ph, k, l, ow) = (geo.w + 2 * geo.padding, geo.h + 2 * geo.padding, geo.k(), geo.l(), geo.ow);
    assert!(xpad.len() >= padded_len(geo) && wpack.len() >= geo.o.div_ceil(MR) * k * MR);
    // The output as 16-wide pieces of rows: (output row, first column, lanes stored).
    let pieces: Vec<(usize, usize, u16)> = (0..geo.oh)
        .flat_map(|oy| (0..ow).step_by(16).map(move |x0| (oy, x0, lanes(ow - x0))))
        .collect();
    // Where row k of the column matrix starts in the padded image: one flat loop over
    // k keeps the 16 accumulators in registers (nested loops made LLVM spill them).
    let starts: Vec<usize> = (0..geo.c)
        .flat_map(|c| (0..geo.kh).flat_map(move |i| (0..geo.kw).map(move |j| (c * ph + i) * pw + j)))
        .collect();
    for block in 0..geo.o.div_ceil(MR) {
        let a = wpack.as_ptr().add(block * k * MR);
        for pair in pieces.chunks(2) {
            // An odd last piece is computed twice and stored once.
            let (p0, p1) = (pair[0], pair[pair.len() - 1]);
            let (x0, x1) = (xpad.as_ptr().add(p0.0 * pw + p0.1), xpad.as_ptr().add(p1.0 * pw + p1.1));
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for (kk, &start) in starts.iter().enumerate() {
                let b0 = _mm512_loadu_ps(x0.add(start));
                let b1 = _mm512_loadu_ps(x1.add(start));
                let ak = a.add(kk * MR);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ar = _mm512_set1_ps(*ak.add(r));
                    acc_r[0] = _mm512_fmadd_ps(ar, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(ar, b1, acc_r[1]);
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(geo.o - block * MR) {
                let o = block * MR + r;
                for (&(oy, x0, store), &v) in pair.iter().zip(acc_r) {
                    // As the im2col path: the bias is added to the finished dot product.
                    let v = match bias {
                        Some(b) => _mm512_add_ps(_mm512_set1_ps(b[o]), v),
                        None => v,
                    };
                    _mm512_mask_storeu_ps(out.add(o * l + oy * ow + x0), store, v);
                }
            }
        }
    }
}

/// `G` of one image (`[O, L]`) transposed to `[L][16·NV]` (zeros past channel O), the
/// weight-gradient kernel's right operand.
pub fn transpose_grad(g: &[f32], geo: &Geometry, dst: &mut Vec<f32>) {
    let (l, width) = (geo.l(), geo.o.div_ceil(16) * 16);
    dst.clear();
    dst.resize(l * width, 0.0);
    // Written in order (16 rows of `G` read side by side), not scattered by row.
    for (p, out) in dst.chunks_exact_mut(width).enumerate() {
        for (o, d) in out[..geo.o].iter_mut().enumerate() {
            *d = g[o * l + p];
        }
    }
}

/// One image's weight-gradient product, transposed: `dst[k][o] = Σ_l col[k][l]·G[o][l]`
/// (`[K, O]`, row-major), each entry's chain over l in increasing order like the
/// engine's `gemm` of `cols · Gᵀ`.
///
/// # Safety
/// `weight_grad_available(geo)`; `xpad` from `pad_image`, `gt` from `transpose_grad`,
/// `dst` has `K·O` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn weight_grad_image(xpad: &[f32], gt: &[f32], geo: &Geometry, dst: &mut [f32]) {
    assert!(xpad.len() >= padded_len(geo) && gt.len() >= geo.l() * geo.o.div_ceil(16) * 16);
    assert!(dst.len() >= geo.k() * geo.o && weight_grad_available(geo));
    match (geo.kw, geo.o.div_ceil(16)) {
        (3, 1) => weight_grad_rows::<3, 1>(xpad, gt, geo, dst),
        (3, 2) => weight_grad_rows::<3, 2>(xpad, gt, geo, dst),
        (5, 1) => weight_grad_rows::<5, 1>(xpad, gt, geo, dst),
        (5, 2) => weight_grad_rows::<5, 2>(xpad, gt, geo, dst),
        _ => unreachable!("checked by weight_grad_available"),
    }
}

/// The rows of `dst` come in runs of `KW` (one channel and kernel row, every kernel
/// column); two runs share a register block, so a step of l costs `NV` loads of `Gᵀ`,
/// `2·KW` broadcasts from the padded image and `2·KW·NV` FMAs.
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_rows<const KW: usize, const NV: usize>(xpad: &[f32], gt: &[f32], geo: &Geometry, dst: &mut [f32]) {
    let runs = geo.c * geo.kh;
    let mut run = 0;
    while run < runs {
        if run + 1 < runs {
            weight_grad_block::<KW, NV, 2>(xpad, gt, geo, dst, run);
            run += 2;
        } else {
            weight_grad_block::<KW, NV, 1>(xpad, gt, geo, dst, run);
            run += 1;
        }
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weight_grad_block<const KW: usize, const NV: usize, const RUNS: usize>(
    xpad: &[f32],
    gt: &[f32],
    geo: &Geometry,
    dst: &mut [f32],
    first_run: usize,
) {
    let (pw, ph, width) = (geo.w + 2 * geo.padding, geo.h + 2 * geo.padding, NV * 16);
    // Where each run's window starts in the padded image: channel c, kernel row i.
    let base: [*const f32; RUNS] = std::array::from_fn(|q| {
        let (c, i) = ((first_run + q) / geo.kh, (first_run + q) % geo.kh);
        xpad.as_ptr().add((c * ph + i) * pw)
    });
    let mut acc = [[[_mm512_setzero_ps(); NV]; KW]; RUNS];
    let mut b = gt.as_ptr();
    for oy in 0..geo.oh {
        for ox in 0..geo.ow {
            let at = oy * pw + ox;
            let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(v * 16)));
            for q in 0..RUNS {
                for j in 0..KW {
                    let a = _mm512_set1_ps(*base[q].add(at + j));
                    for v in 0..NV {
                        acc[q][j][v] = _mm512_fmadd_ps(a, bv[v], acc[q][j][v]);
                    }
                }
            }
            b = b.add(width);
        }
    }
    for (q, acc_q) in acc.iter().enumerate() {
        for (j, acc_j) in acc_q.iter().enumerate() {
            let row = dst.as_mut_ptr().add(((first_run + q) * KW + j) * geo.o);
            for (v, &val) in acc_j.iter().enumerate() {
                _mm512_mask_storeu_ps(row.add(v * 16), lanes(geo.o - v * 16), val);
            }
        }
    }
}

/// Input channels per register block of the input-gradient kernel.
const CB: usize = 8;

/// The weights `[O, C, kh, kw]` rearranged for `input_grad_image`: blocks of `CB` input
/// channels, each `[kh][kw][O][CB]` (zeros past the last channel), so that one kernel
/// offset and one output channel give the block's weights side by side.
pub fn pack_weights_for_input_grad(w: &[f32], geo: &Geometry) -> Vec<f32> {
    let (kk, taps) = (geo.k(), geo.kh * geo.kw);
    let blocks = geo.c.div_ceil(CB);
    let mut packed = vec![0.0; blocks * taps * geo.o * CB];
    for o in 0..geo.o {
        for c in 0..geo.c {
            for tap in 0..taps {
                packed[(((c / CB) * taps + tap) * geo.o + o) * CB + c % CB] = w[o * kk + c * taps + tap];
            }
        }
    }
    packed
}

/// One image's input gradient `[C, H, W]` into `gx` (every value written): ATen's
/// `col2im(Wᵀ·G)` fused. For 16 pixels of an input row and 8 input channels, each
/// kernel offset (i, j) that reaches them computes its column entries, the chains
/// `Σ_o w[o][c][i][j]·G[o][oy][ox]` in increasing o from `+0.0` exactly as the product
/// `Wᵀ·G` does, and adds them to the pixels in (i, j) order with a masked add, exactly
/// as `col2im` does; the column matrix never exists. (Sharing each weight broadcast
/// between two rows measured no faster.)
///
/// # Safety
/// AVX-512F must be present (`available`); `g` is the image's `[O, OH·OW]` gradient,
/// `wpack` from `pack_weights_for_input_grad`, `gx` has `C·H·W` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn input_grad_image(g: &[f32], wpack: &[f32], geo: &Geometry, gx: &mut [f32]) {
    let (l, pad, taps) = (geo.l(), geo.padding as isize, geo.kh * geo.kw);
    assert!(g.len() >= geo.o * l && gx.len() >= geo.c * geo.h * geo.w);
    assert!(wpack.len() >= geo.c.div_ceil(CB) * taps * geo.o * CB);
    // Per kernel column j and 16 pixels from x0: lanes stored (x < w), lanes that
    // receive an entry (0 <= x + pad - j < ow), the output column of lane 0.
    let plan = lane_plan(geo.kw, geo.w, geo.ow, |x0, j| x0 as isize + pad - j as isize);
    for block in 0..geo.c.div_ceil(CB) {
        let channels = (geo.c - block * CB).min(CB);
        for y in 0..geo.h {
            for chunk in 0..plan[0].len() {
                let (x0, store, ..) = plan[0][chunk];
                let mut acc = [_mm512_setzero_ps(); CB];
                for i in 0..geo.kh {
                    // The output row whose window reaches input row y at kernel row i.
                    let oy = y as isize + pad - i as isize;
                    if oy < 0 || oy >= geo.oh as isize {
                        continue;
                    }
                    for (j, per_j) in plan.iter().enumerate() {
                        let (_, _, valid, first) = per_j[chunk];
                        if valid == 0 {
                            continue;
                        }
                        // Masked-off lanes are not read, so the start may lie before the row.
                        let gp = g.as_ptr().add(oy as usize * geo.ow).wrapping_offset(first);
                        let mut wp = wpack.as_ptr().add(((block * taps) + i * geo.kw + j) * geo.o * CB);
                        let mut chains = [_mm512_setzero_ps(); CB];
                        for o in 0..geo.o {
                            let gv = _mm512_maskz_loadu_ps(valid, gp.wrapping_add(o * l));
                            for (r, chain) in chains.iter_mut().enumerate() {
                                *chain = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(r)), gv, *chain);
                            }
                            wp = wp.add(CB);
                        }
                        for (a, chain) in acc.iter_mut().zip(chains) {
                            *a = _mm512_mask_add_ps(*a, valid, *a, chain);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate().take(channels) {
                    let c = block * CB + r;
                    _mm512_mask_storeu_ps(gx.as_mut_ptr().add((c * geo.h + y) * geo.w + x0), store, *a);
                }
            }
        }
    }
}
