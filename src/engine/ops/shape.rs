//! Shape changes that keep the elements in row-major order.

use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let value = reshaped(self.value(x), shape)?;
        Ok(self.push(value, Op::Reshape(x)))
    }
}

/// `t`'s elements in row-major order, laid out as `shape`.
pub fn reshaped<F: Float>(t: &Tensor<F>, shape: &[usize]) -> Result<Tensor<F>> {
    if shape.iter().product::<usize>() != t.len() {
        return Err(Error::Shape(format!("reshape: cannot view {:?} ({} elements) as {shape:?}", t.shape(), t.len())));
    }
    // A contiguous tensor is one copy; `iter()` over a dynamic-rank array walks an index
    // per element (a quarter of a softmax regression's step).
    let values = match t.as_slice() {
        Some(s) => s.to_vec(),
        None => t.iter().copied().collect(),
    };
    Ok(Tensor::from_shape_vec(shape.to_vec(), values).expect("element count checked"))
}

pub fn reshape_backward<F: Float>(x: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    reshaped(g, x.shape()).expect("gradient has the output's element count")
}
