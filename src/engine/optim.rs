//! Optimisers that update engine tensors in place.

use super::faults::{self, Fault};
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

/// PyTorch's SGD with momentum (no dampening, no Nesterov, no weight decay).
///
/// ATen rounds the velocity update in two steps, `v = v*momentum` then `v = v + g`, and
/// applies the step with `param.add_(v, alpha=-lr)`, whose CPU kernel is a fused
/// multiply-add: `p = fma(-lr, v, p)`, one rounding.
#[derive(Clone, Copy, Debug)]
pub struct SgdMomentum {
    pub lr: f64,
    pub momentum: f64,
}

impl SgdMomentum {
    /// `velocity` starts as `None`; the first step sets it to a copy of the gradient, as
    /// `torch.optim.SGD` initialises its momentum buffer.
    pub fn step<F: Float>(&self, param: &mut Tensor<F>, grad: &Tensor<F>, velocity: &mut Option<Tensor<F>>) {
        let momentum = F::of(self.momentum);
        let v = match velocity {
            Some(v) => {
                if faults::on(Fault::MomentumWithDampening) {
                    let damp = F::one() - momentum;
                    ndarray::Zip::from(&mut *v).and(grad).for_each(|v, &g| *v = *v * momentum + damp * g);
                } else {
                    ndarray::Zip::from(&mut *v).and(grad).for_each(|v, &g| *v = *v * momentum + g);
                }
                v
            }
            None => velocity.insert(grad.clone()),
        };
        let neg_lr = F::of(-self.lr);
        ndarray::Zip::from(param).and(&*v).for_each(|p, &v| *p = neg_lr.mul_add(v, *p));
    }
}
