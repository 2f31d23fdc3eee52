//! The A/B/C study: the same three matrices trained by every backend from the same start.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{backend_pairs, pair_name};
use crate::backends::{BackendKind, Trajectory};
use crate::dtype::DType;
use crate::engine::faults::{self, Fault};
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::abc::{self, AbcInit, AbcSpec};
use crate::parity::{compare, compare_traces, TensorDiff, Tolerance, TraceDiff};

pub const PARAMS: [&str; 3] = ["A", "B", "C"];

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AbcSettings {
    pub k: usize,
    pub lr: f64,
    pub steps: usize,
    pub init: String,
    pub dtype: DType,
}

/// What one backend did, in the JSON layout people read: matrices as rows.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BackendRun {
    /// Loss before each update.
    pub loss: Vec<f64>,
    /// A, B, C after the last update.
    #[serde(rename = "final")]
    pub final_params: BTreeMap<String, Vec<Vec<f64>>>,
    /// Per step, dL/dA, dL/dB, dL/dC.
    pub grads: Vec<BTreeMap<String, Vec<Vec<f64>>>>,
    #[serde(skip)]
    pub trajectory: Trajectory,
}

/// Agreement between backend `a` and the more trusted backend `b`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct PairParity {
    pub a: BackendKind,
    pub b: BackendKind,
    pub loss: TraceDiff,
    /// Per parameter, the worst gradient difference over all steps.
    pub grads: BTreeMap<String, TensorDiff>,
    /// The first step at which some gradient left the tolerance.
    pub grads_first_divergence: Option<usize>,
    #[serde(rename = "final")]
    pub final_params: BTreeMap<String, TensorDiff>,
    pub agree: bool,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AbcStudy {
    pub settings: AbcSettings,
    pub init: AbcInit,
    /// The backend every other one is compared against in the plot.
    pub reference: BackendKind,
    pub tolerance: Tolerance,
    pub backends: BTreeMap<BackendKind, BackendRun>,
    /// Keyed `a-b`, e.g. `engine-torch`.
    pub parity: BTreeMap<String, PairParity>,
    /// Every pair agrees within tolerance.
    pub agree: bool,
    /// The engine rerun with a fault switched on (`--fault`), against the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faulty: Option<FaultyRun>,
}

/// The engine with a catalogued fault switched on, next to the correct backends.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FaultyRun {
    pub fault: Fault,
    pub loss: Vec<f64>,
    /// Against the study's reference backend.
    pub vs_reference: TraceDiff,
}

/// Runs the study on `kinds` (each must be built) and measures every pair.
pub fn run(spec: &AbcSpec, dtype: DType, kinds: &[BackendKind], tol: Tolerance) -> Result<AbcStudy> {
    run_with_fault(spec, dtype, kinds, tol, None)
}

/// `run`, plus the engine once more with `fault` switched on (the seed's Figure 0 with
/// `Fault::VecMatInnerProduct`).
pub fn run_with_fault(spec: &AbcSpec, dtype: DType, kinds: &[BackendKind], tol: Tolerance, fault: Option<Fault>) -> Result<AbcStudy> {
    let program = abc::program(spec.init.k());
    // Every backend starts from the same values, already rounded to the run's dtype.
    let inputs: Vec<HostTensor> = spec.init.tensors().iter().map(|t| t.rounded(dtype)).collect();
    let mut backends = BTreeMap::new();
    for &kind in kinds {
        let trajectory = kind.create()?.train_sgd(&program, &inputs, spec.lr, spec.steps, dtype)?;
        backends.insert(kind, backend_run(trajectory));
    }
    let mut parity = BTreeMap::new();
    for (a, b) in backend_pairs(kinds) {
        parity.insert(pair_name(a, b), pair_parity(a, b, &backends[&a].trajectory, &backends[&b].trajectory, dtype, tol)?);
    }
    let reference = BackendKind::reference_among(kinds).expect("at least one backend");
    let faulty = match fault {
        None => None,
        Some(f) => {
            let _on = faults::inject(f);
            let t = BackendKind::ENGINE.create()?.train_sgd(&program, &inputs, spec.lr, spec.steps, dtype)?;
            let vs_reference = compare_traces(&t.loss, &backends[&reference].loss, tol);
            Some(FaultyRun { fault: f, loss: t.loss, vs_reference })
        }
    };
    Ok(AbcStudy {
        faulty,
        settings: AbcSettings { k: spec.init.k(), lr: spec.lr, steps: spec.steps, init: spec.init_source.to_string(), dtype },
        init: spec.init.clone(),
        reference,
        tolerance: tol,
        agree: parity.values().all(|p| p.agree),
        backends,
        parity,
    })
}

fn named(ts: &[HostTensor]) -> BTreeMap<String, Vec<Vec<f64>>> {
    PARAMS.iter().zip(ts).map(|(n, t)| (n.to_string(), t.rows())).collect()
}

fn backend_run(trajectory: Trajectory) -> BackendRun {
    BackendRun {
        loss: trajectory.loss.clone(),
        final_params: named(&trajectory.final_params),
        grads: trajectory.grads.iter().map(|g| named(g)).collect(),
        trajectory,
    }
}

fn pair_parity(a: BackendKind, b: BackendKind, ta: &Trajectory, tb: &Trajectory, dtype: DType, tol: Tolerance) -> Result<PairParity> {
    let loss = compare_traces(&ta.loss, &tb.loss, tol);
    let mut grads: BTreeMap<String, TensorDiff> = BTreeMap::new();
    let mut grads_first_divergence = None;
    for (step, (ga, gb)) in ta.grads.iter().zip(&tb.grads).enumerate() {
        for (name, (x, y)) in PARAMS.iter().zip(ga.iter().zip(gb)) {
            let d = compare(x, y, dtype, tol)?;
            if !d.within_tolerance && grads_first_divergence.is_none() {
                grads_first_divergence = Some(step);
            }
            let merged = match grads.remove(*name) {
                Some(prev) => prev.worst(&d),
                None => d,
            };
            grads.insert(name.to_string(), merged);
        }
    }
    let mut final_params = BTreeMap::new();
    for (name, (x, y)) in PARAMS.iter().zip(ta.final_params.iter().zip(&tb.final_params)) {
        final_params.insert(name.to_string(), compare(x, y, dtype, tol)?);
    }
    let agree = loss.within_tolerance
        && grads.values().all(|d| d.within_tolerance)
        && final_params.values().all(|d| d.within_tolerance);
    Ok(PairParity { a, b, loss, grads, grads_first_divergence, final_params, agree })
}
