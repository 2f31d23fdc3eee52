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
        fma_update(F::of(-self.lr), param, v);
    }
}

/// `p = fma(neg_lr, v, p)`. Built without FMA enabled, `mul_add` is a call into libm per
/// element (a sixth of an MLP step); with FMA detected the same loop runs as `vfmadd`.
/// Both are the correctly rounded fused operation, so the bits are the same.
fn fma_update<F: Float>(neg_lr: F, param: &mut Tensor<F>, v: &Tensor<F>) {
    if let (Some(p), Some(v)) = (param.as_slice_mut(), v.as_slice()) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA.
            unsafe { fma_update_hw(neg_lr, p, v) };
            return;
        }
        fma_update_slices(neg_lr, p, v);
        return;
    }
    ndarray::Zip::from(param).and(v).for_each(|p, &v| *p = neg_lr.mul_add(v, *p));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_update_hw<F: Float>(neg_lr: F, p: &mut [F], v: &[F]) {
    fma_update_slices(neg_lr, p, v)
}

#[inline(always)]
fn fma_update_slices<F: Float>(neg_lr: F, p: &mut [F], v: &[F]) {
    for (p, &v) in p.iter_mut().zip(v) {
        *p = neg_lr.mul_add(v, *p);
    }
}
