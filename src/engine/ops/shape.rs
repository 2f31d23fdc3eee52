//! Shape changes that keep the elements in row-major order.

use ndarray::{Axis, Slice};

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

impl<F: Float> Graph<F> {
    /// `x.permute(dims)`: output axis i is input axis `dims[i]` (copied to row-major).
    pub fn permute(&mut self, x: Var, dims: &[usize]) -> Result<Var> {
        let xv = self.value(x);
        let mut seen = vec![false; xv.ndim()];
        if dims.len() != xv.ndim() || dims.iter().any(|&d| d >= seen.len() || std::mem::replace(&mut seen[d], true)) {
            return Err(Error::Shape(format!(
                "permute: {dims:?} is not a permutation of the axes of {:?}",
                xv.shape()
            )));
        }
        let value = xv.view().permuted_axes(dims.to_vec()).as_standard_layout().into_owned();
        Ok(self.push(value, Op::Permute { x, dims: dims.into() }))
    }

    /// `x.transpose(a, b)`: a permutation swapping two axes.
    pub fn transpose(&mut self, x: Var, a: usize, b: usize) -> Result<Var> {
        let mut dims: Vec<usize> = (0..self.value(x).ndim()).collect();
        if a >= dims.len() || b >= dims.len() {
            return Err(Error::Shape(format!("transpose: axes {a} and {b} of {:?}", self.value(x).shape())));
        }
        dims.swap(a, b);
        self.permute(x, &dims)
    }

    /// `torch.cat(xs, axis)`.
    pub fn concat(&mut self, xs: &[Var], axis: usize) -> Result<Var> {
        let views: Vec<_> = xs.iter().map(|&v| self.value(v).view()).collect();
        if views.is_empty() || axis >= views[0].ndim() {
            return Err(Error::Shape(format!("concat: axis {axis} of {} inputs", views.len())));
        }
        let value = ndarray::concatenate(Axis(axis), &views)
            .map_err(|e| Error::Shape(format!("concat: {e}")))?
            .as_standard_layout()
            .into_owned();
        Ok(self.push(value, Op::Concat { xs: xs.into(), axis }))
    }

    /// `x.narrow(axis, start, length)`.
    pub fn narrow(&mut self, x: Var, axis: usize, start: usize, length: usize) -> Result<Var> {
        let xv = self.value(x);
        if axis >= xv.ndim() || start + length > xv.shape()[axis] {
            return Err(Error::Shape(format!(
                "narrow: axis {axis}, start {start}, length {length} of {:?}",
                xv.shape()
            )));
        }
        let value = xv.slice_axis(Axis(axis), Slice::from(start..start + length)).as_standard_layout().into_owned();
        Ok(self.push(value, Op::Narrow { x, axis, start }))
    }
}

/// The gradient of a permutation is the inverse permutation of `g`.
pub fn permute_backward<F: Float>(g: &Tensor<F>, dims: &[usize]) -> Tensor<F> {
    let mut inverse = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate() {
        inverse[d] = i;
    }
    g.view().permuted_axes(inverse).as_standard_layout().into_owned()
}

/// Each input's gradient is its slice of `g` along `axis`.
pub fn concat_backward<F: Float>(sizes: &[usize], g: &Tensor<F>, axis: usize) -> Vec<Tensor<F>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let part = g.slice_axis(Axis(axis), Slice::from(start..start + n)).as_standard_layout().into_owned();
            start += n;
            part
        })
        .collect()
}

/// `g` in place of the narrowed slice, zero elsewhere.
pub fn narrow_backward<F: Float>(x: &Tensor<F>, g: &Tensor<F>, axis: usize, start: usize) -> Tensor<F> {
    let mut out = Tensor::zeros(x.raw_dim());
    let n = g.shape()[axis];
    out.slice_axis_mut(Axis(axis), Slice::from(start..start + n)).assign(g);
    out
}
