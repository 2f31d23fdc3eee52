//! Every op of the program format, with its attributes drawn over their valid domain
//! (strides, paddings, bias or not, affine or not, training or eval, masks), checked two
//! ways on random shapes and values (256 cases each): the engine's handwritten gradient
//! against central finite differences in f64, and its forward and backward against
//! candle (and libtorch with `--features torch`) in f32 and f64. Adding an op means one
//! line in `op_tests!` and one arm in `case_for` (`src/study/ops/cases.rs`, shared with
//! `parity-report ops`).

use backprop_parity::backends::{Backend, BackendKind, CandleBackend, MaxPoolMode};
use backprop_parity::host::HostTensor;
use backprop_parity::models::{Op, Program};
use backprop_parity::parity::{compare, largest_magnitude, numeric_gradient, Tolerance};
use backprop_parity::study::ops::cases::case_for;
use backprop_parity::DType;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn describe(op: &Op, inputs: &[HostTensor]) -> String {
    let attrs = serde_json::to_string(op).unwrap();
    format!("{attrs}; {}", inputs.iter().map(|t| format!("shape {:?} values {:?}", t.shape, t.data)).collect::<Vec<_>>().join("; "))
}

/// The op alone, its loss a weighted sum of its output (`Program::weighted`), and its
/// inputs with the cotangent appended.
fn program_of(op: &Op, inputs: &[Option<HostTensor>]) -> (Program, Vec<HostTensor>) {
    let shapes: Vec<Option<Vec<usize>>> = inputs.iter().map(|t| t.as_ref().map(|t| t.shape.clone())).collect();
    let (program, w) = Program::weighted(op.clone(), &shapes).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
    let mut values: Vec<HostTensor> = inputs.iter().flatten().cloned().collect();
    values.extend(w.map(|s| Program::cotangent(&s)));
    (program, values)
}

/// The engine's gradient of the op's scalar against central differences in f64.
fn check_finite_differences(op: &Op, inputs: &[Option<HostTensor>]) -> Result<(), TestCaseError> {
    let (program, inputs) = program_of(op, inputs);
    let engine = BackendKind::Engine.create().unwrap();
    let analytic = engine.evaluate(&program, &inputs, DType::F64).unwrap();
    let f = |xs: &[HostTensor]| engine.evaluate(&program, xs, DType::F64).unwrap().output;
    let grad_inputs: Vec<usize> = program.grad_inputs().map(|(i, _)| i).collect();
    prop_assert_eq!(grad_inputs.len(), analytic.grads.len());
    for (&i, ana) in grad_inputs.iter().zip(&analytic.grads) {
        let num = numeric_gradient(&f, &inputs, i, 1e-6);
        for (j, (a, n)) in ana.data.iter().zip(&num.data).enumerate() {
            prop_assert!(
                (a - n).abs() <= 1e-6 + 1e-6 * n.abs(),
                "{}: d/d input {i} [{j}]: handwritten {a} vs finite difference {n}; {}",
                op.name(),
                describe(op, &inputs)
            );
        }
    }
    Ok(())
}

/// 256 cases per property from a fixed seed: CI runs the same cases on every machine,
/// so a result does not depend on the day's draw (an unlucky draw once put a 16-term f32
/// convolution sum 1.2e-5 away from libtorch's, just past PyTorch's atol of 1e-5).
fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0f_0b5), ..ProptestConfig::default() }
}

/// Where candle fails instead of computing: its max-pooling has no padding and the
/// exact max-pool covers window = stride only (refusals); and candle-core 0.11.1's
/// conv2d backward sizes the input gradient's output padding from the height alone, so
/// with a stride whose remainders differ between height and width
/// (`(H + 2p - k) % s != (W + 2p - k) % s`) the backward stops with a shape mismatch,
/// and once `2p > (out - 1)·s + k` its unsigned size arithmetic underflows and panics
/// (findings; see the README).
fn candle_refuses(op: &Op, inputs: &[HostTensor]) -> bool {
    match op {
        Op::MaxPool2d { kernel, stride, padding } => *padding > 0 || stride.is_some_and(|s| s != *kernel),
        Op::Conv2d { stride, padding } => {
            let (x, k, (s, p)) = (&inputs[0].shape, inputs[1].shape[2], (*stride, *padding));
            let out = |d: usize| (d + 2 * p - k) / s + 1;
            // It sizes each dimension in unsigned arithmetic, which underflows once the
            // padding outgrows the gradient: a panic where overflow checks are on (this
            // test profile); a release build wraps around to the right size.
            let underflows = |d: usize| cfg!(debug_assertions) && (out(d) - 1) * s + k < 2 * p;
            (x[2] + 2 * p - k) % s != (x[3] + 2 * p - k) % s || underflows(x[2]) || underflows(x[3])
        }
        _ => false,
    }
}

/// Output and every gradient of the engine against another backend. A configuration
/// the other backend has no implementation for must be refused with an error that names
/// the op, never a panic, and no other configuration may be refused.
fn check_against(op: &Op, other: BackendKind, inputs: &[Option<HostTensor>]) -> Result<(), TestCaseError> {
    let (program, inputs) = program_of(op, inputs);
    for dtype in DType::ALL {
        let inputs: Vec<HostTensor> = inputs.iter().map(|t| t.rounded(dtype)).collect();
        let ours = BackendKind::Engine.create().unwrap().evaluate(&program, &inputs, dtype).unwrap();
        let theirs = match reference(other).evaluate(&program, &inputs, dtype) {
            Ok(t) => t,
            Err(e) => {
                let refusal = e.to_string();
                prop_assert!(other == BackendKind::Candle && candle_refuses(op, &inputs), "{other} failed on {}: {refusal}", describe(op, &inputs));
                prop_assert!(refusal.contains(op.name()) || refusal.contains("shape mismatch") || refusal.contains("panicked"), "{other}'s refusal says neither the op nor the shape: {refusal}");
                return Ok(());
            }
        };
        prop_assert!(!(other == BackendKind::Candle && candle_refuses(op, &inputs)), "candle was expected to refuse {}", describe(op, &inputs));
        let tol = match dtype {
            DType::F64 => Tolerance { rtol: 1e-12, atol: 1e-12 },
            DType::F32 => Tolerance::torch_default(DType::F32),
        };
        prop_assert!(
            tol.holds(ours.output, theirs.output),
            "{} {dtype}: output engine {} vs {other} {}; {}",
            op.name(),
            ours.output,
            theirs.output,
            describe(op, &inputs)
        );
        // Ill-conditioned cases (batch norm of nearly equal values) have tiny gradients
        // made of rounding noise: judge those relative to the largest gradient entry.
        let scale = largest_magnitude(&theirs.grads);
        let scaled_tol = match dtype {
            DType::F64 => 1e-10,
            DType::F32 => 1e-4,
        };
        prop_assert_eq!(ours.grads.len(), theirs.grads.len());
        for (i, (a, b)) in ours.grads.iter().zip(&theirs.grads).enumerate() {
            let d = compare(a, b, dtype, tol).unwrap();
            prop_assert!(
                d.within_tolerance || (!d.non_finite && d.max_abs <= scaled_tol * scale),
                "{} {dtype}: gradient of input {i}: engine vs {other} max abs {:e} at {}; engine {:?} {other} {:?}; {}",
                op.name(),
                d.max_abs,
                d.worst_index,
                a.data,
                b.data,
                describe(op, &inputs)
            );
        }
    }
    Ok(())
}

/// candle with its max-pool fixed: the released backward is checked on its own below.
fn reference(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Candle => Box::new(CandleBackend { maxpool: MaxPoolMode::Exact }),
        other => other.create().unwrap(),
    }
}

macro_rules! op_tests {
    ($($name:ident;)*) => {
        const TESTED: &[&str] = &[$(stringify!($name)),*];
        $(
            mod $name {
                use super::*;
                proptest! {
                    #![proptest_config(config())]
                    #[test]
                    fn gradient_matches_finite_differences((op, inputs) in case_for(stringify!($name))) {
                        check_finite_differences(&op, &inputs)?;
                    }
                    #[test]
                    fn engine_matches_candle((op, inputs) in case_for(stringify!($name))) {
                        check_against(&op, BackendKind::Candle, &inputs)?;
                    }
                }
                #[cfg(feature = "torch")]
                proptest! {
                    #![proptest_config(config())]
                    #[test]
                    fn engine_matches_libtorch((op, inputs) in case_for(stringify!($name))) {
                        check_against(&op, BackendKind::Torch, &inputs)?;
                    }
                }
            }
        )*
    };
}

// One line per op of the program format (`every_op_has_its_op_tests` holds the list to
// the format's).
op_tests! {
    matmul;
    add;
    sub;
    mul;
    neg;
    sigmoid;
    square;
    relu;
    tanh;
    exp;
    log;
    sum;
    mean;
    max_pool2d;
    conv2d;
    linear;
    batch_norm;
    softmax;
    log_softmax;
    nll_loss;
    cross_entropy;
    dropout;
    reshape;
    flatten;
}

/// The finding behind `--candle-maxpool`: candle-core 0.11.1's own max-pool backward
/// gives a unique maximum a quarter of its gradient (4x4 input, 2x2 pool, sum loss).
#[test]
fn candles_released_max_pool_backward_scales_a_unique_maximum_by_a_quarter() {
    let x = HostTensor { shape: vec![1, 1, 4, 4], data: (0..16).map(f64::from).collect() };
    let program = Program::single(Op::MaxPool2d { kernel: 2, stride: None, padding: 0 }, &[Some(vec![1, 1, 4, 4])]);
    let engine = BackendKind::Engine.create().unwrap().evaluate(&program, std::slice::from_ref(&x), DType::F64).unwrap();
    let builtin = CandleBackend { maxpool: MaxPoolMode::Builtin }.evaluate(&program, std::slice::from_ref(&x), DType::F64).unwrap();
    let exact = CandleBackend { maxpool: MaxPoolMode::Exact }.evaluate(&program, std::slice::from_ref(&x), DType::F64).unwrap();
    let maxima = [5, 7, 13, 15];
    for i in 0..16 {
        let want = if maxima.contains(&i) { 1.0 } else { 0.0 };
        assert_eq!(engine.grads[0].data[i], want, "engine [{i}]");
        assert_eq!(exact.grads[0].data[i], want, "candle exact [{i}]");
        assert_eq!(builtin.grads[0].data[i], want * 0.25, "candle builtin [{i}]");
    }
}

/// NaN, infinities and signed zeros through ReLU as PyTorch treats them: relu is
/// clamp_min(x, 0), so NaN and -0.0 come out unchanged, and threshold_backward passes
/// the gradient where the output is not <= 0, NaN included. (The backends' `evaluate`
/// refuses non-finite inputs, so the engine's graph and libtorch are called directly.)
#[test]
fn relu_treats_nan_and_signed_zeros_as_pytorch_does() {
    use backprop_parity::engine::{Graph, Tensor};
    let input = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 2.0];
    let mut g = Graph::<f64>::new();
    let x = g.param(Tensor::from_shape_vec(vec![6], input.to_vec()).unwrap());
    let y = g.relu(x);
    let loss = g.sum(y);
    let grads = g.backward(loss).unwrap();
    let engine_y: Vec<f64> = g.value(y).iter().copied().collect();
    let engine_g: Vec<f64> = grads.get(x).unwrap().iter().copied().collect();
    let bits = |v: &[f64]| v.iter().map(|v| if v.is_nan() { u64::MAX } else { v.to_bits() }).collect::<Vec<_>>();
    assert_eq!(bits(&engine_y), bits(&[f64::NAN, f64::INFINITY, 0.0, -0.0, 0.0, 2.0]), "engine relu {engine_y:?}");
    assert_eq!(engine_g, [1.0, 1.0, 0.0, 0.0, 0.0, 1.0], "engine relu gradient");
    #[cfg(feature = "torch")]
    {
        let tx = tch::Tensor::from_slice(&input).set_requires_grad(true);
        let ty = tx.relu();
        ty.sum(tch::Kind::Double).backward();
        let torch_y: Vec<f64> = Vec::try_from(&ty.detach()).unwrap();
        let torch_g: Vec<f64> = Vec::try_from(&tx.grad()).unwrap();
        assert_eq!(bits(&engine_y), bits(&torch_y), "relu: engine {engine_y:?} vs libtorch {torch_y:?}");
        assert_eq!(engine_g, torch_g, "relu gradient: engine vs libtorch");
    }
}

#[test]
fn every_op_has_its_op_tests() {
    for op in Op::NAMES {
        assert!(TESTED.contains(&op), "{op} has no line in op_tests!");
    }
}

#[allow(dead_code)]
fn assert_backend_object_safe(_: &dyn Backend) {}
