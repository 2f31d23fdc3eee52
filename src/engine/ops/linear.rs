//! `torch.nn.functional.linear` for a batch of rows: `x·wᵀ + b`.
//!
//! With a bias ATen calls `addmm(b, x, wᵀ)`: BLAS finishes each dot product (the
//! engine's sequential-k FMA `gemm`) and then adds the bias, so the bias is added last.

use ndarray::{Axis, Ix1, Ix2};

use super::gemm::gemm;
use super::reduce::cascade_sum;
use crate::engine::{Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

impl<F: Float> Graph<F> {
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let value = forward(self.value(x), self.value(w), b.map(|b| self.value(b)))?;
        Ok(self.push(value, Op::Linear { x, w, b }))
    }
}

pub fn forward<F: Float>(x: &Tensor<F>, w: &Tensor<F>, b: Option<&Tensor<F>>) -> Result<Tensor<F>> {
    let (xs, ws, bs) = (x.shape(), w.shape(), b.map(|b| b.shape()));
    let ok = xs.len() == 2 && ws.len() == 2 && xs[1] == ws[1] && bs.is_none_or(|bs| bs == [ws[0]]);
    if !ok {
        return Err(Error::Shape(format!(
            "linear: input {xs:?}, weight {ws:?}, bias {bs:?}: need input [N,in], weight [out,in], bias [out]"
        )));
    }
    let x2 = x.view().into_dimensionality::<Ix2>().expect("checked");
    let w2 = w.view().into_dimensionality::<Ix2>().expect("checked");
    let mut y = gemm(x2, w2.t());
    if let Some(b) = b {
        let b = b.view().into_dimensionality::<Ix1>().expect("checked");
        for mut row in y.axis_iter_mut(Axis(0)) {
            row.zip_mut_with(&b, |v, &bias| *v = bias + *v);
        }
    }
    Ok(y.into_dyn())
}

/// `dx = G·w`, `dw = Gᵀ·x`, `db = Σ_rows G`; only those asked for.
pub fn backward<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    g: &Tensor<F>,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> (Option<Tensor<F>>, Option<Tensor<F>>, Option<Tensor<F>>) {
    let x2 = x.view().into_dimensionality::<Ix2>().expect("checked in forward");
    let w2 = w.view().into_dimensionality::<Ix2>().expect("checked in forward");
    let g2 = g.view().into_dimensionality::<Ix2>().expect("linear output is 2-D");
    let gx = need_x.then(|| gemm(g2, w2).into_dyn());
    let gw = need_w.then(|| gemm(g2.t(), x2).into_dyn());
    // `addmm`'s backward reduces the gradient to the bias with `sum(0)`, which adds the
    // rows of each column in ATen's cascade order.
    let gb = need_b.then(|| {
        let sums: ndarray::Array1<F> = g2.axis_iter(Axis(1)).map(|col| cascade_sum(col.iter().copied())).collect();
        sums.into_dyn()
    });
    (gx, gw, gb)
}
