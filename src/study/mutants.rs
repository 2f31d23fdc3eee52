//! Mutation testing of backprop: each catalogued fault switched on in the engine, the
//! quick suite rerun, and the gate asked whether it noticed, where, and from which step.

use std::collections::BTreeMap;

use serde::Serialize;

use super::gate::{evaluate, Baseline, Regression};
use super::suite::{collect, metrics, run as run_suite, BackendOutputs, SuiteConfig};
use crate::backends::BackendKind;
use crate::data::Dataset;
use crate::engine::faults::{self, Fault};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FaultResult {
    pub name: &'static str,
    pub caught: bool,
    /// The first failing measurement, in the order op, graph, grads, train, abc.
    pub check: Option<String>,
    /// Where the failing measurements point.
    pub localised_to: Option<String>,
    /// Where the fault really is.
    pub expected: &'static str,
    pub localised: bool,
    /// The first step at which it showed.
    pub step: Option<usize>,
    /// How many measurements failed.
    pub failing: usize,
    /// The fuzzer alone (seed 0, at most `FUZZ_CASES` cases): how many generated cases it
    /// took to blame the engine, and what it shrank to; None when it did not within them
    /// (faults of training state: optimiser, running statistics, dropout masks).
    pub fuzz: Option<super::fuzz::Hunt>,
}

/// Cases the fuzzer gets per fault.
pub const FUZZ_CASES: u64 = 2000;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MutantsReport {
    pub backends: Vec<BackendKind>,
    pub faults: Vec<FaultResult>,
    pub caught: usize,
    pub localised: usize,
}

fn priority(check: &str) -> usize {
    ["backend", "op", "graph", "grads", "train", "abc"].iter().position(|c| *c == check).unwrap_or(9)
}

/// Summarises the gate's regressions under one fault.
pub fn judge(fault: Fault, regressions: &[Regression]) -> FaultResult {
    let mut sorted: Vec<&Regression> = regressions.iter().collect();
    sorted.sort_by_key(|r| priority(&r.check));
    let localised_to = sorted.iter().find_map(|r| r.site.clone());
    FaultResult {
        name: fault.name(),
        caught: !regressions.is_empty(),
        check: sorted.first().map(|r| r.location.clone()),
        localised: localised_to.as_deref() == Some(fault.site()),
        localised_to,
        expected: fault.site(),
        step: sorted.iter().filter_map(|r| r.step).min(),
        failing: regressions.len(),
        fuzz: None,
    }
}

/// The fuzzer's settings for the hunt: the default campaign on the suite's backends.
fn fuzz_options(cfg: &SuiteConfig) -> super::fuzz::FuzzOptions {
    super::fuzz::FuzzOptions {
        cases: FUZZ_CASES,
        seed: 0,
        max_nodes: 4,
        ops: super::fuzz::gen::OPS.to_vec(),
        dtype: crate::dtype::DType::F64,
        backends: cfg.backends.clone(),
        backend_options: cfg.options.clone(),
        shard: (1, 1),
        time_limit: None,
        nonfinite: false,
    }
}

/// Runs the suite once cleanly for the references, then once per fault for the engine.
pub fn run(cfg: &SuiteConfig, data: &Dataset, baseline: &Baseline, list: &[Fault], mut progress: impl FnMut(Fault)) -> Result<MutantsReport> {
    if !cfg.backends.contains(&BackendKind::ENGINE) || cfg.backends.len() < 2 {
        return Err(Error::Invalid("mutants needs the engine and at least one other backend".into()));
    }
    let mut outputs: BTreeMap<BackendKind, BackendOutputs> = run_suite(cfg, data)?;
    let reference = BackendKind::reference_among(&cfg.backends).expect("checked");
    let ref_params = outputs[&reference].train_params.clone();
    let mut faults_out = Vec::new();
    for &fault in list {
        progress(fault);
        let _on = faults::inject(fault);
        outputs.insert(BackendKind::ENGINE, collect(BackendKind::ENGINE, cfg, data, Some(&ref_params))?);
        let current = metrics(cfg, &outputs)?;
        let mut result = judge(fault, &evaluate(baseline, &current, &cfg.backends).regressions);
        result.fuzz = super::fuzz::hunt(&fuzz_options(cfg), FUZZ_CASES)?;
        faults_out.push(result);
    }
    Ok(MutantsReport {
        backends: cfg.backends.clone(),
        caught: faults_out.iter().filter(|f| f.caught).count(),
        localised: faults_out.iter().filter(|f| f.localised).count(),
        faults: faults_out,
    })
}
