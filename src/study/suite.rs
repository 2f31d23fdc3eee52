//! The quick parity suite behind `check` (the CI gate) and `mutants`: a few minutes of
//! measurements that together touch every backward rule the engine has.
//!
//! - `abc`: the A/B/C run (ones and a seeded start), f32 and f64;
//! - `graph`: a small graph where a value fans out along paths of different lengths;
//! - `op`: every primitive alone on fixed inputs (max-pool also with ties);
//! - `grads`: step-0 gradients of the nine models, f32 and f64;
//! - `train`: a short lockstep trajectory per model in f64, each step also
//!   re-synchronised to the reference, then the final parameters and buffers and an
//!   evaluation batch.
//!
//! Each backend's raw results are collected on their own (so `mutants` can recompute
//! just the engine under a fault) and then turned into metrics per backend pair.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::grads::{compare_model, grad_tolerance, layer_kind, localise};
use super::lockstep::{backend, instantiate, make_batch, step_masks, BackendOptions};
use super::{backend_pairs, pair_name, probe};
use crate::backends::{BackendKind, Evaluation, Trajectory};
use crate::data::{batches, epoch_order, Dataset};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::abc::{self, AbcInit};
use crate::models::mnist::{ModelSpec, ParamSet};
use crate::models::{Op, Program};
use crate::parity::{compare_traces, max_nan, worst_scaled_over, Tolerance};

pub const SEED: u64 = 0;
pub const GRAD_BATCH: usize = 8;
pub const TRAIN_IMAGES: usize = 150;
pub const TRAIN_BATCH: usize = 25;
pub const EVAL_IMAGES: usize = 100;

/// One measurement: how far apart two backends are somewhere. Larger is worse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metric {
    /// `abc`, `graph`, `op`, `grads` or `train`.
    pub check: String,
    /// The A/B/C start, the op, or the model.
    pub case: String,
    pub dtype: DType,
    /// Backend pair, e.g. `engine-torch`.
    pub pair: String,
    /// What was compared: `loss`, `grad`, a parameter name, ...
    pub item: String,
    pub value: f64,
    /// The first step at which this measurement left its tolerance, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The op or layer kind a failure here points to, when the suite can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl Metric {
    pub fn key(&self) -> (String, String, DType, String, String) {
        (self.check.clone(), self.case.clone(), self.dtype, self.pair.clone(), self.item.clone())
    }

    pub fn location(&self) -> String {
        format!("{} {} {} {} {}", self.check, self.case, self.dtype, self.pair, self.item)
    }
}

/// The suite's backends and how candle runs (its max-pool fixed, so that all three can
/// serve as references for each other).
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    pub backends: Vec<BackendKind>,
    pub options: BackendOptions,
}

/// What one model did on one backend in the `train` check.
#[derive(Clone, Debug)]
pub struct TrainRecord {
    pub loss: Vec<f64>,
    /// Per step, the gradients from the reference's parameters of that step.
    pub resync_grads: Vec<ParamSet>,
    pub final_params: ParamSet,
    pub eval_loss: f64,
}

/// Everything one backend computed for the suite.
#[derive(Clone, Debug, Default)]
pub struct BackendOutputs {
    pub abc: BTreeMap<(String, DType), Trajectory>,
    pub graph: BTreeMap<DType, Evaluation>,
    pub ops: BTreeMap<(String, DType), Evaluation>,
    pub grads: BTreeMap<(String, DType), ParamSet>,
    pub train: BTreeMap<String, TrainRecord>,
    /// The reference only: per model, the parameters before each training step.
    pub train_params: BTreeMap<String, Vec<ParamSet>>,
}

/// A graph where a value fans out along paths of different lengths:
/// `h = sigmoid(a); loss = Σ (h + exp(tanh(h)) · h)`. Breadth-first order visits `h`
/// before the long path has delivered its gradient; dropping accumulation loses one.
pub fn fan_out_program() -> Program {
    let mut p = Program::default();
    let a = p.param("a", &[2, 3]);
    let h = p.op(Op::Sigmoid {}, &[&a]);
    let l1 = p.op(Op::Tanh {}, &[&h]);
    let l2 = p.op(Op::Exp {}, &[&l1]);
    let l3 = p.op(Op::Mul {}, &[&l2, &h]);
    let s = p.op(Op::Add {}, &[&h, &l3]);
    let loss = p.op(Op::Sum {}, &[&s]);
    p.set_loss(&loss);
    p
}

fn fan_out_input() -> HostTensor {
    HostTensor { shape: vec![2, 3], data: vec![0.3, -1.2, 0.7, 2.0, -0.4, 1.1] }
}

/// The op cases: (case name, op name, ties): every probed op, plus max-pool on tied
/// inputs.
pub fn op_cases() -> Vec<(String, &'static str, bool)> {
    let mut cases: Vec<(String, &'static str, bool)> = probe::SUITE_OPS.iter().map(|p| (p.to_string(), *p, false)).collect();
    cases.push(("max_pool2d:ties".into(), "max_pool2d", true));
    cases
}

const ABC_STARTS: [(&str, u64); 2] = [("ones", 0), ("seed:1", 1)];

/// Collects one backend's results. Non-reference backends need the reference's
/// per-step parameters (`reference_params`) for the re-synchronised steps.
pub fn collect(kind: BackendKind, cfg: &SuiteConfig, data: &Dataset, reference_params: Option<&BTreeMap<String, Vec<ParamSet>>>) -> Result<BackendOutputs> {
    let be = backend(kind, &cfg.options)?;
    let mut out = BackendOutputs::default();
    let program = abc::program(3);
    for dtype in DType::ALL {
        for (name, seed) in ABC_STARTS {
            let init = if seed == 0 { AbcInit::ones(3) } else { AbcInit::seeded(3, seed) };
            let inputs: Vec<HostTensor> = init.tensors().iter().map(|t| t.rounded(dtype)).collect();
            out.abc.insert((name.to_string(), dtype), be.train_sgd(&program, &inputs, abc::SEED_LR, abc::SEED_STEPS, dtype)?);
        }
        out.graph.insert(dtype, be.evaluate(&fan_out_program(), &[fan_out_input().rounded(dtype)], dtype)?);
        for (name, op, ties) in op_cases() {
            let (op, inputs) = probe::case(op, ties).expect("suite ops have probes");
            let program = probe::program(&op, &inputs);
            let inputs: Vec<HostTensor> = inputs.iter().map(|t| t.rounded(dtype)).collect();
            out.ops.insert((name, dtype), be.evaluate(&program, &inputs, dtype)?);
        }
    }
    let grad_batch = make_batch(&data.train, &(0..GRAD_BATCH).collect::<Vec<_>>());
    for spec in ModelSpec::all_seed() {
        let params = ParamSet::init(&spec, SEED);
        for dtype in DType::ALL {
            let mut runner = instantiate(kind, &cfg.options, &spec, &params, dtype)?;
            let masks = step_masks(&spec, GRAD_BATCH, SEED, 0);
            let g = runner.forward_backward(&grad_batch, &masks, true)?.grads.expect("asked for gradients");
            out.grads.insert((spec.name.clone(), dtype), g);
        }
        let (record, params_seen) = train(kind, cfg, data, &spec, &params, reference_params.map(|r| &r[&spec.name]))?;
        if reference_params.is_none() {
            out.train_params.insert(spec.name.clone(), params_seen);
        }
        out.train.insert(spec.name.clone(), record);
    }
    Ok(out)
}

/// The short f64 trajectory of one model; with `resync_from`, also the gradients from
/// the reference's parameters at each step.
fn train(kind: BackendKind, cfg: &SuiteConfig, data: &Dataset, spec: &ModelSpec, params: &ParamSet, resync_from: Option<&Vec<ParamSet>>) -> Result<(TrainRecord, Vec<ParamSet>)> {
    let dtype = DType::F64;
    let mut runner = instantiate(kind, &cfg.options, spec, params, dtype)?;
    let order = epoch_order(TRAIN_IMAGES, SEED, 0);
    let (mut loss, mut resync_grads, mut seen) = (vec![], vec![], vec![]);
    for (step, idx) in batches(&order, TRAIN_BATCH).enumerate() {
        let batch = make_batch(&data.train, idx);
        let masks = step_masks(spec, idx.len(), SEED, step);
        if resync_from.is_none() {
            seen.push(runner.params()?);
        }
        let s = runner.forward_backward(&batch, &masks, resync_from.is_none())?;
        loss.push(s.loss);
        if let Some(g) = s.grads {
            resync_grads.push(g);
        }
        runner.sgd_step(super::mnist::LR, super::mnist::MOMENTUM)?;
    }
    let final_params = runner.params()?;
    let eval = make_batch(&data.test, &(0..EVAL_IMAGES).collect::<Vec<_>>());
    let eval_loss = runner.evaluate(&eval)?.loss;
    if let Some(reference) = resync_from {
        // A second instance, reset to the reference before every step.
        let mut twin = instantiate(kind, &cfg.options, spec, params, dtype)?;
        for (step, (idx, start)) in batches(&order, TRAIN_BATCH).zip(reference).enumerate() {
            twin.load_params(start)?;
            let batch = make_batch(&data.train, idx);
            let masks = step_masks(spec, idx.len(), SEED, step);
            resync_grads.push(twin.forward_backward(&batch, &masks, true)?.grads.expect("asked for gradients"));
        }
    }
    Ok((TrainRecord { loss, resync_grads, final_params, eval_loss }, seen))
}

/// Runs the whole suite on every configured backend (the reference first).
pub fn run(cfg: &SuiteConfig, data: &Dataset) -> Result<BTreeMap<BackendKind, BackendOutputs>> {
    let reference = BackendKind::reference_among(&cfg.backends).ok_or_else(|| Error::Invalid("the suite needs a backend".into()))?;
    let mut outputs = BTreeMap::new();
    let ref_out = collect(reference, cfg, data, None)?;
    let ref_params = ref_out.train_params.clone();
    outputs.insert(reference, ref_out);
    for &kind in cfg.backends.iter().filter(|&&k| k != reference) {
        outputs.insert(kind, collect(kind, cfg, data, Some(&ref_params))?);
    }
    Ok(outputs)
}

fn tensors(set: &ParamSet) -> Vec<HostTensor> {
    set.tensors.iter().map(|(_, t)| t.clone()).collect()
}

/// Turns collected outputs into metrics for every backend pair.
pub fn metrics(cfg: &SuiteConfig, outputs: &BTreeMap<BackendKind, BackendOutputs>) -> Result<Vec<Metric>> {
    let kinds: Vec<BackendKind> = outputs.keys().copied().collect();
    let mut out = Vec::new();
    let m = |check: &str, case: &str, dtype: DType, pair: &str, item: &str, value: f64, step: Option<usize>, site: Option<&str>| Metric {
        check: check.into(),
        case: case.into(),
        dtype,
        pair: pair.into(),
        item: item.into(),
        value,
        step,
        site: site.map(str::to_string),
    };
    for (a, b) in backend_pairs(&kinds) {
        let (oa, ob) = (&outputs[&a], &outputs[&b]);
        let pair = pair_name(a, b);
        for dtype in DType::ALL {
            let tol = grad_tolerance(dtype);
            for (name, _) in ABC_STARTS {
                let (ta, tb) = (&oa.abc[&(name.to_string(), dtype)], &ob.abc[&(name.to_string(), dtype)]);
                let trace = compare_traces(&ta.loss, &tb.loss, Tolerance::torch_default(dtype));
                out.push(m("abc", name, dtype, &pair, "loss", trace.max_rel, trace.first_divergence, None));
                let mut worst = 0.0f64;
                let mut first = None;
                for (step, (ga, gb)) in ta.grads.iter().zip(&tb.grads).enumerate() {
                    let w = worst_scaled_over(ga, gb, dtype)?;
                    if first.is_none() && !(w <= tol) {
                        first = Some(step);
                    }
                    worst = max_nan(worst, w);
                }
                out.push(m("abc", name, dtype, &pair, "grad", worst, first, None));
            }
            let (ga, gb) = (&oa.graph[&dtype], &ob.graph[&dtype]);
            out.push(m("graph", "fan-out", dtype, &pair, "grad", worst_scaled_over(&ga.grads, &gb.grads, dtype)?, Some(0), Some("graph")));
            for (name, op, _) in op_cases() {
                let (ea, eb) = (&oa.ops[&(name.clone(), dtype)], &ob.ops[&(name.clone(), dtype)]);
                out.push(m("op", &name, dtype, &pair, "grad", worst_scaled_over(&ea.grads, &eb.grads, dtype)?, Some(0), Some(op)));
            }
        }
    }
    for spec in ModelSpec::all_seed() {
        for dtype in DType::ALL {
            let tol = grad_tolerance(dtype);
            let grads: BTreeMap<BackendKind, ParamSet> = outputs.iter().map(|(k, o)| (*k, o.grads[&(spec.name.clone(), dtype)].clone())).collect();
            let loss = kinds.iter().map(|&k| (k, 0.0)).collect();
            let mut cmp = compare_model(&spec, &grads, loss, dtype, tol)?;
            if let Some(d) = cmp.diagnosis.as_mut() {
                localise(&spec, d, &kinds, &cfg.options, dtype, tol)?;
            }
            let site = cmp.diagnosis.as_ref().and_then(|d| d.culprit.clone());
            for (param, per_pair) in &cmp.params {
                for (pair, d) in per_pair {
                    let failing = d.non_finite || !(d.scaled <= tol);
                    let value = if d.non_finite { f64::NAN } else { d.scaled };
                    out.push(m("grads", &spec.name, dtype, pair, param, value, failing.then_some(0), site.as_deref()));
                }
            }
        }
        let dtype = DType::F64;
        let tol = grad_tolerance(dtype);
        for (a, b) in backend_pairs(&kinds) {
            let (ra, rb) = (&outputs[&a].train[&spec.name], &outputs[&b].train[&spec.name]);
            let pair = pair_name(a, b);
            let mut resync = 0.0f64;
            let mut resync_first = None;
            for (step, (ga, gb)) in ra.resync_grads.iter().zip(&rb.resync_grads).enumerate() {
                let w = worst_scaled_over(&tensors(ga), &tensors(gb), dtype)?;
                if resync_first.is_none() && !(w <= tol) {
                    resync_first = Some(step);
                }
                resync = max_nan(resync, w);
            }
            out.push(m("train", &spec.name, dtype, &pair, "resync_grad", resync, resync_first, None));
            // Identical gradients from identical parameters but different losses later:
            // the update itself differs.
            let trace = compare_traces(&ra.loss, &rb.loss, Tolerance::torch_default(dtype));
            let loss_site = (resync_first.is_none()).then_some("optimizer");
            out.push(m("train", &spec.name, dtype, &pair, "loss", trace.max_rel, trace.first_divergence, loss_site));
            let eval_rel = (ra.eval_loss - rb.eval_loss).abs() / rb.eval_loss.abs().max(f64::MIN_POSITIVE);
            let eval_site = (spec.variant == crate::models::mnist::Variant::BatchNorm && resync_first.is_none() && trace.within_tolerance).then_some("batch_norm");
            out.push(m("train", &spec.name, dtype, &pair, "eval_loss", eval_rel, None, eval_site));
            for (name, ta) in &ra.final_params.tensors {
                let tb = rb.final_params.get(name).ok_or_else(|| Error::backend(b.name(), format!("no final {name}")))?;
                let w = worst_scaled_over(std::slice::from_ref(ta), std::slice::from_ref(tb), dtype)?;
                let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
                let kind = layer_kind(&spec, layer);
                out.push(m("train", &spec.name, dtype, &pair, &format!("final:{name}"), w, None, Some(&kind)));
            }
        }
    }
    Ok(out)
}
