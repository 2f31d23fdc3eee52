//! Gathers and selections: `index_select`, `embedding` and `where` (with `masked_fill`
//! as `where(mask, value, x)`). Indices and masks are data, never differentiated; the
//! backward scatters (adds) the gradient back in index order, as ATen's `index_add_` and
//! `embedding_dense_backward` do, so repeated indices accumulate.

use std::sync::Arc;

use ndarray::{Axis, Dimension, Zip};

use super::elementwise::{broadcast_shape, unbroadcast};
use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    /// `x.index_select(axis, index)`.
    pub fn index_select(&mut self, x: Var, axis: usize, index: &[usize]) -> Result<Var> {
        let xv = self.value(x);
        if axis >= xv.ndim() {
            return Err(Error::Shape(format!("index_select: axis {axis} of {:?}", xv.shape())));
        }
        if let Some(&bad) = index.iter().find(|&&i| i >= xv.shape()[axis]) {
            return Err(Error::Invalid(format!(
                "index_select: index {bad} is out of range for dimension {axis} of size {}",
                xv.shape()[axis]
            )));
        }
        let value = xv.select(Axis(axis), index);
        Ok(self.push(value, Op::IndexSelect { x, axis, index: index.into() }))
    }

    /// `embedding(weight [V, D], indices)`: the rows `indices` (of shape `index_shape`)
    /// as a tensor `index_shape + [D]`. The row `padding` receives no gradient.
    pub fn embedding(
        &mut self,
        weight: Var,
        indices: &[usize],
        index_shape: &[usize],
        padding: Option<usize>,
    ) -> Result<Var> {
        let w = self.value(weight);
        if w.ndim() != 2 || index_shape.iter().product::<usize>() != indices.len() {
            return Err(Error::Shape(format!(
                "embedding: weight {:?} must be [V, D] and indices of shape {index_shape:?}",
                w.shape()
            )));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= w.shape()[0]) {
            return Err(Error::Invalid(format!("embedding: index {bad} is out of range for {} rows", w.shape()[0])));
        }
        let rows = w.select(Axis(0), indices);
        let mut shape = index_shape.to_vec();
        shape.push(w.shape()[1]);
        let value = rows.into_shape_with_order(shape).expect("same length").into_dyn();
        Ok(self.push(value, Op::Embedding { weight, indices: indices.into(), padding }))
    }

    /// `torch.where(cond, a, b)` for a condition already broadcast to, or broadcasting
    /// with, `a` and `b` (`cond_shape`, row-major).
    pub fn where_(&mut self, cond: &[bool], cond_shape: &[usize], a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a), self.value(b));
        let shape = broadcast_shape(&broadcast_shape(cond_shape, av.shape())?.slice().to_vec(), bv.shape())?;
        let c = ndarray::ArrayViewD::from_shape(cond_shape.to_vec(), cond)
            .map_err(|e| Error::Shape(format!("where: condition: {e}")))?;
        let c = c.broadcast(shape.clone()).expect("checked").to_owned();
        let mut value = Tensor::<F>::zeros(shape.clone());
        Zip::from(&mut value)
            .and(&c)
            .and(&av.broadcast(shape.clone()).expect("checked"))
            .and(&bv.broadcast(shape).expect("checked"))
            .for_each(|o, &c, &x, &y| *o = if c { x } else { y });
        let keep: Arc<[bool]> = c.iter().copied().collect();
        Ok(self.push(value, Op::Where { a, b, cond: keep }))
    }

    /// `x.masked_fill(mask, value)` = `where(mask, value, x)`.
    pub fn masked_fill(&mut self, x: Var, mask: &[bool], mask_shape: &[usize], value: f64) -> Result<Var> {
        let v = self.constant(ndarray::arr0(F::of(value)).into_dyn());
        self.where_(mask, mask_shape, v, x)
    }
}

/// `index_add_`: the gradient of each selected slice added back at its index.
pub fn index_select_backward<F: Float>(x: &Tensor<F>, g: &Tensor<F>, axis: usize, index: &[usize]) -> Tensor<F> {
    let mut out = Tensor::zeros(x.raw_dim());
    for (j, &i) in index.iter().enumerate() {
        let mut dst = out.index_axis_mut(Axis(axis), i);
        dst += &g.index_axis(Axis(axis), j);
    }
    out
}

/// ATen's `embedding_dense_backward`: each index position's gradient row added to its
/// weight row, in index order, except for the padding row.
pub fn embedding_backward<F: Float>(
    w: &Tensor<F>,
    g: &Tensor<F>,
    indices: &[usize],
    padding: Option<usize>,
) -> Tensor<F> {
    let d = w.shape()[1];
    let mut out = Tensor::zeros(w.raw_dim());
    let g = g.as_standard_layout();
    let rows = g.as_slice().expect("standard layout");
    for (j, &i) in indices.iter().enumerate() {
        if Some(i) == padding {
            continue;
        }
        let mut dst = out.index_axis_mut(Axis(0), i);
        for (o, &v) in dst.iter_mut().zip(&rows[j * d..(j + 1) * d]) {
            *o += v;
        }
    }
    out
}

/// `where(cond, g, 0)` and `where(cond, 0, g)`, each summed back to its operand's shape.
pub fn where_backward<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    g: &Tensor<F>,
    cond: &[bool],
    need_a: bool,
    need_b: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>) {
    let pick = |take: bool| {
        let mut out = g.as_standard_layout().into_owned();
        out.iter_mut().zip(cond).for_each(|(o, &c)| {
            if c != take {
                *o = F::zero();
            }
        });
        out
    };
    (need_a.then(|| unbroadcast(pick(true), a.shape())), need_b.then(|| unbroadcast(pick(false), b.shape())))
}
