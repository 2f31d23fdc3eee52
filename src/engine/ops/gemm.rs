//! The engine's own matrix-product kernel. Each output entry accumulates its products in
//! increasing k with a fused multiply-add, `c = fma(a[i][k], b[k][j], c)` starting from
//! zero, which is how the BLAS kernels behind libtorch and candle round small products
//! on this machine.
//!
//! That chain is the one thing the speed work may not touch (`tests/engine_bitexact.rs`
//! checks it bit for bit). Everything around it is free, so the kernel is organised the
//! way BLAS organises its own:
//!
//! - `b` is packed into panels of `NR` columns (`[k][NR]`, zero-padded) and `a` into
//!   blocks of `MR` rows (`[k][MR]`), whatever their strides, so the inner loop reads
//!   two contiguous streams;
//! - a micro-kernel keeps an `MR × NR` block of `c` in registers and walks k = 0, 1, ...
//!   once, one FMA per entry and step, exactly the textbook chain for each entry (the
//!   lanes of a vector FMA are independent, so vectorising over j changes nothing);
//! - the tiles are shared between two threads when the product is big enough. Tiles
//!   split the output (i, j), never k, so no entry's chain is split or reordered.
//!
//! The micro-kernel is plain Rust over fixed-size arrays; compiled inside a function
//! with AVX-512 (or AVX2) and FMA enabled, LLVM maps each row of the block onto vector
//! registers and each `mul_add` onto one `vfmadd`. Without FMA hardware `mul_add` is
//! the correctly rounded software fma, so the portable path gives the same bits.

use ndarray::{Array2, ArrayView2};

use crate::dtype::DType;
use crate::engine::Float;

/// Rows of `c` per micro-tile. Five divides the batch of 25 and most layer widths of the
/// nine models (10, 120, 400), so few tiles carry padding rows.
const MR: usize = 5;

/// Products smaller than this many multiply-adds run on the calling thread alone: below
/// it, waking a second thread costs more than it saves.
const PARALLEL_MIN_FMAS: usize = 400_000;

/// `a · b` for any strides (transposed views included).
pub fn gemm<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    gemm_on(isa(), a, b)
}

/// `gemm` on every instruction set this CPU can run (`"avx512"`, `"avx2"`,
/// `"portable"`), so the bit-exactness tests cover the kernels the dispatch would not pick.
#[doc(hidden)]
pub fn gemm_each_isa<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Vec<(&'static str, Array2<F>)> {
    let best = isa();
    let mut out = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if best == Isa::Avx512 {
            out.push(("avx512", gemm_on(Isa::Avx512, a, b)));
        }
        if best != Isa::Portable {
            out.push(("avx2", gemm_on(Isa::Avx2, a, b)));
        }
    }
    let _ = best;
    out.push(("portable", gemm_on(Isa::Portable, a, b)));
    out
}

fn gemm_on<F: Float>(isa: Isa, a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    if m > 0 && n > 0 && k > 0 && swap_pays(a, b) {
        // cᵀ = bᵀ·aᵀ: entry (j, i) is the chain fma(b[k][j], a[i][k], ·) over k in order,
        // the same roundings as fma(a[i][k], b[k][j], ·) since the product commutes.
        let ct = product(isa, b.t(), a.t());
        return ct.t().as_standard_layout().into_owned();
    }
    product(isa, a, b)
}

/// Packing `b` is a transpose when its rows are not contiguous (`x·wᵀ` in a linear
/// layer, `g·colsᵀ` in a convolution's weight gradient), several times slower per value
/// than a copy. When the other operand is the smaller one, computing `cᵀ = bᵀ·aᵀ` and
/// transposing the (small) result moves less memory.
fn swap_pays<F>(a: ArrayView2<F>, b: ArrayView2<F>) -> bool {
    let ((m, k), n) = (a.dim(), b.dim().1);
    let pack_cost = |values: usize, contiguous: bool| values * if contiguous { 1 } else { 4 };
    // Only worth it to avoid a transposing pack of `b`; the transpose of the result is
    // costed like one too (measured: swapping a plain row-major `b` away was slower).
    let b_rows_contiguous = b.strides()[1] == 1;
    let normal = pack_cost(k * n, b_rows_contiguous);
    // After the swap `bᵀ` is the left operand, read in place when `b` is column-major.
    let swapped = pack_cost(k * m, a.strides()[0] == 1) + pack_cost(m * n, false);
    let normal = if a.strides()[1] == 1 { normal } else { normal + pack_cost(m * k, false) };
    !b_rows_contiguous && swapped < normal
}

fn product<F: Float>(isa: Isa, a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let (m, k) = a.dim();
    let n = b.dim().1;
    let mut c = vec![F::zero(); m * n];
    if m > 0 && n > 0 && k > 0 {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match F::DTYPE {
                DType::F32 => run::<F, 32>(a, b, &mut c, Isa::Avx512),
                DType::F64 => run::<F, 16>(a, b, &mut c, Isa::Avx512),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match F::DTYPE {
                DType::F32 => run::<F, 16>(a, b, &mut c, Isa::Avx2),
                DType::F64 => run::<F, 8>(a, b, &mut c, Isa::Avx2),
            },
            Isa::Portable => run::<F, 8>(a, b, &mut c, Isa::Portable),
        }
    }
    Array2::from_shape_vec((m, n), c).expect("m×n values")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") {
            return Isa::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// `b` as panels of `NR` columns, each `[k][NR]` with zeros past column `n`.
///
/// Packing reads `b` through its strides, in whichever order walks memory contiguously
/// (rows of a row-major `b`, columns of a transposed weight), because for the models'
/// small batches packing costs a sizeable fraction of the product itself.
fn pack_b<F: Float, const NR: usize>(b: ArrayView2<F>) -> Vec<F> {
    let (k, n) = b.dim();
    let (rs, cs) = (b.strides()[0], b.strides()[1]);
    let src = b.as_ptr();
    let mut out = vec![F::zero(); n.div_ceil(NR) * k * NR];
    for (jp, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        let j0 = jp * NR;
        let width = NR.min(n - j0);
        // SAFETY: every (p, j) read is inside the view: p < k, j0 + jj < n.
        unsafe {
            if cs == 1 {
                for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    let row = src.offset(p as isize * rs + j0 as isize);
                    std::ptr::copy_nonoverlapping(row, dst.as_mut_ptr(), width);
                }
            } else {
                // A transpose in strips of 16 values of k, so the strip of the panel
                // being written stays in L1 instead of touching a new line per value.
                for p0 in (0..k).step_by(16) {
                    for jj in 0..width {
                        let col = src.offset((j0 + jj) as isize * cs);
                        for p in p0..k.min(p0 + 16) {
                            *panel.get_unchecked_mut(p * NR + jj) = *col.offset(p as isize * rs);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `a` as blocks of `MR` rows, each `[k][MR]` with zeros past row `m`; read in the
/// order that is contiguous in memory, like `pack_b`.
/// Blocks before `first` are not packed (the micro-kernel reads them in place).
fn pack_a<F: Float>(a: ArrayView2<F>, first: usize) -> Vec<F> {
    let (m, k) = a.dim();
    let (rs, cs) = (a.strides()[0], a.strides()[1]);
    let src = a.as_ptr();
    let mut out = vec![F::zero(); (m.div_ceil(MR) - first) * k * MR];
    for (ib, block) in out.chunks_exact_mut(k * MR).enumerate() {
        let i0 = (first + ib) * MR;
        let rows = MR.min(m - i0);
        // SAFETY: every (i, p) read is inside the view: i0 + r < m, p < k.
        unsafe {
            if rs == 1 {
                for (p, dst) in block.chunks_exact_mut(MR).enumerate() {
                    let col = src.offset(p as isize * cs + i0 as isize);
                    std::ptr::copy_nonoverlapping(col, dst.as_mut_ptr(), rows);
                }
            } else {
                for r in 0..rows {
                    let row = src.offset((i0 + r) as isize * rs);
                    for p in 0..k {
                        *block.get_unchecked_mut(p * MR + r) = *row.offset(p as isize * cs);
                    }
                }
            }
        }
    }
    out
}

/// A micro-kernel: `k` steps over `MR` rows of `a` (entry (r, p) at `a + r·ars + p·aps`:
/// a packed `[k][MR]` block or rows of a row-major `a` read in place) and a packed
/// `[k][NR]` panel of `b`, writing the finished `MR × NR` block to `out` (row-major, row
/// stride `ldc`).
type Micro<F> = unsafe fn(usize, *const F, usize, usize, *const F, *mut F, usize);

/// What every thread needs to compute its tiles; `c` is written through a raw pointer
/// because the two threads' tiles interleave in memory (they never overlap).
struct Job<'a, F> {
    /// Packed blocks of `a`, from block `first_packed` on.
    pa: &'a [F],
    first_packed: usize,
    /// A row-major `a` and its row stride: whole blocks before `first_packed` are read
    /// in place, which spares packing the big operand of `w·xᵀ`.
    a_rows: *const F,
    lda: usize,
    pb: &'a [F],
    c: *mut F,
    m: usize,
    k: usize,
    n: usize,
    micro: Micro<F>,
}

// SAFETY: every tile index is handed to exactly one thread, and distinct tiles cover
// disjoint entries of `c`, which outlives the scope the threads run in.
unsafe impl<F: Sync> Sync for Job<'_, F> {}

fn run<F: Float, const NR: usize>(a: ArrayView2<F>, b: ArrayView2<F>, c: &mut [F], isa: Isa) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    let in_place = a.strides()[1] == 1 && a.strides()[0] > 0;
    let first_packed = if in_place { m / MR } else { 0 };
    let (pa, pb) = (pack_a(a, first_packed), pack_b::<F, NR>(b));
    let (a_rows, lda) = (a.as_ptr(), a.strides()[0].max(0) as usize);
    let micro = micro_for::<F, NR>(isa);
    let job = Job { pa: &pa, first_packed, a_rows, lda, pb: &pb, c: c.as_mut_ptr(), m, k, n, micro };
    let tiles = m.div_ceil(MR) * n.div_ceil(NR);
    // SAFETY (both branches): the micro-kernel was chosen for a detected ISA; the two
    // halves of the tile range are disjoint.
    if m * k * n >= PARALLEL_MIN_FMAS && tiles >= 2 {
        let half = tiles / 2;
        rayon::join(|| unsafe { tiles_in::<F, NR>(&job, 0..half) }, || unsafe { tiles_in::<F, NR>(&job, half..tiles) });
    } else {
        unsafe { tiles_in::<F, NR>(&job, 0..tiles) }
    }
}

/// The micro-kernel for `isa`, element type `F` and panel width `NR` (the pairs `gemm`
/// dispatches: two vector registers per row of the block).
fn micro_for<F: Float, const NR: usize>(isa: Isa) -> Micro<F> {
    #[cfg(target_arch = "x86_64")]
    {
        // The casts only relabel the pointer type: `F::DTYPE` says which float F is.
        #[allow(clippy::too_many_arguments)]
        unsafe fn cast<F, T>(f: Micro<T>, k: usize, a: *const F, ars: usize, aps: usize, b: *const F, o: *mut F, ldc: usize) {
            f(k, a.cast(), ars, aps, b.cast(), o.cast(), ldc)
        }
        match (isa, F::DTYPE, NR) {
            (Isa::Avx512, DType::F32, 32) => return |k, a, ars, aps, b, o, ldc| unsafe { cast(simd::avx512_f32, k, a, ars, aps, b, o, ldc) },
            (Isa::Avx512, DType::F64, 16) => return |k, a, ars, aps, b, o, ldc| unsafe { cast(simd::avx512_f64, k, a, ars, aps, b, o, ldc) },
            (Isa::Avx2, DType::F32, 16) => return |k, a, ars, aps, b, o, ldc| unsafe { cast(simd::avx2_f32, k, a, ars, aps, b, o, ldc) },
            (Isa::Avx2, DType::F64, 8) => return |k, a, ars, aps, b, o, ldc| unsafe { cast(simd::avx2_f64, k, a, ars, aps, b, o, ldc) },
            _ => {}
        }
    }
    let _ = isa;
    |k, a, ars, aps, b, o, ldc| unsafe {
        let mut acc = [[F::zero(); NR]; MR];
        for p in 0..k {
            let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a_rp = *a.add(r * ars + p * aps);
                for (c, &bv) in acc_r.iter_mut().zip(bp) {
                    *c = a_rp.mul_add(bv, *c);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), o.add(r * ldc), NR);
        }
    }
}

/// Tiles are numbered panel-major (all row blocks of column panel 0, then panel 1, ...)
/// so that consecutive tiles reuse the same packed panel of `b` from cache.
///
/// # Safety
/// No other thread may compute the same tiles at the same time.
unsafe fn tiles_in<F: Float, const NR: usize>(job: &Job<F>, range: std::ops::Range<usize>) {
    let blocks = job.m.div_ceil(MR);
    let mut block = [[F::zero(); NR]; MR];
    for t in range {
        let (jp, ib) = (t / blocks, t % blocks);
        let (i0, j0) = (ib * MR, jp * NR);
        let (a_ptr, ars, aps) = if ib < job.first_packed {
            (job.a_rows.add(i0 * job.lda), job.lda, 1)
        } else {
            let at = (ib - job.first_packed) * job.k * MR;
            (job.pa[at..at + job.k * MR].as_ptr(), 1, MR)
        };
        let pb = &job.pb[jp * job.k * NR..(jp + 1) * job.k * NR];
        let (rows, cols) = (MR.min(job.m - i0), NR.min(job.n - j0));
        if rows == MR && cols == NR {
            // A whole tile goes straight into `c`.
            (job.micro)(job.k, a_ptr, ars, aps, pb.as_ptr(), job.c.add(i0 * job.n + j0), job.n);
            continue;
        }
        // An edge tile is computed whole (its padding rows and columns are zeros in the
        // packed operands) and only its part inside `c` is kept.
        (job.micro)(job.k, a_ptr, ars, aps, pb.as_ptr(), block.as_mut_ptr().cast(), NR);
        for (r, row) in block.iter().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(row.as_ptr(), job.c.add((i0 + r) * job.n + j0), cols);
        }
    }
}

/// The same micro-kernel written with intrinsics: LLVM's auto-vectorisation of `micro`
/// was erratic (partial vectors and shuffles for some widths). Each row of the block is
/// two vector registers (`c_r0`, `c_r1`), ten accumulators in all, which hides the FMA
/// latency; every step broadcasts `a[i][p]` and issues one FMA per register, so each
/// lane still sees `fma(a[i][p], b[p][j], c[i][j])` for p in order.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::MR;
    use std::arch::x86_64::*;

    macro_rules! kernel {
        ($name:ident, $feat:literal, $t:ty, $lanes:expr, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            /// # Safety
            /// The CPU must support the enabled features; `pa` reaches `MR` rows of `k`
            /// values through `ars`/`aps`, `pb` holds
            /// `k·2·lanes`, and `out` has `MR` rows of `2·lanes` values, `ldc` apart.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(k: usize, pa: *const $t, ars: usize, aps: usize, pb: *const $t, out: *mut $t, ldc: usize) {
                const L: usize = $lanes;
                let (mut c00, mut c01, mut c10, mut c11, mut c20) = ($zero(), $zero(), $zero(), $zero(), $zero());
                let (mut c21, mut c30, mut c31, mut c40, mut c41) = ($zero(), $zero(), $zero(), $zero(), $zero());
                for p in 0..k {
                    let b0 = $load(pb.add(p * 2 * L));
                    let b1 = $load(pb.add(p * 2 * L + L));
                    let a = pa.add(p * aps);
                    let a0 = $set1(*a);
                    c00 = $fma(a0, b0, c00);
                    c01 = $fma(a0, b1, c01);
                    let a1 = $set1(*a.add(1 * ars));
                    c10 = $fma(a1, b0, c10);
                    c11 = $fma(a1, b1, c11);
                    let a2 = $set1(*a.add(2 * ars));
                    c20 = $fma(a2, b0, c20);
                    c21 = $fma(a2, b1, c21);
                    let a3 = $set1(*a.add(3 * ars));
                    c30 = $fma(a3, b0, c30);
                    c31 = $fma(a3, b1, c31);
                    let a4 = $set1(*a.add(4 * ars));
                    c40 = $fma(a4, b0, c40);
                    c41 = $fma(a4, b1, c41);
                }
                for (r, (lo, hi)) in [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41)].into_iter().enumerate() {
                    $store(out.add(r * ldc), lo);
                    $store(out.add(r * ldc + L), hi);
                }
            }
        };
    }

    const _: () = assert!(MR == 5, "the kernels below are written out for five rows");

    kernel!(avx512_f32, "avx512f,fma", f32, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps);
    kernel!(avx512_f64, "avx512f,fma", f64, 8, _mm512_setzero_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_storeu_pd);
    kernel!(avx2_f32, "avx2,fma", f32, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps);
    kernel!(avx2_f64, "avx2,fma", f64, 4, _mm256_setzero_pd, _mm256_loadu_pd, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_storeu_pd);
}
