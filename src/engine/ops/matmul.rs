//! Matrix product with `torch.matmul` semantics for 1-D and 2-D operands:
//! matrix·matrix, vector·matrix, matrix·vector and vector·vector; with an operand of
//! rank >= 3 a batched product over the broadcast batch dimensions (a vector operand
//! is a one-row or one-column matrix whose added axis is dropped again).
//!
//! The vector·matrix case is the one the seed study got wrong: for `y = x·A` the
//! gradient of `A` is the *outer* product `xᵀ·g` (one entry per weight), not the inner
//! product `x·g` (one number shared by every weight).

use ndarray::{Array2, ArrayView1, ArrayView2, Dimension, Ix1, Ix2};

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
    if a.ndim().max(b.ndim()) >= 3 {
        return batched_forward(a, b);
    }
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
    if a.ndim().max(b.ndim()) >= 3 {
        return batched_backward(a, b, g, need_a, need_b);
    }
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

/// The operands of a batched product: both as stacks of matrices over the broadcast
/// batch shape, contiguous `[batch, rows, cols]`, with what the output looks like.
struct Batched<F> {
    /// Each operand broadcast to `batch + [m, k]` and `batch + [k, n]`.
    a: ndarray::Array3<F>,
    b: ndarray::Array3<F>,
    batch: Vec<usize>,
    /// Each operand as a matrix (a vector as one row or one column) with its batch axes.
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

fn batched<F: Float>(a: &Tensor<F>, b: &Tensor<F>) -> Result<Batched<F>> {
    let bad = || Error::Shape(format!("matmul: cannot multiply {:?} by {:?}", a.shape(), b.shape()));
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(bad());
    }
    let a_shape: Vec<usize> = if a.ndim() == 1 { vec![1, a.len()] } else { a.shape().to_vec() };
    let b_shape: Vec<usize> = if b.ndim() == 1 { vec![b.len(), 1] } else { b.shape().to_vec() };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k, k2, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 2], b_shape[rb - 1]);
    if k != k2 {
        return Err(bad());
    }
    let batch = super::elementwise::broadcast_shape(&a_shape[..ra - 2], &b_shape[..rb - 2])
        .map_err(|_| bad())?
        .slice()
        .to_vec();
    let nb: usize = batch.iter().product();
    let stack = |t: &Tensor<F>, shape: &[usize], rows: usize, cols: usize| -> ndarray::Array3<F> {
        // A view in another layout (an index_select's, a permute's) in row-major order
        // first: reshaping reads the entries in logical order.
        let t = t.view().as_standard_layout().into_owned().into_shape_with_order(shape.to_vec()).expect("same length");
        let full: Vec<usize> = batch.iter().copied().chain([rows, cols]).collect();
        let values: Vec<F> = t.broadcast(full).expect("batch shapes broadcast").iter().copied().collect();
        ndarray::Array3::from_shape_vec((nb, rows, cols), values).expect("sizes match")
    };
    let (sa, sb) = (stack(a, &a_shape, m, k), stack(b, &b_shape, k, n));
    let mut out_shape = batch.clone();
    if a.ndim() > 1 {
        out_shape.push(m);
    }
    if b.ndim() > 1 {
        out_shape.push(n);
    }
    Ok(Batched { a: sa, b: sb, batch, a_shape, b_shape, out_shape })
}

fn batched_forward<F: Float>(a: &Tensor<F>, b: &Tensor<F>) -> Result<Tensor<F>> {
    let p = batched(a, b)?;
    let (nb, m, n) = (p.a.shape()[0], p.a.shape()[1], p.b.shape()[2]);
    let mut values = Vec::with_capacity(nb * m * n);
    for i in 0..nb {
        let y = gemm(p.a.index_axis(ndarray::Axis(0), i), p.b.index_axis(ndarray::Axis(0), i));
        values.extend(y.iter().copied());
    }
    Ok(Tensor::from_shape_vec(p.out_shape, values).expect("sizes match"))
}

/// Per batch entry `dA = G·Bᵀ`, `dB = Aᵀ·G`, then summed over the batch axes an operand
/// was broadcast along, back to its own shape.
fn batched_backward<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    g: &Tensor<F>,
    need_a: bool,
    need_b: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>) {
    let p = batched(a, b).expect("forward checked");
    let (nb, m, k, n) = (p.a.shape()[0], p.a.shape()[1], p.a.shape()[2], p.b.shape()[2]);
    let g3 = g.view().as_standard_layout().into_owned().into_shape_with_order((nb, m, n)).expect("the output's size");
    let reduce = |values: Vec<F>, rows: usize, cols: usize, own: &[usize], original: &Tensor<F>| -> Tensor<F> {
        let full: Vec<usize> = p.batch.iter().copied().chain([rows, cols]).collect();
        let t = Tensor::from_shape_vec(full, values).expect("sizes match");
        let t = super::elementwise::unbroadcast(t, own);
        super::shape::reshaped(&t, original.shape()).expect("same length")
    };
    let ga = need_a.then(|| {
        let mut values = Vec::with_capacity(nb * m * k);
        for i in 0..nb {
            values.extend(
                gemm(g3.index_axis(ndarray::Axis(0), i), p.b.index_axis(ndarray::Axis(0), i).t()).iter().copied(),
            );
        }
        reduce(values, m, k, &p.a_shape, a)
    });
    let gb = need_b.then(|| {
        let mut values = Vec::with_capacity(nb * k * n);
        for i in 0..nb {
            values.extend(
                gemm(p.a.index_axis(ndarray::Axis(0), i).t(), g3.index_axis(ndarray::Axis(0), i)).iter().copied(),
            );
        }
        reduce(values, k, n, &p.b_shape, b)
    });
    (ga, gb)
}
