//! Running one primitive op alone on every backend, on fixed inputs: the tinygrad-style
//! check that localises a disagreement to an op.

use std::collections::BTreeMap;

use serde::Serialize;

use super::lockstep::{backend, BackendOptions};
use super::{backend_pairs, pair_name};
use crate::backends::BackendKind;
use crate::dtype::DType;
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::{Prim, Program};
use crate::parity::{compare, Tolerance};

/// A primitive run alone (`sum` of its output as the loss).
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub op: String,
    /// Per backend pair: the worst input-gradient difference relative to the largest
    /// gradient entry.
    pub worst_scaled: BTreeMap<String, f64>,
    /// Per backend pair: the relative difference of the loss.
    pub output_rel: BTreeMap<String, f64>,
    pub agree: bool,
}

/// `n` distinct values in (-0.5, 0.5), none of them 0 (ReLU's kink is not probed).
fn distinct(n: usize, stride: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * stride) % n) as f64 + 0.5) / n as f64 - 0.5).collect()
}

fn t(shape: &[usize], stride: usize) -> HostTensor {
    HostTensor { shape: shape.to_vec(), data: distinct(shape.iter().product(), stride) }
}

/// Fixed inputs for `prim`. With `ties`, a max-pool input holds equal values in every
/// window (where tie-breaking rules differ).
pub fn inputs(prim: Prim, ties: bool) -> Vec<HostTensor> {
    let image = t(&[2, 3, 4, 4], 37);
    match prim {
        Prim::MatMul => vec![t(&[3], 1), t(&[3, 3], 4)],
        Prim::Add | Prim::Sub | Prim::Mul => vec![t(&[2, 3], 5), t(&[2, 3], 1)],
        Prim::Log => vec![HostTensor { data: image.data.iter().map(|v| v + 1.0).collect(), ..image }],
        Prim::Softmax => vec![t(&[4, 6], 7)],
        Prim::Conv2d => vec![image, t(&[2, 3, 3, 3], 5)],
        Prim::Linear => vec![t(&[4, 6], 7), t(&[3, 6], 5)],
        Prim::MaxPool2d if ties => vec![HostTensor { data: image.data.iter().map(|v| (v * 4.0).round() / 4.0 + 0.01).collect(), ..image }],
        _ => vec![image],
    }
}

/// Runs `prim` alone on every backend and compares every input gradient pairwise.
pub fn run(prim: Prim, ties: bool, kinds: &[BackendKind], opts: BackendOptions, dtype: DType, tol: f64) -> Result<Probe> {
    let program = Program::single(prim);
    let inputs: Vec<HostTensor> = inputs(prim, ties).iter().map(|x| x.rounded(dtype)).collect();
    let mut evals = BTreeMap::new();
    for &kind in kinds {
        evals.insert(kind, backend(kind, opts)?.evaluate(&program, &inputs, dtype)?);
    }
    let (mut worst_scaled, mut output_rel) = (BTreeMap::new(), BTreeMap::new());
    for (a, b) in backend_pairs(kinds) {
        let (ea, eb) = (&evals[&a], &evals[&b]);
        let scale = eb.grads.iter().flat_map(|g| g.data.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
        let mut worst = 0.0f64;
        for (ga, gb) in ea.grads.iter().zip(&eb.grads) {
            let d = compare(ga, gb, dtype, Tolerance::torch_default(dtype))?;
            worst = if d.non_finite { f64::NAN } else { worst.max(d.max_abs / scale.max(f64::MIN_POSITIVE)) };
        }
        worst_scaled.insert(pair_name(a, b), worst);
        let rel = (ea.output - eb.output).abs() / eb.output.abs().max(f64::MIN_POSITIVE);
        output_rel.insert(pair_name(a, b), if ea.output.is_finite() && eb.output.is_finite() { rel } else { f64::NAN });
    }
    let agree = worst_scaled.values().all(|v| *v <= tol);
    Ok(Probe { op: prim.name().to_string(), worst_scaled, output_rel, agree })
}
