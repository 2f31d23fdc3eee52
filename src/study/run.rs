//! `parity-report run FILE`: a user's program on every backend. Every output, the loss
//! and every gradient compared pairwise; when backends disagree, the odd one out and
//! the nodes that disagree when each node is run alone on the reference's values of its
//! inputs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::grads::{grad_tolerance, MODEL_SCALE_FLOOR};
use super::lockstep::BackendOptions;
use super::{backend_pairs, pair_name};
use crate::backends::{Backend, BackendKind, Implementation, Request};
use crate::dtype::DType;
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::program::{check, Output as ProgramOutput};
use crate::models::rng::SplitMix64;
use crate::models::{InputDecl, Program, Role, ValueType};
use crate::parity::{compare_floored_with, compare_patterns, max_nan, no_majority, odd_one_out, worst_scaled_over_with, TensorDiff, Tolerance};

pub struct RunOptions {
    pub program: Program,
    /// Where the program came from (its file), for the report.
    pub origin: String,
    pub inputs: Vec<HostTensor>,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    /// One backend with another of its implementations of an op (`--implementation`).
    pub implementation: Option<(BackendKind, Implementation)>,
}

impl RunOptions {
    /// The backend `kind` as this run uses it.
    fn backend(&self, kind: BackendKind) -> Result<Box<dyn Backend>> {
        let b = super::lockstep::backend(kind, &self.backend_options)?;
        match &self.implementation {
            Some((k, which)) if *k == kind => b.with_implementation(which),
            _ => Ok(b),
        }
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RunSettings {
    pub program: String,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    /// `backend:op:name` when one backend ran another of its implementations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// Agreement: max |a - b| <= this × max |b| for every compared value.
    pub scaled_tolerance: f64,
    /// The program has inputs that hold NaN or infinity on purpose (`allow_non_finite`):
    /// values are then compared by non-finite pattern (NaN, +inf, -inf or finite must
    /// match entry by entry, the finite entries as usual). Otherwise NaN or infinity is
    /// never agreement.
    pub non_finite_patterns: bool,
}

/// What one backend returned, or why it could not.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BackendRun {
    pub ok: bool,
    /// The backend's refusal or failure, word for word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the backend does not take this program at all (its declared capabilities):
    /// not run, not a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Output values by name.
    pub outputs: BTreeMap<String, HostTensor>,
    /// Gradients by input name.
    pub grads: BTreeMap<String, HostTensor>,
    /// State inputs after the run (batch norm's running statistics as the run updated
    /// them), by name.
    pub state: BTreeMap<String, HostTensor>,
    /// With the program's `train`: every parameter after the last step, by name.
    pub trained: BTreeMap<String, HostTensor>,
    /// Wall time of this backend's run (executor, forward, backward, training), for the
    /// fuzzer's throughput figures.
    pub seconds: f64,
}

/// One value compared between every pair of backends that ran.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Compared {
    /// `loss`, `output:<name>` or `grad:<input>`.
    pub item: String,
    pub pairs: BTreeMap<String, TensorDiff>,
}

/// A node run alone on every backend, on the reference's values of its inputs, with a
/// fixed pseudo-random cotangent.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct NodeCheck {
    pub node: String,
    pub op: String,
    /// Per pair, the worst scaled difference of the node's output.
    pub output_scaled: BTreeMap<String, f64>,
    /// Per pair, the worst scaled difference of the gradients of its inputs.
    pub grad_scaled: BTreeMap<String, f64>,
    /// Backends that refused the node alone, with their message.
    pub refused: BTreeMap<String, String>,
    pub agree: bool,
    /// Checked at the parameters the program's training reached (the reference's), not at
    /// its start: a program that trains can go apart only from its second step on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_trained_params: bool,
    /// For a node that disagrees: every backend's input gradients against central
    /// finite differences of the node in f64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finite_differences: Option<FdCheck>,
}

/// Gradients of a node against central finite differences (the oracle that needs no
/// framework).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FdCheck {
    /// Why no finite differences were taken (a kink or tie within the step, too many
    /// entries), when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Per backend: max |analytic - numeric| / max |numeric|.
    pub scaled: BTreeMap<String, f64>,
    /// Backends within the finite-difference tolerance.
    pub agree: Vec<BackendKind>,
    pub disagree: Vec<BackendKind>,
    pub tolerance: f64,
}

/// Finite differences are taken on nodes with at most this many input entries.
pub const FD_MAX_ENTRIES: usize = 4096;
/// The relative step of the central differences.
const FD_STEP: f64 = 1e-6;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RunDiagnosis {
    pub failing_pairs: Vec<String>,
    /// The backend that disagrees with every other while they agree.
    pub odd_one_out: Option<BackendKind>,
    /// Two equal camps (two against two): both sides, and no side picked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_majority: Option<[Vec<BackendKind>; 2]>,
    /// The backend whose forward values fed the node checks.
    pub values_from: BackendKind,
    pub nodes: Vec<NodeCheck>,
    /// The nodes that disagree alone (forward order), and their ops.
    pub culprits: Vec<String>,
    pub culprit_ops: Vec<String>,
    /// The backends at fault: the odd one out, or those that finite differences
    /// contradict on a culprit node while another backend matches them.
    pub at_fault: Vec<BackendKind>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RunStudy {
    pub settings: RunSettings,
    pub backends: BTreeMap<BackendKind, BackendRun>,
    pub compared: Vec<Compared>,
    /// Per pair, the worst scaled difference over everything compared.
    pub worst_scaled: BTreeMap<String, f64>,
    pub agree: bool,
    /// Some backend refused or failed (a result, reported; exit code 3).
    pub backend_failed: bool,
    pub diagnosis: Option<RunDiagnosis>,
}

/// Runs the program on every backend and compares.
pub fn run(opts: &RunOptions) -> Result<RunStudy> {
    let checked = check(&opts.program)?;
    let dtype = opts.dtype;
    let patterns = non_finite_patterns(&opts.program);
    let tol = grad_tolerance(dtype);
    let inputs: Vec<HostTensor> = opts.inputs.iter().map(|t| t.rounded(dtype)).collect();
    let output_names: Vec<String> = opts.program.outputs.iter().map(|o| o.value.clone()).collect();
    let mut backends = BTreeMap::new();
    for &kind in &opts.backends {
        let started = std::time::Instant::now();
        let mut unsupported = None;
        let result = opts.backend(kind).and_then(|be| {
            if let Some(why) = be.capabilities().unsupported(&opts.program, dtype) {
                unsupported = Some(format!("{kind} {why}"));
                return Err(crate::error::Error::Unsupported(format!("{kind} {why}")));
            }
            let mut exec = be.executor(&opts.program, &inputs, dtype)?;
            let o = exec.run(Request { backward: true, host_grads: true, ..Request::default() })?;
            let state = state_inputs(&opts.program).map(|(i, d)| Ok((d.name.clone(), exec.input(i)?))).collect::<Result<BTreeMap<_, _>>>()?;
            let mut trained = BTreeMap::new();
            if let Some(t) = &opts.program.train {
                for step in 0..t.steps {
                    if step > 0 {
                        exec.run(Request { backward: true, ..Request::default() })?;
                    }
                    exec.sgd_step(t.lr, t.momentum)?;
                }
                for (i, d) in opts.program.params() {
                    trained.insert(d.name.clone(), exec.input(i)?);
                }
            }
            Ok((o, state, trained))
        });
        let seconds = started.elapsed().as_secs_f64();
        backends.insert(
            kind,
            match result {
                Ok((o, state, trained)) => BackendRun {
                    ok: true,
                    error: None,
                    unsupported: None,
                    loss: o.loss,
                    outputs: output_names.iter().cloned().zip(o.values).collect(),
                    grads: opts.program.inputs.iter().zip(o.grads).filter_map(|(d, g)| g.map(|g| (d.name.clone(), g))).collect(),
                    state,
                    trained,
                    seconds,
                },
                Err(e) => BackendRun {
                    ok: false,
                    error: Some(e.to_string()),
                    unsupported: unsupported.take(),
                    loss: None,
                    outputs: BTreeMap::new(),
                    grads: BTreeMap::new(),
                    state: BTreeMap::new(),
                    trained: BTreeMap::new(),
                    seconds,
                },
            },
        );
    }
    let ran: Vec<BackendKind> = backends.iter().filter(|(_, r)| r.ok).map(|(k, _)| *k).collect();
    let mut compared = Vec::new();
    let mut worst_scaled: BTreeMap<String, f64> = BTreeMap::new();
    let close = Tolerance::torch_default(dtype);
    let compare = |a: &HostTensor, b: &HostTensor, dtype: DType, tol: Tolerance| if patterns { compare_patterns(a, b, dtype, tol) } else { crate::parity::compare(a, b, dtype, tol) };
    let mut add = |item: String, pairs: BTreeMap<String, TensorDiff>, worst: &mut BTreeMap<String, f64>| {
        for (p, d) in &pairs {
            let w = worst.entry(p.clone()).or_insert(0.0);
            *w = max_nan(*w, if d.non_finite { f64::NAN } else { d.scaled });
        }
        compared.push(Compared { item, pairs });
    };
    let pairs = backend_pairs(&ran);
    if checked.loss.is_some() {
        let mut per = BTreeMap::new();
        for &(a, b) in &pairs {
            let (la, lb) = (backends[&a].loss.unwrap_or(f64::NAN), backends[&b].loss.unwrap_or(f64::NAN));
            per.insert(pair_name(a, b), compare(&HostTensor::scalar(la), &HostTensor::scalar(lb), dtype, close)?);
        }
        add("loss".into(), per, &mut worst_scaled);
    }
    for name in &output_names {
        let mut per = BTreeMap::new();
        for &(a, b) in &pairs {
            per.insert(pair_name(a, b), compare(&backends[&a].outputs[name], &backends[&b].outputs[name], dtype, close)?);
        }
        add(format!("output:{name}"), per, &mut worst_scaled);
    }
    for (_, d) in state_inputs(&opts.program) {
        let mut per = BTreeMap::new();
        for &(a, b) in &pairs {
            per.insert(pair_name(a, b), compare(&backends[&a].state[&d.name], &backends[&b].state[&d.name], dtype, close)?);
        }
        add(format!("state:{}", d.name), per, &mut worst_scaled);
    }
    if opts.program.train.is_some() {
        for (_, d) in opts.program.params() {
            let mut per = BTreeMap::new();
            for &(a, b) in &pairs {
                per.insert(pair_name(a, b), compare(&backends[&a].trained[&d.name], &backends[&b].trained[&d.name], dtype, close)?);
            }
            add(format!("trained:{}", d.name), per, &mut worst_scaled);
        }
    }
    for (_, d) in opts.program.grad_inputs() {
        let mut per = BTreeMap::new();
        for &(a, b) in &pairs {
            let scale_b = backends[&b].grads.values().flat_map(|t| t.data.iter()).filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
            per.insert(pair_name(a, b), compare_floored_with(&backends[&a].grads[&d.name], &backends[&b].grads[&d.name], dtype, scale_b, MODEL_SCALE_FLOOR, patterns)?);
        }
        add(format!("grad:{}", d.name), per, &mut worst_scaled);
    }
    let ok = |v: f64| v <= tol;
    let agree = worst_scaled.values().all(|&v| ok(v));
    // A backend that declares it lacks an op of the program did not fail: it was skipped.
    let backend_failed = backends.values().any(|r: &BackendRun| !r.ok && r.unsupported.is_none());
    let diagnosis = if agree || ran.len() < 2 {
        None
    } else {
        let failing_pairs: Vec<String> = worst_scaled.iter().filter(|(_, v)| !ok(**v)).map(|(p, _)| p.clone()).collect();
        let names: Vec<&str> = ran.iter().map(|k| k.name()).collect();
        // Who is odd one out is judged on real differences: a pair whose every item is
        // within tolerance or apart by rounding noise in absolute terms (a gradient that
        // is mathematically zero, computed as 1e-7 of noise) sides together.
        let noise_floor = match dtype {
            DType::F64 => 1e-10,
            DType::F32 => 1e-5,
        };
        let really_apart = |p: &str| {
            compared.iter().any(|c: &Compared| c.pairs.get(p).is_some_and(|d| d.non_finite || !(d.scaled <= tol || d.max_abs <= noise_floor)))
        };
        let pair_fails = |a: &str, b: &str| {
            failing_pairs.iter().any(|p| (p == &format!("{a}-{b}") || p == &format!("{b}-{a}")) && really_apart(p))
        };
        let odd = odd_one_out(&names, pair_fails).map(|n| n.parse::<BackendKind>().expect("a backend name"));
        let kinds_of = |side: Vec<&str>| side.into_iter().map(|n| n.parse::<BackendKind>().expect("a backend name")).collect::<Vec<_>>();
        let no_majority = no_majority(&names, pair_fails).map(|(a, b)| [kinds_of(a), kinds_of(b)]);
        // The node checks read the forward values of a backend that is not the odd one.
        let values_from = BackendKind::reference_among(&ran.iter().copied().filter(|k| Some(*k) != odd).collect::<Vec<_>>()).expect("two backends ran");
        let mut nodes = node_checks(opts, &inputs, &ran, values_from, tol, patterns)?;
        // A program that trains can agree at its start and go apart from the second step
        // on (a wrong gradient at the updated parameters, seen only in what training
        // reached): then every node is checked again at the parameters the reference
        // trained to, so that the op is named rather than the optimiser.
        if opts.program.train.is_some() && nodes.iter().all(|n| n.agree) {
            let trained = &backends[&values_from].trained;
            let at_trained: Vec<HostTensor> = opts.program.inputs.iter().zip(&inputs).map(|(d, t)| trained.get(&d.name).cloned().unwrap_or_else(|| t.clone())).collect();
            let again = node_checks(opts, &at_trained, &ran, values_from, tol, patterns)?;
            nodes.extend(again.into_iter().map(|n| NodeCheck { at_trained_params: true, ..n }));
        }
        let culprits: Vec<&NodeCheck> = nodes.iter().filter(|n| !n.agree).collect();
        let mut culprit_ops: Vec<String> = culprits.iter().map(|n| n.op.clone()).collect();
        culprit_ops.dedup();
        let mut at_fault: Vec<BackendKind> = odd.into_iter().collect();
        for n in &culprits {
            if let Some(fd) = &n.finite_differences {
                if !fd.agree.is_empty() {
                    at_fault.extend(fd.disagree.iter().copied());
                }
            }
        }
        at_fault.sort();
        at_fault.dedup();
        Some(RunDiagnosis {
            failing_pairs,
            odd_one_out: odd,
            no_majority,
            values_from,
            culprits: culprits.iter().map(|n| n.node.clone()).collect(),
            culprit_ops,
            nodes,
            at_fault,
        })
    };
    Ok(RunStudy {
        settings: RunSettings {
            program: opts.origin.clone(),
            dtype,
            backends: opts.backends.clone(),
            backend_options: opts.backend_options.clone(),
            implementation: opts.implementation.as_ref().map(|(k, i)| format!("{k}:{}:{}", i.op, i.name)),
            scaled_tolerance: tol,
            non_finite_patterns: patterns,
        },
        backends,
        compared,
        worst_scaled,
        agree,
        backend_failed,
        diagnosis,
    })
}

/// Whether `program` is compared by non-finite pattern: some input holds NaN or infinity
/// on purpose (`allow_non_finite`).
pub fn non_finite_patterns(program: &Program) -> bool {
    program.inputs.iter().any(|d| d.allow_non_finite)
}

/// The float state inputs (running statistics, masks), which ops may update.
fn state_inputs(program: &Program) -> impl Iterator<Item = (usize, &InputDecl)> {
    program.inputs.iter().enumerate().filter(|(_, d)| d.role == Role::State && d.value_type == ValueType::Float)
}

/// Every node alone: its inputs are the values `source` computed for them (float values
/// as trainable inputs, labels and state as they are), its output is weighted by a fixed
/// pseudo-random cotangent, and every backend's output and input gradients are compared.
fn node_checks(opts: &RunOptions, inputs: &[HostTensor], kinds: &[BackendKind], source: BackendKind, tol: f64, patterns: bool) -> Result<Vec<NodeCheck>> {
    let dtype = opts.dtype;
    let program = &opts.program;
    let checked = check(program)?;
    let mut exec = opts.backend(source)?.executor(program, inputs, dtype)?;
    let values: Vec<HostTensor> = inputs.iter().cloned().chain(exec.run(Request { all_values: true, ..Request::default() })?.values).collect();
    let mut out = Vec::new();
    for (k, node) in program.nodes.iter().enumerate() {
        let mut single = Program::default();
        let mut feed = Vec::new();
        let mut args = Vec::new();
        for (pos, arg) in checked.args[k].iter().enumerate() {
            let Some(v) = arg else {
                args.push(None);
                continue;
            };
            let name = format!("in{pos}");
            let mut d = InputDecl::new(&name, &values[*v].shape, Role::Param);
            if *v < program.inputs.len() {
                let orig = &program.inputs[*v];
                d.value_type = orig.value_type;
                if orig.value_type == ValueType::Index || orig.role == Role::State {
                    d.role = if orig.role == Role::State { Role::State } else { Role::Input };
                }
            }
            d.allow_non_finite = true;
            args.push(Some(single.declare(d)));
            feed.push(values[*v].clone());
        }
        let refs: Vec<Option<&crate::models::ValueId>> = args.iter().map(Option::as_ref).collect();
        let y = single.node(&node.id, node.op.clone(), &refs);
        let shape = &checked.shapes[program.inputs.len() + k];
        let mut rng = SplitMix64::new(k as u64 + 1);
        let n: usize = shape.iter().product();
        let cot: Vec<f64> = (0..n).map(|_| dtype.round(rng.uniform(-1.0, 1.0))).collect();
        single.outputs.push(ProgramOutput { value: y.0.clone(), cotangent: Some(serde_json::json!(cot)) });
        let mut results = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for &kind in kinds {
            let r = opts.backend(kind).and_then(|be| {
                let mut e = be.executor(&single, &feed, dtype)?;
                e.run(Request { backward: true, host_grads: true, ..Request::default() })
            });
            match r {
                Ok(o) => {
                    results.insert(kind, o);
                }
                Err(e) => {
                    refused.insert(kind.name().to_string(), e.to_string());
                }
            }
        }
        let mut output_scaled = BTreeMap::new();
        let mut grad_scaled = BTreeMap::new();
        let ran: Vec<BackendKind> = results.keys().copied().collect();
        for (a, b) in backend_pairs(&ran) {
            let (oa, ob) = (&results[&a], &results[&b]);
            output_scaled.insert(pair_name(a, b), worst_scaled_over_with(&oa.values, &ob.values, dtype, patterns)?);
            let ga: Vec<HostTensor> = oa.grads.iter().flatten().cloned().collect();
            let gb: Vec<HostTensor> = ob.grads.iter().flatten().cloned().collect();
            grad_scaled.insert(pair_name(a, b), worst_scaled_over_with(&ga, &gb, dtype, patterns)?);
        }
        let agree = refused.is_empty() && output_scaled.values().chain(grad_scaled.values()).all(|&v| v <= tol);
        let finite_differences = if agree { None } else { Some(finite_differences(opts, &single, &feed, source, &results)?) };
        out.push(NodeCheck { node: node.id.clone(), op: node.op.name().to_string(), output_scaled, grad_scaled, refused, agree, at_trained_params: false, finite_differences });
    }
    Ok(out)
}

/// Why finite differences would only measure noise at these inputs, if they would: a
/// kink (ReLU at 0) or a tie (two equal candidates of a max) within a few steps.
fn fd_obstacle(op: &crate::models::Op, feed: &[HostTensor]) -> Option<String> {
    use crate::models::Op;
    let x = feed.first()?;
    let near = |a: f64, b: f64| (a - b).abs() <= 4.0 * FD_STEP * a.abs().max(b.abs()).max(1.0);
    match op {
        Op::Relu {} if x.data.iter().any(|&v| near(v, 0.0)) => Some("an input within the step of ReLU's kink at 0".into()),
        Op::Abs {} | Op::Elu { .. } | Op::LeakyRelu { .. } if x.data.iter().any(|&v| near(v, 0.0)) => Some(format!("an input within the step of {}'s kink at 0", op.name())),
        Op::Clamp { min, max } if x.data.iter().any(|&v| min.is_some_and(|b| near(v, b)) || max.is_some_and(|b| near(v, b))) => {
            Some("an input within the step of a clamp bound".into())
        }
        Op::Softplus { beta, threshold } if x.data.iter().any(|&v| near(v * beta, *threshold)) => Some("an input within the step of softplus's threshold (where it jumps)".into()),
        Op::Maximum {} => {
            let y = feed.get(1)?;
            let (a, b) = (ndarray::ArrayD::from_shape_vec(x.shape.clone(), x.data.clone()).ok()?, ndarray::ArrayD::from_shape_vec(y.shape.clone(), y.data.clone()).ok()?);
            let shape = crate::engine::ops::elementwise::broadcast_shape(a.shape(), b.shape()).ok()?;
            let (a, b) = (a.broadcast(shape.clone())?, b.broadcast(shape)?);
            a.iter().zip(b.iter()).any(|(&u, &v)| near(u, v)).then(|| "two operands of maximum within the step of a tie".into())
        }
        // A channel of (nearly) equal values has a variance of rounding noise: normalising
        // divides that noise by sqrt(eps), and finite differences see only noise too.
        Op::BatchNorm { training: true, .. } if x.shape.len() >= 2 => {
            let (n, c) = (x.shape[0], x.shape[1]);
            let inner: usize = x.shape[2..].iter().product();
            (0..c)
                .any(|ch| {
                    let v: Vec<f64> = (0..n).flat_map(|i| (0..inner).map(move |j| (i * c + ch) * inner + j)).map(|k| x.data[k]).collect();
                    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &u| (lo.min(u), hi.max(u)));
                    hi - lo <= 1e-6 * lo.abs().max(hi.abs()).max(1.0)
                })
                .then(|| "a (nearly) constant channel, whose normalisation is rounding noise".into())
        }
        // sqrt and log: the singularity at 0 (and outside the domain below it).
        Op::Sqrt {} | Op::Log {} if x.data.iter().any(|&v| v <= 4.0 * FD_STEP * v.abs().max(1.0)) => {
            Some(format!("an input within the step of {}'s singularity at 0", op.name()))
        }
        Op::Div {} if feed.get(1).is_some_and(|d| d.data.iter().any(|&v| v.abs() <= 4.0 * FD_STEP * v.abs().max(1.0))) => {
            Some("a divisor within the step of 0".into())
        }
        // Tied maxima of a reduction: the gradient's split among them is a convention.
        Op::Amax { dim, .. } if !x.shape.is_empty() => {
            let reduced = crate::models::program::reduced_dims(dim, x.shape.len()).ok()?;
            let mut groups: BTreeMap<Vec<usize>, Vec<f64>> = BTreeMap::new();
            for (flat, &v) in x.data.iter().enumerate() {
                let mut rest = flat;
                let mut key = vec![0; x.shape.len()];
                for d in (0..x.shape.len()).rev() {
                    key[d] = if reduced.contains(&d) { 0 } else { rest % x.shape[d] };
                    rest /= x.shape[d];
                }
                groups.entry(key).or_default().push(v);
            }
            groups
                .values()
                .any(|g| {
                    let max = g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    g.iter().filter(|&&v| near(v, max)).count() > 1
                })
                .then(|| "a tie for the maximum of an amax reduction".into())
        }
        // A (nearly) constant row of layer_norm or group of group_norm, as batch_norm's
        // channel: its normalisation is rounding noise over sqrt(eps).
        Op::LayerNorm { normalized_shape, .. } if !x.data.is_empty() => constant_rows(x, normalized_shape.iter().product(), "row"),
        Op::GroupNorm { num_groups, .. } if x.shape.len() >= 2 && !x.data.is_empty() => constant_rows(x, x.data.len() / x.shape[0] / num_groups, "group"),
        Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
            let (k, st, p) = (*kernel, stride.unwrap_or(*kernel), *padding);
            let (planes, h, w) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3]);
            let len = |l| crate::models::program::pooled_len(l, k, st, p, *ceil_mode).unwrap_or(0);
            let (oh, ow) = (len(h), len(w));
            for plane in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let window: Vec<f64> = (0..k * k)
                            .filter_map(|t| {
                                let (y, xx) = ((oy * st + t / k) as isize - p as isize, (ox * st + t % k) as isize - p as isize);
                                (y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w).then(|| x.data[plane * h * w + y as usize * w + xx as usize])
                            })
                            .collect();
                        let max = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if window.iter().filter(|&&v| near(v, max)).count() > 1 {
                            return Some(format!("a tie for the maximum of a window (plane {plane}, output {oy},{ox})"));
                        }
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Why finite differences do not apply: NaN or infinity among `what`, named by kind
/// ("NaN", "+inf", "-inf"), which the accepted differences can match.
fn non_finite_obstacle(tensors: &[HostTensor], what: &str) -> String {
    let values = || tensors.iter().flat_map(|t| t.data.iter().copied());
    let mut kinds = Vec::new();
    if values().any(f64::is_nan) {
        kinds.push("NaN");
    }
    if values().any(|v| v == f64::INFINITY) {
        kinds.push("+inf");
    }
    if values().any(|v| v == f64::NEG_INFINITY) {
        kinds.push("-inf");
    }
    format!("a non-finite {what} ({}): finite differences do not apply", kinds.join(", "))
}

/// A (nearly) constant run of `row` consecutive entries of `x` (a layer-norm row, a
/// group-norm group), whose normalisation is rounding noise over sqrt(eps).
fn constant_rows(x: &HostTensor, row: usize, what: &str) -> Option<String> {
    x.data
        .chunks(row.max(1))
        .any(|v| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &u| (lo.min(u), hi.max(u)));
            hi - lo <= 1e-6 * lo.abs().max(hi.abs()).max(1.0)
        })
        .then(|| format!("a (nearly) constant {what}, whose normalisation is rounding noise"))
}

/// Each backend's input gradients of the node alone against central differences of the
/// node's scalar (`Σ output ⊙ cotangent`) computed in f64 with `source`'s forward.
fn finite_differences(opts: &RunOptions, single: &Program, feed: &[HostTensor], source: BackendKind, results: &BTreeMap<BackendKind, crate::backends::Outcome>) -> Result<FdCheck> {
    let tolerance = match opts.dtype {
        DType::F64 => 1e-5,
        DType::F32 => 1e-2,
    };
    let mut check = FdCheck { skipped: None, scaled: BTreeMap::new(), agree: vec![], disagree: vec![], tolerance };
    let entries: usize = single.grad_inputs().map(|(i, _)| feed[i].len()).sum();
    if entries > FD_MAX_ENTRIES {
        check.skipped = Some(format!("{entries} input entries (finite differences are taken up to {FD_MAX_ENTRIES})"));
        return Ok(check);
    }
    // Finite differences of NaN or infinity measure nothing.
    if feed.iter().any(|t| !t.all_finite()) {
        check.skipped = Some(non_finite_obstacle(feed, "input"));
        return Ok(check);
    }
    if let Some(o) = results.values().find(|o| o.values.iter().chain(o.grads.iter().flatten()).any(|t| !t.all_finite())) {
        let all: Vec<HostTensor> = o.values.iter().chain(o.grads.iter().flatten()).cloned().collect();
        check.skipped = Some(non_finite_obstacle(&all, "output or gradient"));
        return Ok(check);
    }
    if let Some(why) = fd_obstacle(&single.nodes[0].op, feed) {
        check.skipped = Some(why);
        return Ok(check);
    }
    let exec = std::cell::RefCell::new(opts.backend(source)?.executor(single, feed, DType::F64)?);
    let failed = std::cell::Cell::new(None::<String>);
    let f = |xs: &[HostTensor]| -> f64 {
        let mut e = exec.borrow_mut();
        let r = xs.iter().enumerate().try_for_each(|(i, t)| e.set_input(i, t)).and_then(|()| e.run(Request { backward: false, ..Request::default() }));
        match r {
            // Without a loss the scalar is Σ output ⊙ cotangent.
            Ok(o) => o.values.iter().zip(&single.outputs).map(|(v, out)| {
                let cot = crate::models::program::values_to_tensor(out.cotangent.as_ref().expect("node checks have cotangents"), &v.shape, true).expect("checked");
                v.data.iter().zip(&cot.data).map(|(a, b)| a * b).sum::<f64>()
            }).sum(),
            Err(e) => {
                failed.set(Some(e.to_string()));
                f64::NAN
            }
        }
    };
    let numeric: Vec<HostTensor> = single.grad_inputs().map(|(i, _)| crate::parity::numeric_gradient(&f, feed, i, FD_STEP)).collect();
    if let Some(e) = failed.take() {
        check.skipped = Some(format!("{source} failed while taking finite differences: {e}"));
        return Ok(check);
    }
    for (kind, o) in results {
        let analytic: Vec<HostTensor> = o.grads.iter().flatten().cloned().collect();
        let w = crate::parity::worst_scaled_over(&analytic, &numeric, DType::F64)?;
        check.scaled.insert(kind.name().to_string(), w);
        if w <= tolerance {
            check.agree.push(*kind);
        } else {
            check.disagree.push(*kind);
        }
    }
    // Before finite differences contradict a backend, they must hold still when the step
    // doubles: a gradient at its rounding floor (cancellation, as batch norm over two
    // samples) or a kink just beyond the obstacles' reach moves the estimate, and then it
    // measures noise, not the backend.
    if !check.disagree.is_empty() {
        let doubled: Vec<HostTensor> = single.grad_inputs().map(|(i, _)| crate::parity::numeric_gradient(&f, feed, i, 2.0 * FD_STEP)).collect();
        let drift = match failed.take() {
            Some(e) => {
                check.skipped = Some(format!("{source} failed while taking finite differences: {e}"));
                None
            }
            None => Some(crate::parity::worst_scaled_over(&doubled, &numeric, DType::F64)?),
        };
        if let Some(drift) = drift.filter(|d| !(*d <= tolerance)) {
            check.skipped = Some(format!(
                "finite differences that move with the step (steps {FD_STEP:e} and {:e} of each entry give answers {drift:.1e} of scale apart): the gradient is at its rounding floor or a kink lies within the step",
                2.0 * FD_STEP
            ));
        }
        if check.skipped.is_some() {
            check.scaled.clear();
            check.agree.clear();
            check.disagree.clear();
        }
    }
    Ok(check)
}
