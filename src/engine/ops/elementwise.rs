//! Element-wise ops. Binary ops broadcast like NumPy and PyTorch; their backward sums the
//! gradient back over the broadcast axes. A unary op is a forward `f` and a backward
//! written in the same arithmetic order PyTorch's autograd uses, so rounding matches.

use std::mem::MaybeUninit;

use ndarray::{Axis, Dimension, IxDyn};

use super::activation as act;
use crate::engine::faults::{self, Fault};
use crate::engine::{parallel, Float, Graph, Op, Tensor, Var};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// NaN propagates; a tie splits the gradient half and half.
    Maximum,
}

/// Unary element-wise ops; those with attributes carry them (see `activation.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Sigmoid,
    Square,
    Relu,
    Tanh,
    Exp,
    Log,
    Gelu { tanh: bool },
    Silu,
    Elu { alpha: f64 },
    LeakyRelu { negative_slope: f64 },
    Softplus { beta: f64, threshold: f64 },
    Sqrt,
    Abs,
    Clamp { min: Option<f64>, max: Option<f64> },
    Pow { exponent: f64 },
}

impl<F: Float> Graph<F> {
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn maximum(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Maximum, a, b)
    }

    pub fn binary(&mut self, kind: BinaryOp, a: Var, b: Var) -> Result<Var> {
        let value = binary_forward(kind, self.value(a), self.value(b))?;
        Ok(self.push(value, Op::Binary(kind, a, b)))
    }

    pub fn neg(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Neg, a)
    }
    pub fn sigmoid(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Sigmoid, a)
    }
    pub fn square(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Square, a)
    }
    pub fn relu(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Relu, a)
    }
    pub fn tanh(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Tanh, a)
    }
    pub fn exp(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Exp, a)
    }
    pub fn log(&mut self, a: Var) -> Var {
        self.unary(UnaryOp::Log, a)
    }

    pub fn unary(&mut self, kind: UnaryOp, a: Var) -> Var {
        let value = match kind {
            // Written out so that the loop is a vector select, not a call per element.
            UnaryOp::Relu => map_each(self.value(a), |x| if x < F::zero() { F::zero() } else { x }),
            _ => map_each(self.value(a), move |x| kind.forward(x)),
        };
        self.push(value, Op::Unary(kind, a))
    }
}

impl UnaryOp {
    pub fn forward<F: Float>(self, x: F) -> F {
        let one = F::one();
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Sigmoid => one / (one + (-x).exp()),
            UnaryOp::Square => x * x,
            // ATen's relu is clamp_min(x, 0), `x < 0 ? 0 : x`: NaN stays NaN and -0.0
            // stays -0.0.
            UnaryOp::Relu => {
                if x < F::zero() {
                    F::zero()
                } else {
                    x
                }
            }
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Gelu { tanh } => act::gelu(x, tanh),
            UnaryOp::Silu => act::silu(x),
            UnaryOp::Elu { alpha } => act::elu(x, alpha),
            UnaryOp::LeakyRelu { negative_slope } => act::leaky_relu(x, negative_slope),
            UnaryOp::Softplus { beta, threshold } => act::softplus(x, beta, threshold),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Clamp { min, max } => act::clamp(x, min, max),
            UnaryOp::Pow { exponent } => act::pow(x, exponent),
        }
    }

    /// Upstream gradient `g` times the local derivative at input `x`, output `y`.
    pub fn backward<F: Float>(self, g: F, x: F, y: F) -> F {
        let one = F::one();
        match self {
            UnaryOp::Neg => -g,
            UnaryOp::Sigmoid if faults::on(Fault::SigmoidDerivativeOnInput) => g * (one - x) * x,
            UnaryOp::Sigmoid => g * (one - y) * y,
            UnaryOp::Square => g * (F::of(2.0) * x),
            // ATen's threshold_backward, `y <= 0 ? 0 : g`: the gradient passes where the
            // output is positive or NaN.
            UnaryOp::Relu => {
                if !(y <= F::zero()) || faults::on(Fault::ReluGradAtZeroFlipped) {
                    g
                } else {
                    F::zero()
                }
            }
            UnaryOp::Tanh => g * (one - y * y),
            UnaryOp::Exp => g * y,
            UnaryOp::Log => g / x,
            UnaryOp::Gelu { tanh } => act::gelu_backward(g, x, tanh),
            UnaryOp::Silu => act::silu_backward(g, x),
            UnaryOp::Elu { alpha } => act::elu_backward(g, x, alpha),
            UnaryOp::LeakyRelu { negative_slope } => act::leaky_relu_backward(g, x, negative_slope),
            UnaryOp::Softplus { beta, threshold } => act::softplus_backward(g, x, beta, threshold),
            UnaryOp::Sqrt => act::sqrt_backward(g, y),
            UnaryOp::Abs => act::abs_backward(g, x),
            UnaryOp::Clamp { min, max } => act::clamp_backward(g, x, min, max),
            UnaryOp::Pow { exponent } => act::pow_backward(g, x, exponent),
        }
    }
}

pub fn unary_backward<F: Float>(kind: UnaryOp, x: &Tensor<F>, y: &Tensor<F>, g: &Tensor<F>) -> Tensor<F> {
    if let (UnaryOp::Relu, Some(ys), Some(gs)) = (kind, y.as_slice(), g.as_slice()) {
        // The fault is looked up once, not per element (a thread-local read each time
        // cost as much as the rest of the loop).
        let pass_all = faults::on(Fault::ReluGradAtZeroFlipped);
        return from_chunks(y.raw_dim(), CHUNK, move |start, out| {
            let len = out.len();
            let (ys, gs) = (&ys[start..start + len], &gs[start..start + len]);
            for ((o, &y), &g) in out.iter_mut().zip(ys).zip(gs) {
                // `|` rather than `||`: a select the loop can vectorise.
                o.write(if !(y <= F::zero()) | pass_all { g } else { F::zero() });
            }
        });
    }
    let mut out = g.clone();
    ndarray::Zip::from(&mut out).and(x).and(y).for_each(|o, &x, &y| *o = kind.backward(*o, x, y));
    out
}

/// Element-wise ops on tensors at least this long are split between the engine's
/// threads (the activations of the convolutions: 78 400 to 313 600 values at batch 25).
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// Values per task of the element-wise ops.
const CHUNK: usize = 1 << 14;

/// `f` of every element, in parallel chunks when `x` is long and contiguous.
pub fn map_each<F: Float>(x: &Tensor<F>, f: impl Fn(F) -> F + Sync + Copy) -> Tensor<F> {
    match x.as_slice() {
        Some(xs) if xs.len() >= PARALLEL_MIN_LEN => from_chunks(x.raw_dim(), CHUNK, move |start, out| {
            let len = out.len();
            out.iter_mut().zip(&xs[start..start + len]).for_each(|(o, &v)| {
                o.write(f(v));
            });
        }),
        _ => x.mapv(f),
    }
}

/// A row-major tensor of `shape` whose values `fill(start, values)` writes `chunk` at a
/// time (`start` is the first flat index of `values`), chunks shared between the threads.
/// `fill` must write every value of its chunk (they start uninitialised: zeroing them
/// first was a tenth of the time of a ReLU).
pub fn from_chunks<F: Float>(shape: IxDyn, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<F>]) + Sync) -> Tensor<F> {
    let len = shape.size();
    let chunk = chunk.max(1);
    let mut out: Vec<F> = Vec::with_capacity(len);
    parallel::for_each_chunk(&mut out.spare_capacity_mut()[..len], chunk, |i, values| fill(i * chunk, values));
    // SAFETY: every chunk of the first `len` values was written by `fill`.
    unsafe { out.set_len(len) };
    Tensor::from_shape_vec(shape, out).expect("sizes match")
}

pub fn binary_forward<F: Float>(kind: BinaryOp, a: &Tensor<F>, b: &Tensor<F>) -> Result<Tensor<F>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (a, b) = (a.broadcast(shape.clone()).expect("checked"), b.broadcast(shape).expect("checked"));
    Ok(match kind {
        BinaryOp::Add => &a + &b,
        BinaryOp::Sub => &a - &b,
        BinaryOp::Mul => &a * &b,
        BinaryOp::Div => &a / &b,
        // ATen's maximum: NaN if either is NaN, else `std::max` (`a < b ? b : a`).
        BinaryOp::Maximum => ndarray::Zip::from(&a).and(&b).map_collect(|&x, &y| if x.is_nan() || y.is_nan() { x + y } else if x < y { y } else { x }),
    })
}

/// Gradients of both operands (reduced back to their own shapes).
pub fn binary_backward<F: Float>(kind: BinaryOp, a: &Tensor<F>, b: &Tensor<F>, g: &Tensor<F>) -> (Tensor<F>, Tensor<F>) {
    let (ga, gb) = match kind {
        BinaryOp::Add => (g.clone(), g.clone()),
        BinaryOp::Sub => (g.clone(), g.mapv(|v| -v)),
        BinaryOp::Mul => (g * b, g * a),
        // derivatives.yaml: `grad / other` and `-grad * ((self / other) / other)`.
        BinaryOp::Div => {
            let (a, b) = (a.broadcast(g.raw_dim()).expect("broadcast shape"), b.broadcast(g.raw_dim()).expect("broadcast shape"));
            (g / &b, ndarray::Zip::from(g).and(&a).and(&b).map_collect(|&g, &x, &y| -g * ((x / y) / y)))
        }
        // `where(self == other, grad / 2, grad)`, zero where the operand is the smaller.
        BinaryOp::Maximum => {
            let (a, b) = (a.broadcast(g.raw_dim()).expect("broadcast shape"), b.broadcast(g.raw_dim()).expect("broadcast shape"));
            let half = F::of(0.5);
            let share = |g: F, mine: F, other: F| {
                if mine == other {
                    g * half
                } else if mine < other {
                    F::zero()
                } else {
                    g
                }
            };
            (ndarray::Zip::from(g).and(&a).and(&b).map_collect(|&g, &x, &y| share(g, x, y)), ndarray::Zip::from(g).and(&b).and(&a).map_collect(|&g, &y, &x| share(g, y, x)))
        }
    };
    (unbroadcast(ga, a.shape()), unbroadcast(gb, b.shape()))
}

/// NumPy's broadcasting rule: align trailing axes; each pair is equal or one of them is 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<IxDyn> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() < n { 1 } else { s[i + s.len() - n] };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = (dim(a, i), dim(b, i));
        out.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return Err(Error::Shape(format!("cannot broadcast shapes {a:?} and {b:?}"))),
        });
    }
    Ok(IxDyn(&out))
}

/// Sums `g` over the axes that broadcasting added or stretched, giving `shape`.
pub fn unbroadcast<F: Float>(mut g: Tensor<F>, shape: &[usize]) -> Tensor<F> {
    while g.ndim() > shape.len() {
        g = g.sum_axis(Axis(0));
    }
    for (axis, &n) in shape.iter().enumerate() {
        if n == 1 && g.shape()[axis] != 1 {
            g = g.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    g
}
