//! `parity-report fuzz`: differential gradient fuzzing. Generated programs (`gen`) run on
//! every backend through `run`'s oracle (every loss, output and gradient pairwise, the
//! odd one out, each node alone, finite differences where the function is smooth there);
//! a disagreement becomes a finding, deduplicated by (op, backend, kind) and shrunk
//! (`shrink`) to the smallest program that still shows it.

pub mod gen;
pub mod shrink;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::lockstep::BackendOptions;
use super::run::{run as run_program, RunOptions, RunStudy};
use crate::backends::BackendKind;
use crate::dtype::DType;
use crate::error::Result;
use crate::models::Program;

pub use gen::{Case, Regime};

#[derive(Clone, Debug)]
pub struct FuzzOptions {
    pub cases: u64,
    pub seed: u64,
    pub max_nodes: usize,
    pub ops: Vec<&'static str>,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub backend_options: BackendOptions,
    /// Cases `index` with `index % count == shard - 1` (1-based shard).
    pub shard: (u64, u64),
    /// Stop after this many seconds (the cases run so far are the campaign, in order, so
    /// a time-limited run is a prefix of the same seed's full campaign).
    pub time_limit: Option<f64>,
    /// Also draw the NaN/infinity regime (a quarter of the cases): inputs with NaN and
    /// ±inf entries, compared by non-finite pattern. The other cases are the same as
    /// without it.
    pub nonfinite: bool,
}

/// What makes two findings the same one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub struct FindingKey {
    /// The op whose node disagrees when run alone (`graph` when no single node does).
    pub op: String,
    /// The backend at fault: the odd one out, or the one finite differences contradict.
    pub odd_backend: Option<BackendKind>,
    /// `wrong gradient`, `wrong value`, `NaN/inf value` or `NaN/inf gradient` (a backend
    /// returns NaN or infinity where another returns something else), `wrong state
    /// update`, `wrong parameter update`, `refused: ...` or `failed (panic): ...`.
    pub kind: String,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Finding {
    #[serde(flatten)]
    pub key: FindingKey,
    /// The first case that showed it, and how many cases did.
    pub first_case: u64,
    pub cases: u64,
    /// How many cases the campaign had run when it first appeared (1-based).
    pub cases_to_find: u64,
    pub regime: Regime,
    /// Nodes and input entries of the shrunk program.
    pub nodes: usize,
    pub input_entries: usize,
    /// The shrunk program, values inline (`parity-report run` replays it).
    #[serde(skip)]
    pub program: Program,
    /// The shrunk program's run, as `run` reports it.
    #[serde(skip)]
    pub evidence: Option<RunStudy>,
    /// What the backends said, one line each.
    pub summary: Vec<String>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FuzzReport {
    pub seed: u64,
    /// Cases run (fewer than asked for when `time_limit` stopped the campaign).
    pub cases: u64,
    /// The `--time-limit` in seconds, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    pub shard: (u64, u64),
    pub max_nodes: usize,
    /// Whether the NaN/infinity regime was drawn (`--nonfinite`).
    pub nonfinite: bool,
    pub dtype: DType,
    pub backends: Vec<BackendKind>,
    pub ops: Vec<&'static str>,
    /// Cases whose backends all agreed, and those with a finding (the accepted
    /// differences are counted apart: the three add up to `cases`).
    pub agreed: u64,
    pub disagreed: u64,
    /// Cases per op the generator placed (an op counted once per case).
    pub op_cases: BTreeMap<String, u64>,
    /// Cases whose disagreement is a documented semantic difference, by entry.
    pub accepted: BTreeMap<String, u64>,
    pub findings: Vec<Finding>,
    pub seconds: f64,
    /// Where the time went: each backend's runs of the generated cases, and the rest of
    /// the oracle (node checks, finite differences), attribution and shrinking.
    pub backend_seconds: BTreeMap<BackendKind, f64>,
    pub oracle_seconds: f64,
    pub shrink_seconds: f64,
}

/// The oracle's verdict on one program: None when every backend agrees.
pub fn judge(program: &Program, inputs: &[crate::HostTensor], opts: &FuzzOptions) -> Result<Option<(FindingKey, RunStudy)>> {
    Ok(judge_timed(program, inputs, opts)?.0)
}

/// `judge`, with each backend's wall time on the program's own run.
fn judge_timed(program: &Program, inputs: &[crate::HostTensor], opts: &FuzzOptions) -> Result<(Option<(FindingKey, RunStudy)>, Vec<(BackendKind, f64)>)> {
    let study = run_program(&RunOptions {
        program: program.clone(),
        origin: "fuzz".into(),
        inputs: inputs.to_vec(),
        dtype: opts.dtype,
        backends: opts.backends.clone(),
        backend_options: opts.backend_options.clone(),
        implementation: None,
    })?;
    let times = study.backends.iter().map(|(k, r)| (*k, r.seconds)).collect();
    let agreed = study.agree || within_noise(&study, opts.dtype);
    if agreed && !study.backend_failed {
        return Ok((None, times));
    }
    let key = key_of(program, &study, agreed);
    if key.odd_backend.is_none() {
        if let Some(found) = split_attribution(program, inputs, &study, opts)? {
            return Ok((Some(found), times));
        }
    }
    Ok((Some((key, study)), times))
}

/// With four or more voices, two backends can each be wrong in their own way in one
/// program (one at a tie, another by rounding): then no single backend is the odd one
/// out. When the others form one camp that agrees within itself, is larger than any
/// other and holds the reference (the most trusted backend), each backend outside it is
/// judged again with the camp alone, in registration order; the first that the camp
/// then singles out is the finding (its evidence is that narrowed run). Never decided
/// by picking a side: an even split (`parity::no_majority`) stays unattributed.
fn split_attribution(program: &Program, inputs: &[crate::HostTensor], study: &RunStudy, opts: &FuzzOptions) -> Result<Option<(FindingKey, RunStudy)>> {
    let ran: Vec<BackendKind> = study.backends.iter().filter(|(_, r)| r.ok).map(|(k, _)| *k).collect();
    if ran.len() < 4 || ran.len() != opts.backends.len() {
        return Ok(None);
    }
    let tol = study.settings.scaled_tolerance;
    let floor = noise_floor(opts.dtype);
    let fails = |a: BackendKind, b: BackendKind| {
        let (ab, ba) = (super::pair_name(a, b), super::pair_name(b, a));
        study.compared.iter().any(|c| c.pairs.get(&ab).or_else(|| c.pairs.get(&ba)).is_some_and(|d| d.non_finite || (!(d.scaled <= tol) && !(d.max_abs <= floor))))
    };
    // The camps: backends that agree with every other member.
    let mut camps: Vec<Vec<BackendKind>> = Vec::new();
    for &k in &ran {
        match camps.iter_mut().find(|c| c.iter().all(|&m| !fails(m, k))) {
            Some(c) => c.push(k),
            None => camps.push(vec![k]),
        }
    }
    camps.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let (camp, rest) = (&camps[0], &camps[1..]);
    // The camp must hold the run's reference (the most trusted backend): two backends
    // that happen to agree (both exactly 0 where the others differ by rounding noise)
    // are no camp to judge the reference by.
    let reference = BackendKind::reference_among(&ran);
    if camp.len() < 2
        || rest.first().is_some_and(|c| c.len() >= camp.len())
        || rest.iter().map(Vec::len).sum::<usize>() < 2
        || !reference.is_some_and(|r| camp.contains(&r))
    {
        return Ok(None);
    }
    let mut outsiders: Vec<BackendKind> = rest.iter().flatten().copied().collect();
    outsiders.sort();
    for odd in outsiders {
        let mut backends = camp.clone();
        backends.push(odd);
        backends.sort();
        let narrowed = FuzzOptions { backends, ..opts.clone() };
        if let (Some((key, s)), _) = judge_timed(program, inputs, &narrowed)? {
            if key.odd_backend == Some(odd) {
                return Ok(Some((key, s)));
            }
        }
    }
    Ok(None)
}

fn noise_floor(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
    }
}

/// Differences no larger than rounding noise in absolute terms are not findings: a value
/// that is exactly zero in exact arithmetic (the sum of a batch norm's output, a
/// saturated softmax's gradient) is rounding noise on every backend, and measured
/// against its own scale that noise looks like total disagreement.
fn within_noise(study: &RunStudy, dtype: DType) -> bool {
    let floor = noise_floor(dtype);
    // Item by item: every one agrees in scaled terms or differs by noise alone.
    let tol = study.settings.scaled_tolerance;
    study.compared.iter().all(|c| c.pairs.values().all(|d| !d.non_finite && (d.scaled <= tol || d.max_abs <= floor)))
}

/// `agreed`: the backends that ran agree (up to rounding noise).
fn key_of(program: &Program, study: &RunStudy, agreed: bool) -> FindingKey {
    // A disagreement among the backends that ran outranks another backend's refusal when
    // a backend is to blame for it: the refusal shows in other cases, the wrong value
    // might not.
    // A disagreement no backend can be blamed for (two left, finite differences too
    // coarse to judge) is reported as the refusal, which can.
    let unattributed = study.diagnosis.as_ref().is_some_and(|d| d.odd_one_out.is_none() && d.at_fault.is_empty());
    if study.backend_failed && (agreed || study.diagnosis.is_none() || unattributed) {
        let (kind, failed) = study.backends.iter().find(|(_, r)| !r.ok).map(|(k, r)| (*k, r.error.as_deref().unwrap_or_default())).expect("one failed");
        // The op is found by `attribute`: the first node whose prefix already fails.
        let op = program.nodes.last().map_or("graph", |n| n.op.name()).to_string();
        return FindingKey { op, odd_backend: Some(kind), kind: failure_kind(failed) };
    }
    let d = study.diagnosis.as_ref();
    // Only what an op writes besides its output (running statistics), or only the
    // parameters after training, differ: the op that updates that state, or the
    // optimiser, with no node to blame for its output or gradient.
    let tol = study.settings.scaled_tolerance;
    let failing: Vec<&str> = study.compared.iter().filter(|c| c.pairs.values().any(|p| p.non_finite || !(p.scaled <= tol))).map(|c| c.item.as_str()).collect();
    let odd = d.and_then(|d| d.odd_one_out.or_else(|| d.at_fault.first().copied()));
    if !failing.is_empty() && d.is_some_and(|d| d.culprits.is_empty()) {
        if let Some(state) = failing.iter().map(|i| i.strip_prefix("state:")).collect::<Option<Vec<&str>>>() {
            let op = program.nodes.iter().find(|n| n.inputs.iter().flatten().any(|i| i == state[0])).map_or("graph", |n| n.op.name());
            return FindingKey { op: op.to_string(), odd_backend: odd, kind: "wrong state update".into() };
        }
        if failing.iter().all(|i| i.starts_with("trained:")) {
            return FindingKey { op: "sgd".into(), odd_backend: odd, kind: "wrong parameter update".into() };
        }
    }
    // The first culprit node that is not a documented difference names the finding (a
    // case may hold an accepted kink and a real disagreement further on); among those,
    // the first one where the backend at fault is itself the odd one out (with four or more
    // voices another backend can disagree at an earlier node for a reason of its own).
    let culprit = d.and_then(|d| {
        let culprits: Vec<&super::run::NodeCheck> = d.culprits.iter().filter_map(|c| d.nodes.iter().find(|n| &n.node == c)).collect();
        let real = |n: &&&super::run::NodeCheck| accepted_node(n, accepted()).is_none();
        let at_fault_here = |n: &&&super::run::NodeCheck| odd.is_some_and(|k| node_singles_out(n, k, tol));
        culprits.iter().find(|n| real(n) && at_fault_here(n)).or(culprits.iter().find(real)).or(culprits.first()).copied()
    });
    let op = culprit.map_or_else(|| "graph".to_string(), |n| n.op.clone());
    // The culprit node's own output decides between a wrong forward and a wrong backward;
    // NaN or infinity where another backend has something else (a NaN measure) is a
    // NaN/inf finding.
    let forward_differs = culprit.is_some_and(|n| n.output_scaled.values().any(|v| !(v <= &tol)));
    let non_finite = match culprit {
        Some(n) if forward_differs => n.output_scaled.values().any(|v| v.is_nan()),
        Some(n) => n.grad_scaled.values().any(|v| v.is_nan()),
        None => study.compared.iter().any(|c| c.pairs.values().any(|p| p.non_finite)),
    };
    // With no culprit node, a NaN/inf in anything but a gradient is one in a value.
    let value_non_finite = forward_differs || (culprit.is_none() && study.compared.iter().any(|c| !c.item.starts_with("grad:") && c.pairs.values().any(|p| p.non_finite)));
    let kind = match (non_finite, forward_differs) {
        (true, _) if value_non_finite => "NaN/inf value",
        (true, _) => "NaN/inf gradient",
        (false, true) => "wrong value",
        (false, false) => "wrong gradient",
    };
    FindingKey { op, odd_backend: odd, kind: kind.into() }
}

/// Whether every pair with `kind` disagrees on the node's output or on its gradients
/// (NaN counts as disagreement), so that the node alone points at `kind`.
fn node_singles_out(node: &super::run::NodeCheck, kind: BackendKind, tol: f64) -> bool {
    let singles = |m: &BTreeMap<String, f64>| {
        let mine: Vec<f64> = m.iter().filter(|(pair, _)| pair.split('-').any(|b| b == kind.name())).map(|(_, v)| *v).collect();
        !mine.is_empty() && mine.iter().all(|v| !(*v <= tol))
    };
    singles(&node.output_scaled) || singles(&node.grad_scaled)
}

/// Runs the campaign; `progress(done, total)` after every case.
pub fn run(opts: &FuzzOptions, mut progress: impl FnMut(u64, u64)) -> Result<FuzzReport> {
    let start = Instant::now();
    let (shard, count) = opts.shard;
    let indices: Vec<u64> = (0..opts.cases).filter(|i| i % count == shard - 1).collect();
    let mut findings: BTreeMap<FindingKey, Finding> = BTreeMap::new();
    let (mut agreed, mut disagreed) = (0, 0);
    let mut op_cases: BTreeMap<String, u64> = BTreeMap::new();
    let accepted_list = accepted_differences();
    let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
    let mut shrunk_to_accepted: BTreeMap<FindingKey, String> = BTreeMap::new();
    let mut backend_seconds: BTreeMap<BackendKind, f64> = BTreeMap::new();
    let (mut judge_seconds, mut shrink_seconds) = (0.0, 0.0);
    let mut ran = 0u64;
    for (done, &index) in indices.iter().enumerate() {
        if opts.time_limit.is_some_and(|t| start.elapsed().as_secs_f64() >= t) {
            break;
        }
        ran += 1;
        let case = gen::generate(opts.seed, index, opts.max_nodes, &opts.ops, opts.nonfinite);
        let mut ops: Vec<&str> = case.program.nodes.iter().map(|n| n.op.name()).collect();
        ops.sort();
        ops.dedup();
        for op in ops {
            *op_cases.entry(op.to_string()).or_default() += 1;
        }
        let judged = Instant::now();
        let (verdict, backend_times) = judge_timed(&case.program, &case.inputs, opts)?;
        judge_seconds += judged.elapsed().as_secs_f64();
        for (k, t) in backend_times {
            *backend_seconds.entry(k).or_default() += t;
        }
        let shrinking = Instant::now();
        match verdict {
            None => agreed += 1,
            Some((_, study)) if accepted_as(&study, &accepted_list).is_some() => {
                *accepted.entry(accepted_as(&study, &accepted_list).expect("just matched")).or_default() += 1;
            }
            Some((key, study)) => {
                let key = if key.kind.starts_with("refused") || key.kind.starts_with("failed") { attribute(&case, key, opts)? } else { key };
                match findings.get_mut(&key) {
                    Some(f) => {
                        f.cases += 1;
                        disagreed += 1;
                    }
                    None if shrunk_to_accepted.contains_key(&key) => {
                        *accepted.entry(shrunk_to_accepted[&key].clone()).or_default() += 1;
                    }
                    None => {
                        let shrunk = shrink::shrink(&case, &key, opts)?;
                        let evidence = judge(&shrunk.program, &shrunk.inputs, opts)?.map(|(_, s)| s).unwrap_or(study);
                        // Shrunk to its core, a disagreement may turn out to be a documented
                        // difference (another node disagreed too in the whole program).
                        if let Some(a) = accepted_as(&evidence, &accepted_list) {
                            *accepted.entry(a.clone()).or_default() += 1;
                            shrunk_to_accepted.insert(key, a);
                            progress(done as u64 + 1, indices.len() as u64);
                            continue;
                        }
                        disagreed += 1;
                        findings.insert(
                            key.clone(),
                            Finding {
                                summary: summary(&evidence),
                                key,
                                first_case: index,
                                cases: 1,
                                cases_to_find: done as u64 + 1,
                                regime: case.regime,
                                nodes: shrunk.program.nodes.len(),
                                input_entries: shrunk.inputs.iter().map(|t| t.data.len()).sum(),
                                program: shrunk.program,
                                evidence: Some(evidence),
                            },
                        );
                    }
                }
            }
        }
        shrink_seconds += shrinking.elapsed().as_secs_f64();
        progress(done as u64 + 1, indices.len() as u64);
    }
    let backend_total: f64 = backend_seconds.values().sum();
    Ok(FuzzReport {
        seed: opts.seed,
        cases: ran,
        time_limit: opts.time_limit,
        shard: opts.shard,
        max_nodes: opts.max_nodes,
        nonfinite: opts.nonfinite,
        dtype: opts.dtype,
        backends: opts.backends.clone(),
        ops: opts.ops.clone(),
        agreed,
        disagreed,
        op_cases,
        accepted,
        findings: findings.into_values().collect(),
        seconds: start.elapsed().as_secs_f64(),
        backend_seconds,
        oracle_seconds: (judge_seconds - backend_total).max(0.0),
        shrink_seconds,
    })
}

/// A documented semantic difference (`reference/accepted-differences.json`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Accepted {
    pub op: String,
    /// A substring of the finite-difference obstacle `run` reports at the culprit node.
    pub obstacle: String,
    pub reason: String,
    pub source: String,
}

/// The reviewed list, compiled in so that an installed binary applies the same rules.
pub fn accepted_differences() -> Vec<Accepted> {
    #[derive(serde::Deserialize)]
    struct File {
        accepted: Vec<Accepted>,
    }
    let file: File = serde_json::from_str(include_str!("../../../reference/accepted-differences.json")).expect("reference/accepted-differences.json parses");
    file.accepted
}

/// The accepted difference a disagreement is, if any: its culprit node's op and the
/// obstacle that kept finite differences from judging it match an entry.
fn accepted_as(study: &RunStudy, list: &[Accepted]) -> Option<String> {
    let d = study.diagnosis.as_ref()?;
    let culprits: Vec<_> = d.nodes.iter().filter(|n| !n.agree).collect();
    if culprits.is_empty() {
        return None;
    }
    let mut names = Vec::new();
    for n in culprits {
        names.push(accepted_node(n, list)?);
    }
    names.sort();
    names.dedup();
    Some(names.join("; "))
}

/// The accepted difference one disagreeing node is (its op, and the obstacle that kept
/// finite differences from judging it), if any.
fn accepted_node(n: &super::run::NodeCheck, list: &[Accepted]) -> Option<String> {
    let obstacle = n.finite_differences.as_ref().and_then(|f| f.skipped.clone())?;
    let a = list.iter().find(|a| a.op == n.op && obstacle.contains(&a.obstacle))?;
    Some(format!("{}: {}", a.op, a.obstacle))
}

/// The reviewed list, read once.
fn accepted() -> &'static [Accepted] {
    static LIST: std::sync::OnceLock<Vec<Accepted>> = std::sync::OnceLock::new();
    LIST.get_or_init(accepted_differences)
}

/// A failure named by the first node at which it happens: the shortest prefix of the
/// program (that node's ancestors, summed) on which the same backend fails the same way.
fn attribute(case: &Case, key: FindingKey, opts: &FuzzOptions) -> Result<FindingKey> {
    let whole = shrink::Shrunk { program: case.program.clone(), inputs: case.inputs.clone() };
    let Some(failing) = key.odd_backend else { return Ok(key) };
    for k in 0..case.program.nodes.len() {
        let prefix = shrink::ancestors_of(&whole, k);
        // The same backend failing the same way, whatever else the prefix shows (another
        // backend's disagreement may outrank the failure in the prefix's own key).
        let study = run_program(&RunOptions {
            program: prefix.program.clone(),
            origin: "fuzz".into(),
            inputs: prefix.inputs.to_vec(),
            dtype: opts.dtype,
            backends: opts.backends.clone(),
            backend_options: opts.backend_options.clone(),
            implementation: None,
        })?;
        let same = study.backends.get(&failing).is_some_and(|r| !r.ok && r.unsupported.is_none() && failure_kind(r.error.as_deref().unwrap_or_default()) == key.kind);
        if same {
            return Ok(FindingKey { op: case.program.nodes[k].op.name().to_string(), ..key });
        }
    }
    Ok(key)
}

/// A refusal's or crash's kind: its first line with every digit written N (refusals
/// differ by what is refused, not by the sizes in the message).
fn failure_kind(error: &str) -> String {
    let failed = first_line(error);
    let kind_name = if failed.contains("panicked") { "failed (panic)" } else { "refused" };
    let detail: String = failed.chars().map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect();
    format!("{kind_name}: {detail}")
}

/// A backend's message without the backtrace frameworks append to it.
pub fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_string()
}

/// How a campaign finds a fault switched on in the engine: the first case whose finding
/// blames the engine (within `max_cases`), and the size it shrinks to.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Hunt {
    pub cases_to_find: u64,
    pub op: String,
    pub kind: String,
    pub nodes: usize,
    pub input_entries: usize,
}

/// Runs cases `0..max_cases` of `opts.seed` until one blames the engine. The caller
/// switches the fault on (`engine::faults::inject`) around the call.
pub fn hunt(opts: &FuzzOptions, max_cases: u64) -> Result<Option<Hunt>> {
    for index in 0..max_cases {
        let case = gen::generate(opts.seed, index, opts.max_nodes, &opts.ops, opts.nonfinite);
        if let Some((key, _)) = judge(&case.program, &case.inputs, opts)? {
            if key.odd_backend == Some(BackendKind::ENGINE) {
                let shrunk = shrink::shrink(&case, &key, opts)?;
                return Ok(Some(Hunt {
                    cases_to_find: index + 1,
                    op: key.op,
                    kind: key.kind,
                    nodes: shrunk.program.nodes.len(),
                    input_entries: shrunk.inputs.iter().map(|t| t.data.len()).sum(),
                }));
            }
        }
    }
    Ok(None)
}

/// One line per backend: its loss or its error, and its worst difference.
fn summary(study: &RunStudy) -> Vec<String> {
    let mut out: Vec<String> = study
        .backends
        .iter()
        .map(|(k, r)| match (&r.error, r.loss) {
            (Some(e), _) => format!("{k}: {}", first_line(e)),
            (None, Some(l)) => format!("{k}: loss {l:e}"),
            (None, None) => format!("{k}: ran"),
        })
        .collect();
    out.extend(study.worst_scaled.iter().map(|(p, v)| format!("{p}: worst difference {v:.1e} of scale")));
    if let Some(d) = &study.diagnosis {
        for n in d.nodes.iter().filter(|n| !n.agree) {
            if let Some(fd) = &n.finite_differences {
                let fd_line = match &fd.skipped {
                    Some(why) => format!("finite differences skipped: {why}"),
                    None => format!("finite differences agree with {:?}, contradict {:?}", fd.agree, fd.disagree),
                };
                let when = if n.at_trained_params { " at the trained parameters" } else { "" };
                out.push(format!("node {} ({}) alone{when}: {fd_line}", n.node, n.op));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pairs: &[(&str, f64)]) -> super::super::run::NodeCheck {
        super::super::run::NodeCheck {
            node: "n0".into(),
            op: "sigmoid".into(),
            output_scaled: pairs.iter().map(|(p, v)| (p.to_string(), *v)).collect(),
            grad_scaled: BTreeMap::new(),
            refused: BTreeMap::new(),
            agree: false,
            at_trained_params: false,
            finite_differences: None,
        }
    }

    #[test]
    fn a_node_points_at_a_backend_only_when_every_pair_with_it_fails() {
        // burn apart from everyone (its f32 sigmoid): the node points at burn, not at the
        // engine, although the pair engine-burn fails too.
        let n = node(&[("engine-candle", 0.0), ("engine-burn", 1e-7), ("candle-burn", 1e-7)]);
        assert!(node_singles_out(&n, BackendKind::BURN, 1e-10));
        assert!(!node_singles_out(&n, BackendKind::ENGINE, 1e-10));
        // NaN is disagreement; a backend absent from the node is never pointed at.
        let n = node(&[("engine-burn", f64::NAN), ("candle-burn", f64::NAN), ("engine-candle", 0.0)]);
        assert!(node_singles_out(&n, BackendKind::BURN, 1e-10));
        assert!(!node_singles_out(&n, BackendKind::TORCH, 1e-10));
    }
}
