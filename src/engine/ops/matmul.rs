//! Matrix product with `torch.matmul` semantics for 1-D and 2-D operands:
//! matrix·matrix, vector·matrix, matrix·vector and vector·vector.
//!
//! The vector·matrix case is the one the seed study got wrong: for `y = x·A` the
//! gradient of `A` is the *outer* product `xᵀ·g` (one entry per weight), not the inner
//! product `x·g` (one number shared by every weight).

use ndarray::{Array2, ArrayView1, ArrayView2, Ix1, Ix2};

use super::gemm::gemm;
use crate::engine::faults::{self, Fault};
use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let value = forward(self.value(a), self.value(b))?;
        Ok(self.push(value, Op::MatMul(a, b)))
    }
}

pub fn forward<F: Float>(a: &Tensor<F>, b: &Tensor<F>) -> Result<Tensor<F>> {
    let (ka, kb) = (inner_dim(a, true)?, inner_dim(b, false)?);
    if ka != kb {
        return Err(Error::Shape(format!("matmul: {:?} · {:?}: inner dimensions differ", a.shape(), b.shape())));
    }
    Ok(match (a.ndim(), b.ndim()) {
        (2, 2) => gemm(as2(a), as2(b)).into_dyn(),
        (1, 2) => gemm(row(a), as2(b)).into_shape_with_order(b.shape()[1]).expect("1×n").into_dyn(),
        (2, 1) => gemm(as2(a), col(b)).into_shape_with_order(a.shape()[0]).expect("m×1").into_dyn(),
        _ => gemm(row(a), col(b)).into_shape_with_order(()).expect("1×1").into_dyn(),
    })
}

/// Gradients of `a·b` given the upstream gradient `g`; only the ones asked for.
pub fn backward<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    g: &Tensor<F>,
    need_a: bool,
    need_b: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>) {
    match (a.ndim(), b.ndim()) {
        // Y = A·B: dA = G·Bᵀ, dB = Aᵀ·G
        (2, 2) => {
            let g = as2(g);
            (need_a.then(|| gemm(g, as2(b).t()).into_dyn()), need_b.then(|| transposed_if_faulty(gemm(as2(a).t(), g).into_dyn())))
        }
        // y = x·B: dx = B·g, dB = outer(x, g)
        (1, 2) => (
            need_a.then(|| gemm(as2(b), col(g)).into_shape_with_order(a.len()).expect("k×1").into_dyn()),
            need_b.then(|| {
                if faults::on(Fault::VecMatInnerProduct) && a.len() == g.len() {
                    let inner = as1(a).iter().zip(as1(g).iter()).fold(F::zero(), |s, (&x, &y)| s + x * y);
                    return Tensor::from_elem(b.raw_dim(), inner);
                }
                transposed_if_faulty(outer(as1(a), as1(g)).into_dyn())
            }),
        ),
        // y = A·v: dA = outer(g, v), dv = Aᵀ·g
        (2, 1) => (
            need_a.then(|| outer(as1(g), as1(b)).into_dyn()),
            need_b.then(|| gemm(as2(a).t(), col(g)).into_shape_with_order(b.len()).expect("k×1").into_dyn()),
        ),
        // s = a·b: da = s̄·b, db = s̄·a
        _ => {
            let s = g.iter().next().copied().unwrap_or_else(F::zero);
            (need_a.then(|| b.mapv(|v| s * v)), need_b.then(|| a.mapv(|v| s * v)))
        }
    }
}

fn outer<F: Float>(u: ArrayView1<F>, v: ArrayView1<F>) -> Array2<F> {
    Array2::from_shape_fn((u.len(), v.len()), |(i, j)| u[i] * v[j])
}

fn inner_dim<F>(t: &Tensor<F>, left: bool) -> Result<usize> {
    match (t.ndim(), left) {
        (1, _) => Ok(t.shape()[0]),
        (2, true) => Ok(t.shape()[1]),
        (2, false) => Ok(t.shape()[0]),
        _ => Err(Error::Shape(format!("matmul takes 1-D or 2-D operands, got shape {:?}", t.shape()))),
    }
}

/// The `MatmulGradTransposed` fault: a square matrix gradient comes back transposed.
fn transposed_if_faulty<F: Float>(grad: Tensor<F>) -> Tensor<F> {
    if faults::on(Fault::MatmulGradTransposed) && grad.ndim() == 2 && grad.shape()[0] == grad.shape()[1] {
        grad.t().to_owned()
    } else {
        grad
    }
}

/// A vector as a one-row matrix.
fn row<F: Float>(t: &Tensor<F>) -> ArrayView2<'_, F> {
    as1(t).insert_axis(ndarray::Axis(0))
}

/// A vector as a one-column matrix.
fn col<F: Float>(t: &Tensor<F>) -> ArrayView2<'_, F> {
    as1(t).insert_axis(ndarray::Axis(1))
}

fn as1<F: Float>(t: &Tensor<F>) -> ArrayView1<'_, F> {
    t.view().into_dimensionality::<Ix1>().expect("checked 1-D")
}

fn as2<F: Float>(t: &Tensor<F>) -> ArrayView2<'_, F> {
    t.view().into_dimensionality::<Ix2>().expect("checked 2-D")
}

