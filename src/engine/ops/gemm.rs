//! The engine's own matrix-product kernel. Each output entry accumulates its products in
//! increasing k with a fused multiply-add, `c = fma(a[i][k], b[k][j], c)`, which is how
//! the BLAS kernels behind libtorch and candle round small products on this machine.
//!
//! The loops run i, k, j so the innermost loop streams over contiguous rows of `b` and
//! `c` and vectorises; the order of accumulation into each `c[i][j]` is still k = 0, 1,
//! ..., so the result is the same as the textbook i, j, k loop, bit for bit.

use ndarray::{Array2, ArrayView2};

use crate::engine::Float;

/// `a · b` for any strides (transposed views included).
pub fn gemm<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    // Row-major copies make every inner loop a contiguous slice (no-ops when already so).
    let a = a.as_standard_layout();
    let b = b.as_standard_layout();
    let (a, b) = (a.as_slice().expect("standard layout"), b.as_slice().expect("standard layout"));
    let mut c = vec![F::zero(); m * n];
    kernel(a, b, &mut c, m, k, n);
    Array2::from_shape_vec((m, n), c).expect("m×n values")
}

#[cfg(target_arch = "x86_64")]
fn kernel<F: Float>(a: &[F], b: &[F], c: &mut [F], m: usize, k: usize, n: usize) {
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports the features the function was compiled for.
        unsafe { kernel_fma(a, b, c, m, k, n) }
    } else {
        kernel_portable(a, b, c, m, k, n)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel<F: Float>(a: &[F], b: &[F], c: &mut [F], m: usize, k: usize, n: usize) {
    kernel_portable(a, b, c, m, k, n)
}

/// The same loops compiled with FMA and AVX2, so `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn kernel_fma<F: Float>(a: &[F], b: &[F], c: &mut [F], m: usize, k: usize, n: usize) {
    kernel_portable(a, b, c, m, k, n)
}

#[inline(always)]
fn kernel_portable<F: Float>(a: &[F], b: &[F], c: &mut [F], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let c_row = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let a_ip = a[i * k + p];
            let b_row = &b[p * n..(p + 1) * n];
            for (c_ij, &b_pj) in c_row.iter_mut().zip(b_row) {
                *c_ij = a_ip.mul_add(b_pj, *c_ij);
            }
        }
    }
}
