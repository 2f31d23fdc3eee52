//! Finite-difference gradients: the check that needs no second framework.

use crate::host::HostTensor;

/// Central differences `(f(x+h) - f(x-h)) / 2h` of the scalar `f` with respect to every
/// entry of `inputs[which]`, with `h = h_rel · max(1, |x|)`.
pub fn numeric_gradient(f: &dyn Fn(&[HostTensor]) -> f64, inputs: &[HostTensor], which: usize, h_rel: f64) -> HostTensor {
    let mut probe = inputs.to_vec();
    let mut grad = HostTensor::filled(&inputs[which].shape, 0.0);
    for j in 0..inputs[which].data.len() {
        let x = inputs[which].data[j];
        let h = h_rel * x.abs().max(1.0);
        probe[which].data[j] = x + h;
        let up = f(&probe);
        probe[which].data[j] = x - h;
        let down = f(&probe);
        probe[which].data[j] = x;
        grad.data[j] = (up - down) / (2.0 * h);
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differentiates_a_cubic() {
        let x = HostTensor { shape: vec![2], data: vec![1.5, -2.0] };
        let f = |t: &[HostTensor]| t[0].data.iter().map(|v| v * v * v).sum::<f64>();
        let g = numeric_gradient(&f, &[x], 0, 1e-5);
        assert!((g.data[0] - 3.0 * 1.5 * 1.5).abs() < 1e-8);
        assert!((g.data[1] - 12.0).abs() < 1e-8);
    }
}
