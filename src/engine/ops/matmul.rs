//! Matrix product with `torch.matmul` semantics for 1-D and 2-D operands:
//! matrix·matrix, vector·matrix, matrix·vector and vector·vector.
//!
//! The vector·matrix case is the one the seed study got wrong: for `y = x·A` the
//! gradient of `A` is the *outer* product `xᵀ·g` (one entry per weight), not the inner
//! product `x·g` (one number shared by every weight).

use ndarray::{Array2, ArrayView1, ArrayView2, Ix1, Ix2};

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
        (2, 2) => as2(a).dot(&as2(b)).into_dyn(),
        (1, 2) => as1(a).dot(&as2(b)).into_dyn(),
        (2, 1) => as2(a).dot(&as1(b)).into_dyn(),
        _ => ndarray::arr0(as1(a).dot(&as1(b))).into_dyn(),
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
            (
                need_a.then(|| g.dot(&as2(b).t()).into_dyn()),
                need_b.then(|| as2(a).t().dot(&g).into_dyn()),
            )
        }
        // y = x·B: dx = B·g, dB = outer(x, g)
        (1, 2) => {
            let g = as1(g);
            (need_a.then(|| as2(b).dot(&g).into_dyn()), need_b.then(|| outer(as1(a), g).into_dyn()))
        }
        // y = A·v: dA = outer(g, v), dv = Aᵀ·g
        (2, 1) => {
            let g = as1(g);
            (need_a.then(|| outer(g, as1(b)).into_dyn()), need_b.then(|| as2(a).t().dot(&g).into_dyn()))
        }
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

fn as1<F: Float>(t: &Tensor<F>) -> ArrayView1<'_, F> {
    t.view().into_dimensionality::<Ix1>().expect("checked 1-D")
}

fn as2<F: Float>(t: &Tensor<F>) -> ArrayView2<'_, F> {
    t.view().into_dimensionality::<Ix2>().expect("checked 2-D")
}

