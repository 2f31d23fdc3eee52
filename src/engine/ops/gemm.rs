//! The engine's own matrix-product kernel. Each output entry accumulates its products in
//! increasing k with a fused multiply-add, `acc = fma(a[i][k], b[k][j], acc)`, which is
//! how the BLAS kernels behind libtorch and candle round on this machine.

use ndarray::{Array2, ArrayView2};

use crate::engine::Float;

/// `a · b` for any strides (transposed views included).
pub fn gemm<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    let mut c = Array2::zeros((m, n));
    for i in 0..m {
        for j in 0..n {
            let mut acc = F::zero();
            for p in 0..k {
                acc = a[[i, p]].mul_add(b[[p, j]], acc);
            }
            c[[i, j]] = acc;
        }
    }
    c
}
