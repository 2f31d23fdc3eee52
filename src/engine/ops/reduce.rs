//! Reductions to a scalar.

use crate::engine::{Float, Graph, Op, Tensor, Var};

impl<F: Float> Graph<F> {
    /// Sum of all elements, as a 0-d tensor.
    pub fn sum(&mut self, a: Var) -> Var {
        let value = ndarray::arr0(self.value(a).sum()).into_dyn();
        self.push(value, Op::Sum(a))
    }

    /// Mean of all elements, as a 0-d tensor.
    pub fn mean(&mut self, a: Var) -> Var {
        let x = self.value(a);
        let value = ndarray::arr0(x.sum() / F::of(x.len() as f64)).into_dyn();
        self.push(value, Op::Mean(a))
    }
}

/// Every element contributed once: the gradient is the upstream scalar everywhere.
pub fn sum_backward<F: Float>(a: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    Tensor::from_elem(a.raw_dim(), scalar(g))
}

pub fn mean_backward<F: Float>(a: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    Tensor::from_elem(a.raw_dim(), scalar(g) / F::of(a.len() as f64))
}

fn scalar<F: Float>(g: &Tensor<F>) -> F {
    g.iter().next().copied().unwrap_or_else(F::zero)
}
