//! Optimisers that update engine tensors in place.

use super::{Float, Tensor};

/// Plain gradient descent, `p = p - lr * g`, rounded in that order (as PyTorch's
/// `p -= lr * p.grad` does), so every backend's update is the same arithmetic.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f64,
}

impl Sgd {
    pub fn step<F: Float>(&self, param: &mut Tensor<F>, grad: &Tensor<F>) {
        let lr = F::of(self.lr);
        ndarray::Zip::from(param).and(grad).for_each(|p, &g| *p = *p - lr * g);
    }
}
