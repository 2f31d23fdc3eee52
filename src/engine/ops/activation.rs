//! The activations and element-wise functions with attributes (GELU, SiLU, ELU, leaky
//! ReLU, softplus, sqrt, abs, clamp, pow): per element, a forward and a backward written
//! as ATen's CPU kernels and autograd formulas write them (`GeluKernel.cpp`,
//! `Activation.cpp`, `derivatives.yaml`, `torch/_decomp/decompositions.py`), in the same
//! arithmetic order, so that f64 results agree to the last bits. Also the engine's own
//! erf, a port of fdlibm's `s_erf.c`.

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, SQRT_2};

use crate::engine::Float;

/// GELU, exact (`tanh == false`: `x · ½ · (1 + erf(x/√2))`) or PyTorch's tanh form.
pub fn gelu<F: Float>(x: F, tanh: bool) -> F {
    let (half, one) = (F::of(0.5), F::one());
    if tanh {
        let (beta, kappa) = (F::of(SQRT_2 * FRAC_2_SQRT_PI * 0.5), F::of(0.044715));
        let cube = x * x * x;
        let inner = beta * (x + kappa * cube);
        half * x * (one + inner.tanh())
    } else {
        x * half * (one + erf_of(x * F::of(FRAC_1_SQRT_2)))
    }
}

/// `g · gelu'(x)`: ATen's `GeluBackward` (the decomposition `gelu_backward`).
pub fn gelu_backward<F: Float>(g: F, x: F, tanh: bool) -> F {
    let (half, one) = (F::of(0.5), F::one());
    if tanh {
        let (beta, kappa) = (F::of(SQRT_2 * FRAC_2_SQRT_PI * 0.5), F::of(0.044715));
        let x_sq = x * x;
        let x_cube = x_sq * x;
        let inner = beta * (x + kappa * x_cube);
        let tanh_inner = inner.tanh();
        let left = half * x;
        let right = one + tanh_inner;
        let left_derivative = half * right;
        let tanh_derivative = one - tanh_inner * tanh_inner;
        let inner_derivative = beta * (one + F::of(3.0) * kappa * x_sq);
        let right_derivative = left * tanh_derivative * inner_derivative;
        g * (left_derivative + right_derivative)
    } else {
        let (alpha, beta) = (F::of(FRAC_1_SQRT_2), F::of(FRAC_2_SQRT_PI * FRAC_1_SQRT_2 * 0.5));
        let cdf = half * (one + erf_of(x * alpha));
        let pdf = beta * (x * x * F::of(-0.5)).exp();
        g * (cdf + x * pdf)
    }
}

/// erf in `F`: computed in f64 and rounded (for f32, within half an ulp of the true value
/// almost always; ATen's vectorised float erf is a polynomial of its own).
fn erf_of<F: Float>(x: F) -> F {
    F::of(erf(x.as_f64()))
}

/// `x · sigmoid(x)`, as ATen writes it: `x / (1 + exp(-x))`.
pub fn silu<F: Float>(x: F) -> F {
    x / (F::one() + (-x).exp())
}

/// `g · sigmoid(x) · (1 + x · (1 - sigmoid(x)))` (`silu_backward`).
pub fn silu_backward<F: Float>(g: F, x: F) -> F {
    let one = F::one();
    let sigmoid = one / (one + (-x).exp());
    g * sigmoid * (one + x * (one - sigmoid))
}

/// `x <= 0 ? alpha · expm1(x) : x` (scale and input_scale 1, as `F.elu`).
pub fn elu<F: Float>(x: F, alpha: f64) -> F {
    if x <= F::zero() {
        x.exp_m1() * F::of(alpha)
    } else {
        x
    }
}

/// `elu_backward` with `is_result = false` (what `F.elu` records): the input decides,
/// and `x <= 0` takes the exponential side, so the gradient at 0 is `alpha`.
pub fn elu_backward<F: Float>(g: F, x: F, alpha: f64) -> F {
    if x <= F::zero() {
        g * F::one() * F::of(alpha) * x.exp()
    } else {
        g
    }
}

/// `x > 0 ? x : x · slope`.
pub fn leaky_relu<F: Float>(x: F, slope: f64) -> F {
    if x > F::zero() {
        x
    } else {
        x * F::of(slope)
    }
}

/// `x > 0 ? g : g · slope`: at 0 the slope.
pub fn leaky_relu_backward<F: Float>(g: F, x: F, slope: f64) -> F {
    if x > F::zero() {
        g
    } else {
        g * F::of(slope)
    }
}

/// `beta · x > threshold ? x : log1p(exp(beta · x)) / beta`.
pub fn softplus<F: Float>(x: F, beta: f64, threshold: f64) -> F {
    let bx = x * F::of(beta);
    if bx > F::of(threshold) {
        x
    } else {
        bx.exp().ln_1p() / F::of(beta)
    }
}

/// `softplus_backward`: `z = exp(beta · x)`, `g · z / (z + 1)` below the threshold.
pub fn softplus_backward<F: Float>(g: F, x: F, beta: f64, threshold: f64) -> F {
    let bx = x * F::of(beta);
    if bx > F::of(threshold) {
        g
    } else {
        let z = bx.exp();
        g * z / (z + F::one())
    }
}

/// `g / (2 · sqrt(x))` from the output.
pub fn sqrt_backward<F: Float>(g: F, y: F) -> F {
    g / (F::of(2.0) * y)
}

/// `g · sgn(x)`: 0 at ±0, and 0 at NaN as ATen's sgn (libtorch 2.13:
/// `torch.tensor([nan]).abs().sum().backward()` gives 0; found by the fuzzer's NaN regime).
pub fn abs_backward<F: Float>(g: F, x: F) -> F {
    let sign = if x > F::zero() {
        F::one()
    } else if x < F::zero() {
        -F::one()
    } else {
        F::zero()
    };
    g * sign
}

/// `min(max(x, min), max)` with `std::max`/`std::min`'s comparisons; NaN stays NaN and
/// `min > max` gives `max`.
pub fn clamp<F: Float>(x: F, min: Option<f64>, max: Option<f64>) -> F {
    if x.is_nan() {
        return x;
    }
    let mut v = x;
    if let Some(lo) = min.map(F::of) {
        if v < lo {
            v = lo;
        }
    }
    if let Some(hi) = max.map(F::of) {
        if hi < v {
            v = hi;
        }
    }
    v
}

/// `clamp_backward`: the gradient where `min <= x <= max` (bounds included), else 0.
pub fn clamp_backward<F: Float>(g: F, x: F, min: Option<f64>, max: Option<f64>) -> F {
    let above = min.is_none_or(|lo| x >= F::of(lo));
    let below = max.is_none_or(|hi| x <= F::of(hi));
    if above && below {
        g
    } else {
        F::zero()
    }
}

/// `x ** c` as ATen's `pow(Tensor, Scalar)` computes it: 0 gives ones, 1 a copy, ±½ and
/// -1 the square root, its reciprocal and the reciprocal, 2, 3 and -2 products, any
/// other exponent `pow`.
pub fn pow<F: Float>(x: F, c: f64) -> F {
    let one = F::one();
    match c {
        0.0 => one,
        1.0 => x,
        0.5 => x.sqrt(),
        -0.5 => one / x.sqrt(),
        -1.0 => one / x,
        2.0 => x * x,
        3.0 => x * x * x,
        -2.0 => one / (x * x),
        _ => x.powf(F::of(c)),
    }
}

/// `pow_backward`: zeros for exponent 0, else `g · (c · x ** (c - 1))`.
pub fn pow_backward<F: Float>(g: F, x: F, c: f64) -> F {
    if c == 0.0 {
        F::zero()
    } else {
        g * (F::of(c) * pow(x, c - 1.0))
    }
}

// fdlibm's s_erf.c (Sun Microsystems, 1993: "Permission to use, copy, modify, and
// distribute this software is freely granted, provided that this notice is preserved"),
// erf only. Its four intervals, |x| in [0, 0.84375), [0.84375, 1.25), [1.25, 1/0.35),
// [1/0.35, 6), and ±(1 - tiny) beyond, each a rational approximation accurate to < 1 ulp.
const ERX: f64 = 8.45062911510467529297e-01;
const EFX8: f64 = 1.02703333676410069053e+00;
const PP: [f64; 5] = [
    1.28379167095512558561e-01,
    -3.25042107247001499370e-01,
    -2.84817495755985104766e-02,
    -5.77027029648944159157e-03,
    -2.37630166566501626084e-05,
];
const QQ: [f64; 5] = [
    3.97917223959155352819e-01,
    6.50222499887672944485e-02,
    5.08130628187576562776e-03,
    1.32494738004321644526e-04,
    -3.96022827877536812320e-06,
];
const PA: [f64; 7] = [
    -2.36211856075265944077e-03,
    4.14856118683748331666e-01,
    -3.72207876035701323847e-01,
    3.18346619901161753674e-01,
    -1.10894694282396677476e-01,
    3.54783043256182359371e-02,
    -2.16637559486879084300e-03,
];
const QA: [f64; 6] = [
    1.06420880400844228286e-01,
    5.40397917702171048937e-01,
    7.18286544141962662868e-02,
    1.26171219808761642112e-01,
    1.36370839120290507362e-02,
    1.19844998467991074170e-02,
];
const RA: [f64; 8] = [
    -9.86494403484714822705e-03,
    -6.93858572707181764372e-01,
    -1.05586262253232909814e+01,
    -6.23753324503260060396e+01,
    -1.62396669462573470355e+02,
    -1.84605092906711035994e+02,
    -8.12874355063065934246e+01,
    -9.81432934416914548592e+00,
];
const SA: [f64; 8] = [
    1.96512716674392571292e+01,
    1.37657754143519042600e+02,
    4.34565877475229228821e+02,
    6.45387271733267880336e+02,
    4.29008140027567833386e+02,
    1.08635005541779435134e+02,
    6.57024977031928170135e+00,
    -6.04244152148580987438e-02,
];
const RB: [f64; 7] = [
    -9.86494292470009928597e-03,
    -7.99283237680523006574e-01,
    -1.77579549177547519889e+01,
    -1.60636384855821916062e+02,
    -6.37566443368389627722e+02,
    -1.02509513161107724954e+03,
    -4.83519191608651397019e+02,
];
const SB: [f64; 7] = [
    3.03380607434824582924e+01,
    3.25792512996573918826e+02,
    1.53672958608443695994e+03,
    3.19985821950859553908e+03,
    2.55305040643316442583e+03,
    4.74528541206955367215e+02,
    -2.24409524465858183362e+01,
];

/// `c[0] + s·(c[1] + s·(c[2] + ...))`, Horner's rule as fdlibm nests it.
fn horner(s: f64, c: &[f64]) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| k + s * acc)
}

/// `1 + s·(c[0] + s·(c[1] + ...))`.
fn one_plus(s: f64, c: &[f64]) -> f64 {
    1.0 + s * horner(s, c)
}

/// The error function, `2/√π ∫₀ˣ exp(-t²) dt`, to within one ulp.
pub fn erf(x: f64) -> f64 {
    let hx = (x.to_bits() >> 32) as u32;
    let negative = hx >> 31 != 0;
    let ix = hx & 0x7fff_ffff;
    if ix >= 0x7ff0_0000 {
        // erf(NaN) = NaN, erf(±inf) = ±1.
        return 1.0 - 2.0 * (negative as u8 as f64) + 1.0 / x;
    }
    if ix < 0x3feb_0000 {
        // |x| < 0.84375
        if ix < 0x3e30_0000 {
            // |x| < 2^-28
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let y = horner(z, &PP) / one_plus(z, &QQ);
        return x + x * y;
    }
    let y = if ix < 0x4018_0000 {
        // 0.84375 <= |x| < 6
        1.0 - erfc_mid(ix, x)
    } else {
        1.0 - f64::from_bits(0x0010_0000_0000_0000)
    };
    if negative {
        -y
    } else {
        y
    }
}

/// erfc(|x|) for 0.84375 <= |x| < 6 (`ix`: the high word of |x|).
fn erfc_mid(ix: u32, x: f64) -> f64 {
    if ix < 0x3ff4_0000 {
        // |x| < 1.25
        let s = x.abs() - 1.0;
        return 1.0 - ERX - horner(s, &PA) / one_plus(s, &QA);
    }
    let x = x.abs();
    let s = 1.0 / (x * x);
    let (r, big_s) = if ix < 0x4006_db6d {
        // |x| < 1/0.35
        (horner(s, &RA), one_plus(s, &SA))
    } else {
        (horner(s, &RB), one_plus(s, &SB))
    };
    // x with its low 32 bits cleared, so that z·z is exact.
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + r / big_s).exp() / x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of erf to 17 significant digits (mpmath, 50 digits), one or
    /// more per interval of the approximation, and the symmetry.
    #[test]
    fn erf_matches_high_precision_values_in_every_interval() {
        let cases = [
            (1e-10, 1.1283791670955126e-10),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (0.84, 0.7651427114549945),
            (1.0, 0.8427007929497149),
            (1.2, 0.9103139782296353),
            (2.0, 0.9953222650189527),
            (2.5, 0.9995930479825550),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
            (7.0, 1.0),
        ];
        for (x, want) in cases {
            for (x, want) in [(x, want), (-x, -want)] {
                let got = erf(x);
                assert!((got - want).abs() <= 2.0 * f64::EPSILON * want.abs(), "erf({x}) = {got:e}, want {want:e}");
            }
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert_eq!(erf(f64::NEG_INFINITY), -1.0);
        assert!(erf(f64::NAN).is_nan());
    }
}
