//! The engine's own matrix-product kernel. Each output entry accumulates its products in
//! increasing k with a fused multiply-add, `c = fma(a[i][k], b[k][j], c)` starting from
//! zero, which is how the BLAS kernels behind libtorch and candle round small products
//! on this machine.
//!
//! That chain is the one thing the speed work may not touch (`tests/engine_bitexact.rs`
//! checks it bit for bit). Everything around it is free, so the kernel is organised the
//! way BLAS organises its own:
//!
//! - a micro-kernel keeps an `MR × NR` block of `c` in registers and walks k = 0, 1, ...
//!   once, one FMA per entry and step, exactly the textbook chain for each entry (the
//!   lanes of a vector FMA are independent, so vectorising over j changes nothing);
//! - with AVX-512 the kernel reads a row-major `b` in place (masked loads at the right
//!   edge, masked stores into `c`) and picks `MR` from 4..=8 to fit `m`, since for the
//!   models' small products copying `b` costs as much as multiplying it; a transposed `b`
//!   is packed into panels of `NR` columns (`[k][NR]`), and so is every `b` on AVX2 and
//!   the portable path, which keep a fixed 5-row block;
//! - row-major rows of `a` are read in place; other layouts and the last, partial block
//!   of rows are packed into `[k][MR]` blocks padded with zeros;
//! - the tiles are shared between two threads when the product is big enough. Tiles
//!   split the output (i, j), never k, so no entry's chain is split or reordered.
//!
//! The micro-kernel is plain Rust over fixed-size arrays; compiled inside a function
//! with AVX-512 (or AVX2) and FMA enabled, LLVM maps each row of the block onto vector
//! registers and each `mul_add` onto one `vfmadd`. Without FMA hardware `mul_add` is
//! the correctly rounded software fma, so the portable path gives the same bits.

use std::mem::MaybeUninit;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::dtype::DType;
use crate::engine::{parallel, Float};

/// Rows of `c` per micro-tile on AVX2 and the portable path. Five divides the batch of
/// 25 and most layer widths of the nine models (10, 120, 400).
const MR_FIXED: usize = 5;

/// Products smaller than this many multiply-adds run on the calling thread alone: below
/// it, waking a second thread costs more than it saves.
const PARALLEL_MIN_FMAS: usize = 100_000;

/// `a · b` for any strides (transposed views included).
pub fn gemm<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    gemm_on(isa(), a, b)
}

/// `c = a · b` into an existing row-major `c` (its previous values are overwritten, not
/// added to), so that a caller can write products straight into a larger buffer.
pub fn gemm_into<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>, mut c: ArrayViewMut2<F>) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    assert_eq!((k, (m, n)), (b.dim().0, c.dim()), "gemm_into: shapes differ");
    assert!(c.is_standard_layout(), "gemm_into: c must be row-major");
    let c = c.as_slice_mut().expect("row-major");
    if k == 0 {
        c.fill(F::zero());
        return;
    }
    if m > 0 && n > 0 && swap_pays(a, b) {
        // As in `gemm_on`: the same chains, computed as cᵀ = bᵀ·aᵀ and copied back.
        let ct = product(isa(), b.t(), a.t());
        for (i, row) in c.chunks_exact_mut(n).enumerate() {
            row.iter_mut().zip(ct.column(i)).for_each(|(d, &v)| *d = v);
        }
        return;
    }
    // SAFETY: `c` holds m·n values.
    unsafe { product_into(isa(), a, b, c.as_mut_ptr()) };
}

/// `gemm_into` for an output buffer that may be uninitialised (`m·n` values, row-major);
/// returns it initialised. Spares zeroing a buffer every entry of which is written.
pub fn gemm_into_uninit<'c, F: Float>(a: ArrayView2<F>, b: ArrayView2<F>, c: &'c mut [MaybeUninit<F>]) -> &'c mut [F] {
    let (m, k) = a.dim();
    let n = b.dim().1;
    assert_eq!((k, m * n), (b.dim().0, c.len()), "gemm_into_uninit: shapes differ");
    if k == 0 || m == 0 || n == 0 || swap_pays(a, b) {
        // The rare paths go through the initialised version.
        c.iter_mut().for_each(|v| {
            v.write(F::zero());
        });
        // SAFETY: every value was just written.
        let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<F>(), c.len()) };
        gemm_into(a, b, ArrayViewMut2::from_shape((m, n), &mut *c).expect("m×n"));
        return c;
    }
    // SAFETY: `c` holds m·n values, all written by `product_into` (k > 0).
    unsafe {
        product_into(isa(), a, b, c.as_mut_ptr().cast::<F>());
        std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<F>(), c.len())
    }
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
    if k == 0 {
        return Array2::zeros((m, n));
    }
    // Not zeroed first: the kernels write every entry (a memset of the output cost 14%
    // of a 120×25·25×784 product).
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds m·n values; `product_into` writes each of them before
    // the length covers them.
    unsafe {
        product_into(isa, a, b, c.as_mut_ptr());
        c.set_len(m * n);
    }
    Array2::from_shape_vec((m, n), c).expect("m×n values")
}

/// `c = a · b` into the row-major m×n values at `c`, every entry written, for `k > 0`.
///
/// # Safety
/// `c` must be valid for writing m·n values.
unsafe fn product_into<F: Float>(isa: Isa, a: ArrayView2<F>, b: ArrayView2<F>, c: *mut F) {
    let (m, n) = (a.dim().0, b.dim().1);
    if m == 0 || n == 0 {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let mr = mr_for(m);
            let (lanes, packed) = (if F::DTYPE == DType::F32 { 16 } else { 8 }, b.strides()[1] != 1);
            // One vector per row of the block when `b` is narrower than one; likewise for
            // a last panel of at most one vector's width (196 = 6·32 + 4 columns).
            let nv = if n <= lanes { 1 } else { 2 };
            let shape = Shape { mr, nr: nv * lanes, pack_b: packed };
            run::<F>(a, b, c, shape, simd::avx512_for::<F>(mr, nv), simd::avx512_for::<F>(mr, 1));
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let nr = if F::DTYPE == DType::F32 { 16 } else { 8 };
            run::<F>(a, b, c, Shape { mr: MR_FIXED, nr, pack_b: true }, simd::avx2_for::<F>(), simd::avx2_for::<F>())
        }
        Isa::Portable => run::<F>(a, b, c, Shape { mr: MR_FIXED, nr: 8, pack_b: true }, portable::<F>, portable::<F>),
    }
}

/// The block height for `m` rows on AVX-512: the one from 4..=8 that wastes fewest
/// padding rows, the taller on a tie (fewer passes over `b`).
#[cfg(target_arch = "x86_64")]
fn mr_for(m: usize) -> usize {
    (4..=8).rev().min_by_key(|&mr| m.div_ceil(mr) * mr - m).expect("non-empty range")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// The instruction set the engine's kernels run on here (`"avx512"`, `"avx2"` or
/// `"portable"`): it decides the engine's bits, so every report records it.
pub fn kernel_path() -> &'static str {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
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

/// How one product is tiled: block height, panel width, and whether `b` is packed.
#[derive(Clone, Copy)]
struct Shape {
    mr: usize,
    nr: usize,
    pack_b: bool,
}

/// `b` as panels of `nr` columns, each `[k][nr]` with zeros past column `n`.
///
/// Packing reads `b` through its strides, in whichever order walks memory contiguously
/// (rows of a row-major `b`, columns of a transposed weight), because for the models'
/// small batches packing costs a sizeable fraction of the product itself.
fn pack_b<F: Float>(b: ArrayView2<F>, nr: usize) -> Vec<F> {
    let (k, n) = b.dim();
    let (rs, cs) = (b.strides()[0], b.strides()[1]);
    let src = b.as_ptr();
    let mut out = vec![F::zero(); n.div_ceil(nr) * k * nr];
    for (jp, panel) in out.chunks_exact_mut(k * nr).enumerate() {
        let j0 = jp * nr;
        let width = nr.min(n - j0);
        // SAFETY: every (p, j) read is inside the view: p < k, j0 + jj < n.
        unsafe {
            if cs == 1 {
                for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
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
                            *panel.get_unchecked_mut(p * nr + jj) = *col.offset(p as isize * rs);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `a` as blocks of `mr` rows, each `[k][mr]` with zeros past row `m`; read in the
/// order that is contiguous in memory, like `pack_b`.
/// Blocks before `first` are not packed (the micro-kernel reads them in place).
fn pack_a<F: Float>(a: ArrayView2<F>, mr: usize, first: usize) -> Vec<F> {
    let (m, k) = a.dim();
    let (rs, cs) = (a.strides()[0], a.strides()[1]);
    let src = a.as_ptr();
    let mut out = vec![F::zero(); (m.div_ceil(mr) - first) * k * mr];
    for (ib, block) in out.chunks_exact_mut(k * mr).enumerate() {
        let i0 = (first + ib) * mr;
        let rows = mr.min(m - i0);
        // SAFETY: every (i, p) read is inside the view: i0 + r < m, p < k.
        unsafe {
            if rs == 1 {
                for (p, dst) in block.chunks_exact_mut(mr).enumerate() {
                    let col = src.offset(p as isize * cs + i0 as isize);
                    std::ptr::copy_nonoverlapping(col, dst.as_mut_ptr(), rows);
                }
            } else {
                for r in 0..rows {
                    let row = src.offset((i0 + r) as isize * rs);
                    for p in 0..k {
                        *block.get_unchecked_mut(p * mr + r) = *row.offset(p as isize * cs);
                    }
                }
            }
        }
    }
    out
}

/// One micro-tile's operands: `k` steps over `mr` rows of `a` (entry (r, p) at
/// `a + r·ars + p·aps`: a packed `[k][mr]` block or rows of a row-major `a` read in
/// place) and `nr` columns of `b` (row p at `b + p·ldb`: a packed panel or a row-major
/// `b` read in place); the `rows × cols` part of the block inside `c` goes to `out`
/// (row stride `ldc`).
struct Tile<F> {
    k: usize,
    a: *const F,
    ars: usize,
    aps: usize,
    b: *const F,
    ldb: usize,
    rows: usize,
    cols: usize,
    out: *mut F,
    ldc: usize,
}

type Micro<F> = unsafe fn(&Tile<F>);

/// What every thread needs to compute its tiles; `c` is written through a raw pointer
/// because the two threads' tiles interleave in memory (they never overlap).
struct Job<F> {
    shape: Shape,
    /// Packed blocks of `a`, from block `first_packed` on.
    pa: Vec<F>,
    first_packed: usize,
    /// A row-major `a` and its row stride: whole blocks before `first_packed` are read
    /// in place, which spares packing the big operand of `w·xᵀ`.
    a_rows: *const F,
    lda: usize,
    /// Packed panels of `b`, or a row-major `b` read in place (`pb` empty).
    pb: Vec<F>,
    b_rows: *const F,
    ldb: usize,
    c: *mut F,
    m: usize,
    k: usize,
    n: usize,
    micro: Micro<F>,
    narrow: Micro<F>,
}

// SAFETY: every tile index is handed to exactly one thread, and distinct tiles cover
// disjoint entries of `c`, which outlives the parallel call.
unsafe impl<F: Sync> Sync for Job<F> {}

/// `narrow` is the kernel for a last panel no wider than `shape.nr / 2` (AVX-512: one
/// vector per row instead of two); the others pass `micro` again.
unsafe fn run<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>, c: *mut F, shape: Shape, micro: Micro<F>, narrow: Micro<F>) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    let Shape { mr, nr, pack_b: packed } = shape;
    let in_place = a.strides()[1] == 1 && a.strides()[0] > 0;
    let first_packed = if in_place { m / mr } else { 0 };
    let pb = if packed { pack_b(b, nr) } else { Vec::new() };
    let job = Job {
        shape,
        pa: pack_a(a, mr, first_packed),
        first_packed,
        a_rows: a.as_ptr(),
        lda: a.strides()[0].max(0) as usize,
        pb,
        b_rows: b.as_ptr(),
        ldb: b.strides()[0].max(0) as usize,
        c,
        m,
        k,
        n,
        micro,
        narrow,
    };
    let tiles = m.div_ceil(mr) * n.div_ceil(nr);
    // SAFETY (both branches): the micro-kernel was chosen for a detected ISA; every
    // tile is computed by exactly one thread.
    if m * k * n >= PARALLEL_MIN_FMAS {
        // One contiguous run of tiles per thread (the team splits 0..T evenly).
        let parts = parallel::threads().min(tiles);
        parallel::for_each(parts, |t| unsafe { tiles_in(&job, tiles * t / parts..tiles * (t + 1) / parts) });
    } else {
        unsafe { tiles_in(&job, 0..tiles) }
    }
}

/// Tiles are numbered panel-major (all row blocks of column panel 0, then panel 1, ...)
/// so that consecutive tiles reuse the same panel of `b` from cache.
///
/// # Safety
/// No other thread may compute the same tiles at the same time.
unsafe fn tiles_in<F: Float>(job: &Job<F>, range: std::ops::Range<usize>) {
    let Shape { mr, nr, .. } = job.shape;
    let blocks = job.m.div_ceil(mr);
    for t in range {
        let (jp, ib) = (t / blocks, t % blocks);
        let (i0, j0) = (ib * mr, jp * nr);
        let (a, ars, aps) = if ib < job.first_packed {
            (job.a_rows.add(i0 * job.lda), job.lda, 1)
        } else {
            let at = (ib - job.first_packed) * job.k * mr;
            (job.pa[at..at + job.k * mr].as_ptr(), 1, mr)
        };
        let (b, ldb) = if job.pb.is_empty() {
            (job.b_rows.add(j0), job.ldb)
        } else {
            (job.pb[jp * job.k * nr..(jp + 1) * job.k * nr].as_ptr(), nr)
        };
        let (rows, cols) = (mr.min(job.m - i0), nr.min(job.n - j0));
        let out = job.c.add(i0 * job.n + j0);
        let micro = if cols * 2 <= nr { job.narrow } else { job.micro };
        micro(&Tile { k: job.k, a, ars, aps, b, ldb, rows, cols, out, ldc: job.n });
    }
}

/// The portable micro-kernel (`MR_FIXED` × 8, packed `b`): `mul_add` is one `vfmadd`
/// where the CPU has FMA and the correctly rounded software fma elsewhere, so it gives
/// the same bits as the vector kernels.
unsafe fn portable<F: Float>(t: &Tile<F>) {
    const NR: usize = 8;
    let mut acc = [[F::zero(); NR]; MR_FIXED];
    for p in 0..t.k {
        let bp = std::slice::from_raw_parts(t.b.add(p * t.ldb), NR);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let a_rp = *t.a.add(r * t.ars + p * t.aps);
            for (c, &bv) in acc_r.iter_mut().zip(bp) {
                *c = a_rp.mul_add(bv, *c);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        std::ptr::copy_nonoverlapping(row.as_ptr(), t.out.add(r * t.ldc), t.cols);
    }
}

/// The vector micro-kernels, written with intrinsics (LLVM's auto-vectorisation of the
/// portable loop was erratic: partial vectors and shuffles for some widths). Each row of
/// the block is `NV` vector registers; every step broadcasts `a[i][p]` and issues one FMA
/// per register, so each lane still sees `fma(a[i][p], b[p][j], c[i][j])` for p in
/// order. With 5 to 8 rows of two registers there are 10 to 16 independent accumulators,
/// enough to hide the FMA latency.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Micro, Tile, MR_FIXED};
    use crate::dtype::DType;
    use crate::engine::Float;
    use std::arch::x86_64::*;

    macro_rules! avx512_kernel {
        ($name:ident, $t:ty, $lanes:expr, $mask:ty, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            /// # Safety
            /// AVX-512F and FMA must be present; `t` must describe readable `a` and `b`
            /// (rows of `b` readable for `cols` values) and writable `rows × cols` of `out`.
            #[target_feature(enable = "avx512f,fma")]
            unsafe fn $name<const MR: usize, const NV: usize>(t: &Tile<$t>) {
                const L: usize = $lanes;
                let lane_mask = |from: usize| -> $mask {
                    let valid = t.cols.saturating_sub(from).min(L);
                    ((1u32 << valid) - 1) as $mask
                };
                let mut masks = [0 as $mask; NV];
                for v in 0..NV {
                    masks[v] = lane_mask(v * L);
                }
                let mut acc = [[$zero(); NV]; MR];
                for p in 0..t.k {
                    let bp = t.b.add(p * t.ldb);
                    let mut bv = [$zero(); NV];
                    for v in 0..NV {
                        bv[v] = $load(masks[v], bp.add(v * L));
                    }
                    let ap = t.a.add(p * t.aps);
                    for r in 0..MR {
                        let av = $set1(*ap.add(r * t.ars));
                        for v in 0..NV {
                            acc[r][v] = $fma(av, bv[v], acc[r][v]);
                        }
                    }
                }
                for r in 0..MR.min(t.rows) {
                    for v in 0..NV {
                        $store(t.out.add(r * t.ldc + v * L), masks[v], acc[r][v]);
                    }
                }
            }
        };
    }

    avx512_kernel!(
        avx512_f32,
        f32,
        16,
        u16,
        _mm512_setzero_ps,
        _mm512_maskz_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_mask_storeu_ps
    );
    avx512_kernel!(
        avx512_f64,
        f64,
        8,
        u8,
        _mm512_setzero_pd,
        _mm512_maskz_loadu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_mask_storeu_pd
    );

    /// The AVX-512 kernel for `F`, `mr` rows (4..=8) and `nv` registers per row (1, 2).
    pub fn avx512_for<F: Float>(mr: usize, nv: usize) -> Micro<F> {
        macro_rules! pick {
            ($kernel:ident, $t:ty) => {{
                let f: Micro<$t> = match (mr, nv) {
                    (4, 1) => |t| unsafe { $kernel::<4, 1>(t) },
                    (5, 1) => |t| unsafe { $kernel::<5, 1>(t) },
                    (6, 1) => |t| unsafe { $kernel::<6, 1>(t) },
                    (7, 1) => |t| unsafe { $kernel::<7, 1>(t) },
                    (8, 1) => |t| unsafe { $kernel::<8, 1>(t) },
                    (4, 2) => |t| unsafe { $kernel::<4, 2>(t) },
                    (5, 2) => |t| unsafe { $kernel::<5, 2>(t) },
                    (6, 2) => |t| unsafe { $kernel::<6, 2>(t) },
                    (7, 2) => |t| unsafe { $kernel::<7, 2>(t) },
                    (8, 2) => |t| unsafe { $kernel::<8, 2>(t) },
                    _ => unreachable!("mr in 4..=8, nv in 1..=2"),
                };
                // SAFETY: `F::DTYPE` says which float F is; only the pointer type changes.
                unsafe { std::mem::transmute::<Micro<$t>, Micro<F>>(f) }
            }};
        }
        match F::DTYPE {
            DType::F32 => pick!(avx512_f32, f32),
            DType::F64 => pick!(avx512_f64, f64),
        }
    }

    macro_rules! avx2_kernel {
        ($name:ident, $t:ty, $lanes:expr, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            /// `MR_FIXED` rows of two registers over a packed panel; the block is stored
            /// whole into a scratch block when it overhangs `c`, then the part inside is
            /// copied.
            ///
            /// # Safety
            /// AVX2 and FMA must be present; `t.b` is a packed panel of `2·lanes` columns.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name(t: &Tile<$t>) {
                const L: usize = $lanes;
                let mut acc = [[$zero(); 2]; MR_FIXED];
                for p in 0..t.k {
                    let bp = t.b.add(p * t.ldb);
                    let (b0, b1) = ($load(bp), $load(bp.add(L)));
                    let ap = t.a.add(p * t.aps);
                    for r in 0..MR_FIXED {
                        let av = $set1(*ap.add(r * t.ars));
                        acc[r][0] = $fma(av, b0, acc[r][0]);
                        acc[r][1] = $fma(av, b1, acc[r][1]);
                    }
                }
                if t.rows == MR_FIXED && t.cols == 2 * L {
                    for r in 0..MR_FIXED {
                        $store(t.out.add(r * t.ldc), acc[r][0]);
                        $store(t.out.add(r * t.ldc + L), acc[r][1]);
                    }
                    return;
                }
                let mut block = [[0 as $t; 2 * L]; MR_FIXED];
                for r in 0..MR_FIXED {
                    $store(block[r].as_mut_ptr(), acc[r][0]);
                    $store(block[r].as_mut_ptr().add(L), acc[r][1]);
                }
                for r in 0..t.rows {
                    std::ptr::copy_nonoverlapping(block[r].as_ptr(), t.out.add(r * t.ldc), t.cols);
                }
            }
        };
    }

    avx2_kernel!(
        avx2_f32,
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
    avx2_kernel!(
        avx2_f64,
        f64,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd,
        _mm256_storeu_pd
    );

    pub fn avx2_for<F: Float>() -> Micro<F> {
        // SAFETY: `F::DTYPE` says which float F is; only the pointer type changes.
        unsafe {
            match F::DTYPE {
                DType::F32 => std::mem::transmute::<Micro<f32>, Micro<F>>(|t| avx2_f32(t)),
                DType::F64 => std::mem::transmute::<Micro<f64>, Micro<F>>(|t| avx2_f64(t)),
            }
        }
    }
}
