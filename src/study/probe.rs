//! Running one op alone on every backend, on fixed inputs: the tinygrad-style check
//! that localises a disagreement to an op.

use std::collections::BTreeMap;

use serde::Serialize;

use super::lockstep::{backend, BackendOptions};
use super::{backend_pairs, pair_name};
use crate::backends::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::{Op, Program};
use crate::parity::worst_scaled_over;

/// An op run alone (`sum` of its output as the loss).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Probe {
    pub op: String,
    /// Per backend pair: the worst input-gradient difference relative to the largest
    /// gradient entry.
    pub worst_scaled: BTreeMap<String, f64>,
    /// Per backend pair: the relative difference of the loss.
    pub output_rel: BTreeMap<String, f64>,
    pub agree: bool,
}

/// The ops the quick suite probes alone, in the gate's order (its baseline names them).
pub const SUITE_OPS: [&str; 18] = [
    "matmul", "add", "sub", "mul", "neg", "sigmoid", "square", "relu", "tanh", "exp", "log", "sum", "mean", "max_pool2d", "conv2d", "linear",
    "batch_norm", "softmax",
];

/// `n` distinct values in (-0.5, 0.5), none of them 0 (ReLU's kink is not probed).
fn distinct(n: usize, stride: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * stride) % n) as f64 + 0.5) / n as f64 - 0.5).collect()
}

fn t(shape: &[usize], stride: usize) -> HostTensor {
    HostTensor { shape: shape.to_vec(), data: distinct(shape.iter().product(), stride) }
}

/// A fixed configuration and fixed inputs for the op named `name` (`None` for an op
/// that has no probe). With `ties`, a max-pool input holds equal values in every window
/// (where tie-breaking rules differ).
pub fn case(name: &str, ties: bool) -> Option<(Op, Vec<HostTensor>)> {
    let image = t(&[2, 3, 4, 4], 37);
    let labels = HostTensor { shape: vec![4], data: vec![1.0, 0.0, 5.0, 3.0] };
    let op = match name {
        "max_pool2d" => Op::MaxPool2d { kernel: 2, stride: None, padding: 0, ceil_mode: false },
        "conv2d" => Op::Conv2d { stride: 1, padding: 1, dilation: 1, groups: 1 },
        "batch_norm" => Op::BatchNorm { training: true, momentum: 0.1, eps: 1e-5 },
        "softmax" => Op::Softmax { dim: 1 },
        "log_softmax" => Op::LogSoftmax { dim: 1 },
        "flatten" => Op::Flatten { start_dim: 1, end_dim: -1 },
        "dropout" => Op::Dropout { p: 0.5, training: true },
        other => Op::parse_name(other)?,
    };
    let inputs = match name {
        "matmul" => vec![t(&[3], 1), t(&[3, 3], 4)],
        "add" | "sub" | "mul" | "maximum" => vec![t(&[2, 3], 5), t(&[2, 3], 1)],
        // A divisor in (0.5, 1.5): away from 0.
        "div" => vec![t(&[2, 3], 5), HostTensor { data: t(&[2, 3], 1).data.iter().map(|v| v + 1.0).collect(), shape: vec![2, 3] }],
        "log" | "sqrt" | "pow" => vec![HostTensor { data: image.data.iter().map(|v| v + 1.0).collect(), ..image }],
        "softmax" | "log_softmax" => vec![t(&[4, 6], 7)],
        "nll_loss" | "cross_entropy" => vec![t(&[4, 6], 7), labels],
        "conv2d" => vec![image, t(&[2, 3, 3, 3], 5)],
        "linear" => vec![t(&[4, 6], 7), t(&[3, 6], 5)],
        "dropout" => {
            let mask = HostTensor { shape: image.shape.clone(), data: (0..image.len()).map(|i| ((i * 7 + 3) % 5 < 3) as u8 as f64).collect() };
            vec![image, mask]
        }
        "max_pool2d" if ties => vec![HostTensor { data: image.data.iter().map(|v| (v * 4.0).round() / 4.0 + 0.01).collect(), ..image }],
        "reshape" => return Some((Op::Reshape { shape: vec![-1, 8] }, vec![image])),
        _ => vec![image],
    };
    Some((op, inputs))
}

/// The one-op program of a probe case.
pub fn program(op: &Op, inputs: &[HostTensor]) -> Program {
    Program::single(op.clone(), &inputs.iter().map(|t| Some(t.shape.clone())).collect::<Vec<_>>())
}

/// Runs the op named `name` alone on every backend and compares every input gradient
/// pairwise.
pub fn run(name: &str, ties: bool, kinds: &[BackendKind], opts: &BackendOptions, dtype: DType, tol: f64) -> Result<Probe> {
    let (op, inputs) = case(name, ties).ok_or_else(|| Error::Invalid(format!("no probe for op '{name}'")))?;
    let program = program(&op, &inputs);
    let inputs: Vec<HostTensor> = inputs.iter().map(|x| x.rounded(dtype)).collect();
    let mut evals = BTreeMap::new();
    for &kind in kinds {
        evals.insert(kind, backend(kind, opts)?.evaluate(&program, &inputs, dtype)?);
    }
    let (mut worst_scaled, mut output_rel) = (BTreeMap::new(), BTreeMap::new());
    for (a, b) in backend_pairs(kinds) {
        let (ea, eb) = (&evals[&a], &evals[&b]);
        worst_scaled.insert(pair_name(a, b), worst_scaled_over(&ea.grads, &eb.grads, dtype)?);
        let rel = (ea.output - eb.output).abs() / eb.output.abs().max(f64::MIN_POSITIVE);
        output_rel.insert(pair_name(a, b), if ea.output.is_finite() && eb.output.is_finite() { rel } else { f64::NAN });
    }
    let agree = worst_scaled.values().all(|v| *v <= tol);
    Ok(Probe { op: name.to_string(), worst_scaled, output_rel, agree })
}
