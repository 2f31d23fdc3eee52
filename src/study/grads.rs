//! Gradients at one step: every backend, the same parameters, batch and masks; per
//! parameter tensor and backend pair, how far apart the gradients are. Disagreements are
//! localised: which backend is the odd one out, and between which layers its gradients
//! start to differ when read from the loss backwards.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use super::probe::{self, Probe};
use super::{backend_pairs, pair_name};
use crate::backends::BackendKind;
use crate::data::Dataset;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::mnist::{Layer, ModelSpec, ParamSet};
use crate::models::safetensors_io;
use crate::parity::{compare_floored, largest_magnitude, max_nan, no_majority, odd_one_out, TensorDiff};

/// A parameter whose gradients are all smaller than this fraction (a hundredth) of the model's largest
/// gradient entry is measured against that floor: a bias followed by batch norm has a
/// true gradient of exactly zero, and two backends' rounding noise around zero is not a
/// disagreement.
pub const MODEL_SCALE_FLOOR: f64 = 1e-2;

/// The largest gradient difference, relative to the reference tensor's largest
/// magnitude, that still counts as agreement.
pub fn grad_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        // f32 rounding in a 4900-term batch-norm reduction reaches 1e-4 of the model's
        // largest gradient on a bias whose exact gradient is zero (conv2 before conv2_bn).
        DType::F32 => 1e-3,
    }
}

pub struct GradsOptions {
    pub models: Vec<ModelSpec>,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    pub batch: usize,
    pub seed: u64,
    /// A state_dict to start from instead of the seeded init.
    pub params: Option<ParamSet>,
    pub params_origin: Option<String>,
    pub save_grads: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GradsSettings {
    pub dtype: DType,
    pub batch: usize,
    pub seed: u64,
    pub params: String,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    /// Agreement: max |a - b| <= this × max |b| for every parameter tensor.
    pub scaled_tolerance: f64,
}

/// Why a model's backends disagree, as far as three backends can tell.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Diagnosis {
    /// The backend that disagrees with every other while they agree.
    pub odd_one_out: Option<BackendKind>,
    /// Two equal camps (two against two): both sides, and no side picked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_majority: Option<[Vec<BackendKind>; 2]>,
    /// Pairs with at least one parameter beyond tolerance.
    pub failing_pairs: Vec<String>,
    /// Reading from the loss backwards, the first parameter that disagrees.
    pub first_disagreeing_param: String,
    /// The last parameterised layer (towards the loss) that still agrees, if any.
    pub last_agreeing_layer: Option<String>,
    /// Layers whose backward can explain it: the disagreeing layer and every layer
    /// between it and the last agreeing one.
    pub suspects: Vec<String>,
    /// Each suspect op that exists as a primitive, run alone on every backend.
    pub probes: Vec<Probe>,
    /// The op kind to blame, when the evidence points at exactly one.
    pub culprit: Option<String>,
    /// `probe`: its probe alone disagrees; `elimination`: every other suspect's probe agrees.
    pub culprit_by: Option<String>,
}



#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelGrads {
    pub loss: BTreeMap<BackendKind, f64>,
    /// param -> pair -> difference.
    pub params: BTreeMap<String, BTreeMap<String, TensorDiff>>,
    /// Per pair, the worst scaled difference over all parameters.
    pub worst_scaled: BTreeMap<String, f64>,
    pub agree: bool,
    pub diagnosis: Option<Diagnosis>,
    /// Parameter names in forward order (the JSON maps are sorted by name).
    pub order: Vec<String>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GradsStudy {
    pub settings: GradsSettings,
    pub models: BTreeMap<String, ModelGrads>,
    pub agree: bool,
}

pub fn run(data: &Dataset, opts: &GradsOptions, mut progress: impl FnMut(&str)) -> Result<GradsStudy> {
    if opts.batch == 0 || opts.batch > data.train.n {
        return Err(Error::Invalid(format!("--batch {}: expected 1 to {}", opts.batch, data.train.n)));
    }
    let indices: Vec<usize> = (0..opts.batch).collect();
    let batch = make_batch(&data.train, &indices);
    let tol = grad_tolerance(opts.dtype);
    let mut models = BTreeMap::new();
    for spec in &opts.models {
        progress(&spec.name);
        let params = match &opts.params {
            Some(p) => p.ordered(spec).map_err(|e| Error::Invalid(format!("--params {}: {e}", opts.params_origin.as_deref().unwrap_or(""))))?,
            None => ParamSet::init(spec, opts.seed),
        };
        let masks = step_masks(spec, opts.batch, opts.seed, 0);
        let mut grads = BTreeMap::new();
        let mut loss = BTreeMap::new();
        for &kind in &opts.backends {
            let mut runner = instantiate(kind, &opts.backend_options, spec, &params, opts.dtype)?;
            let out = runner.forward_backward(&batch, &masks, true)?;
            let g = out.grads.expect("asked for gradients");
            if let Some(dir) = &opts.save_grads {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                safetensors_io::write(&dir.join(format!("{}-{kind}.safetensors", spec.name)), &g, opts.dtype)?;
            }
            loss.insert(kind, out.loss);
            grads.insert(kind, g);
        }
        let mut m = compare_model(spec, &grads, loss, opts.dtype, tol)?;
        if let Some(d) = m.diagnosis.as_mut() {
            localise(spec, d, &opts.backends, &opts.backend_options, opts.dtype, tol)?;
        }
        models.insert(spec.name.clone(), m);
    }
    Ok(GradsStudy {
        settings: GradsSettings {
            dtype: opts.dtype,
            batch: opts.batch,
            seed: opts.seed,
            params: opts.params_origin.clone().unwrap_or_else(|| format!("seeded PyTorch-default init, seed {}", opts.seed)),
            backends: opts.backends.clone(),
            backend_options: opts.backend_options.clone(),
            scaled_tolerance: tol,
        },
        agree: models.values().all(|m| m.agree),
        models,
    })
}

/// Compares every pair of backends' gradients for one model and localises disagreement.
pub fn compare_model(spec: &ModelSpec, grads: &BTreeMap<BackendKind, ParamSet>, loss: BTreeMap<BackendKind, f64>, dtype: DType, tol: f64) -> Result<ModelGrads> {
    let kinds: Vec<BackendKind> = grads.keys().copied().collect();
    let order = spec.trainable_names();
    let pairs = backend_pairs(&kinds);
    let mut params: BTreeMap<String, BTreeMap<String, TensorDiff>> = BTreeMap::new();
    let mut worst_scaled: BTreeMap<String, f64> = BTreeMap::new();
    // The assert_close verdict inside TensorDiff uses PyTorch's defaults; the study's own
    // verdict is the scaled rule, which suits tensors of very different magnitudes.
    let model_scale: BTreeMap<BackendKind, f64> = grads.iter().map(|(k, set)| (*k, largest_magnitude(set.tensors.iter().map(|(_, t)| t)))).collect();
    for name in &order {
        let mut per_pair = BTreeMap::new();
        for &(a, b) in &pairs {
            let ta = grads[&a].get(name).ok_or_else(|| Error::backend(a.name(), format!("no gradient for {name}")))?;
            let tb = grads[&b].get(name).ok_or_else(|| Error::backend(b.name(), format!("no gradient for {name}")))?;
            let d = compare_floored(ta, tb, dtype, model_scale[&b], MODEL_SCALE_FLOOR)?;
            let w = worst_scaled.entry(pair_name(a, b)).or_insert(0.0);
            *w = max_nan(*w, d.scaled);
            per_pair.insert(pair_name(a, b), d);
        }
        params.insert(name.clone(), per_pair);
    }
    let ok = |d: &TensorDiff| !d.non_finite && d.scaled <= tol;
    let agree = params.values().all(|pp| pp.values().all(ok)) && loss.values().all(|l| l.is_finite());
    let diagnosis = (!agree).then(|| diagnose(spec, &order, &params, &kinds, tol));
    Ok(ModelGrads { loss, params, worst_scaled, agree, diagnosis, order })
}

fn diagnose(spec: &ModelSpec, order: &[String], params: &BTreeMap<String, BTreeMap<String, TensorDiff>>, kinds: &[BackendKind], tol: f64) -> Diagnosis {
    let ok = |d: &TensorDiff| !d.non_finite && d.scaled <= tol;
    let pair_fails = |pair: &str| params.values().any(|pp| pp.get(pair).is_some_and(|d| !ok(d)));
    let pairs = backend_pairs(kinds);
    let failing_pairs: Vec<String> = pairs.iter().map(|&(a, b)| pair_name(a, b)).filter(|p| pair_fails(p)).collect();
    // The odd one out: every pair it is in fails, every pair without it holds.
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let named_pair_fails = |a: &str, b: &str| {
        let (a, b): (BackendKind, BackendKind) = (a.parse().expect("a backend name"), b.parse().expect("a backend name"));
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        pair_fails(&pair_name(a, b))
    };
    let odd_one_out = odd_one_out(&names, named_pair_fails).map(|n| n.parse::<BackendKind>().expect("a backend name"));
    let kinds_of = |side: Vec<&str>| side.into_iter().map(|n| n.parse::<BackendKind>().expect("a backend name")).collect::<Vec<_>>();
    let no_majority = no_majority(&names, named_pair_fails).map(|(a, b)| [kinds_of(a), kinds_of(b)]);
    let param_fails = |name: &str| {
        params[name].iter().any(|(pair, d)| {
            let relevant = match odd_one_out {
                Some(k) => pair.split('-').any(|b| b == k.name()),
                None => true,
            };
            relevant && !ok(d)
        })
    };
    let layer_of = |param: &str| param.rsplit_once('.').map_or(param, |(l, _)| l).to_string();
    let first_bad = order.iter().rev().find(|p| param_fails(p)).cloned().unwrap_or_default();
    let bad_layer = layer_of(&first_bad);
    // Layers in forward order, with the name of the parameterised ones.
    let names: Vec<String> = spec.layers.iter().map(layer_label).collect();
    let bad_at = names.iter().position(|n| *n == bad_layer).unwrap_or(0);
    let good_at = (bad_at + 1..names.len()).find(|&i| {
        let n = &names[i];
        order.iter().any(|p| layer_of(p) == *n) && !order.iter().filter(|p| layer_of(p) == *n).any(|p| param_fails(p))
    });
    // The last agreeing layer stays a suspect: its own parameter gradients can be right
    // while the gradient it passes to its input is wrong (batch norm's, for one).
    let mut suspects: Vec<String> = match good_at {
        Some(g) => names[bad_at..=g].to_vec(),
        None => names[bad_at..].iter().cloned().chain(["cross_entropy".to_string()]).collect(),
    };
    suspects.dedup();
    Diagnosis {
        odd_one_out,
        no_majority,
        failing_pairs,
        first_disagreeing_param: first_bad,
        last_agreeing_layer: good_at.map(|i| names[i].clone()),
        suspects,
        probes: vec![],
        culprit: None,
        culprit_by: None,
    }
}

/// The kind of op a layer label stands for: `conv2` is a `conv2d`, `fc1_bn` a
/// `batch_norm`; op labels are their own kind.
pub fn layer_kind(spec: &ModelSpec, label: &str) -> String {
    spec.layers
        .iter()
        .find(|l| layer_label(l) == label)
        .map(|l| match l {
            Layer::Conv2d { .. } => "conv2d",
            Layer::Linear { .. } => "linear",
            Layer::BatchNorm { .. } => "batch_norm",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::Relu => "relu",
            Layer::Flatten => "flatten",
            Layer::Dropout { .. } => "dropout",
            Layer::Softmax => "softmax",
        })
        .unwrap_or(label)
        .to_string()
}

/// Probes the suspects' op kinds and names the culprit: the one kind whose probe
/// disagrees, or, when every probe agrees, the one suspect kind no probe could clear.
pub fn localise(spec: &ModelSpec, d: &mut Diagnosis, kinds: &[BackendKind], opts: &BackendOptions, dtype: DType, tol: f64) -> Result<()> {
    let mut suspect_kinds: Vec<String> = d.suspects.iter().map(|s| layer_kind(spec, s)).collect();
    suspect_kinds.sort();
    suspect_kinds.dedup();
    d.probes = probe(&suspect_kinds, kinds, opts, dtype, tol)?;
    let failing: Vec<&Probe> = d.probes.iter().filter(|p| !p.agree).collect();
    if failing.len() == 1 {
        d.culprit = Some(failing[0].op.clone());
        d.culprit_by = Some("probe".into());
    } else if failing.is_empty() {
        // A reshape cannot get a gradient wrong in a way the others would not share.
        let unprobed: Vec<&String> =
            suspect_kinds.iter().filter(|k| *k != "flatten" && !d.probes.iter().any(|p| &p.op == *k)).collect();
        if unprobed.len() == 1 {
            d.culprit = Some(unprobed[0].clone());
            d.culprit_by = Some("elimination".into());
        }
    }
    Ok(())
}

/// Runs every suspect kind that is also a primitive alone on every backend.
fn probe(suspect_kinds: &[String], kinds: &[BackendKind], opts: &BackendOptions, dtype: DType, tol: f64) -> Result<Vec<Probe>> {
    suspect_kinds
        .iter()
        .filter(|k| probe::SUITE_OPS.contains(&k.as_str()))
        .map(|op| probe::run(op, false, kinds, opts, dtype, tol))
        .collect()
}

/// A readable name per layer: the module name for parameterised ones, the op otherwise.
pub fn layer_label(l: &Layer) -> String {
    match l {
        Layer::Conv2d { name, .. } | Layer::BatchNorm { name, .. } | Layer::Linear { name, .. } => name.to_string(),
        Layer::MaxPool2d { .. } => "max_pool2d".into(),
        Layer::Relu => "relu".into(),
        Layer::Flatten => "flatten".into(),
        Layer::Dropout { .. } => "dropout".into(),
        Layer::Softmax => "softmax".into(),
    }
}
