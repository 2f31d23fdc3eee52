//! Check a backend of your own against the references in one call: every op of the
//! program format it declares (random cases against finite differences and every
//! reference), a fuzz campaign of generated programs over its ops, and the nine seed
//! models where it has all of their ops (gradients at one step on MNIST, when the MNIST
//! files are there). What it does not declare is skipped with the reason, never counted
//! as a failure. `examples/own_engine.rs` is a worked example;
//! [`check_backend_tests!`](crate::check_backend_tests) turns it into tests.

use serde::Serialize;

use super::fuzz::{self, FuzzOptions, FuzzReport};
use super::grads::{self, GradsOptions};
use super::ops::{self, OpsOptions, OpsReport};
use crate::backends::{BackendKind, BackendOptions};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::mnist::ModelSpec;
use crate::models::Op;

/// How much of each check to run.
///
/// ```
/// use backprop_parity::backends::BackendKind;
/// use backprop_parity::study::own::OwnCheckOptions;
///
/// // Quick: 5 cases per op, no fuzzing, no MNIST models, judged against candle only.
/// let quick = OwnCheckOptions { op_cases: 5, fuzz_cases: 0, models: false, references: Some(vec![BackendKind::CANDLE]), ..Default::default() };
/// assert_eq!(quick.dtype, backprop_parity::DType::F64);
/// ```
#[derive(Clone, Debug)]
pub struct OwnCheckOptions {
    /// Random cases per op (`parity-report ops --cases`).
    pub op_cases: usize,
    /// Generated programs (`parity-report fuzz --cases`); 0 skips the campaign.
    pub fuzz_cases: u64,
    /// Run the seed models whose ops it has (needs the MNIST files).
    pub models: bool,
    pub seed: u64,
    pub dtype: DType,
    /// The backends it is compared with (default: the other backends of default runs,
    /// `BackendKind::defaults`).
    pub references: Option<Vec<BackendKind>>,
    pub backend_options: BackendOptions,
}

impl Default for OwnCheckOptions {
    fn default() -> Self {
        OwnCheckOptions { op_cases: 20, fuzz_cases: 200, models: true, seed: 0, dtype: DType::F64, references: None, backend_options: BackendOptions::default() }
    }
}

/// One seed model: compared at one step, or skipped and why.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCheck {
    pub model: String,
    /// None when it was compared.
    pub skipped: Option<String>,
    pub agree: Option<bool>,
}

/// What one call found.
///
/// ```
/// use backprop_parity::backends::BackendKind;
/// use backprop_parity::study::own::{check_backend, OwnCheckOptions};
///
/// let opts = OwnCheckOptions { op_cases: 2, fuzz_cases: 0, models: false, references: Some(vec![BackendKind::CANDLE]), ..Default::default() };
/// let check = check_backend(BackendKind::ENGINE, &opts).unwrap();
/// assert!(check.supported_ops.contains(&"conv2d"));
/// assert!(check.wrong_ops().is_empty(), "{}", check.summary());
/// assert!(check.summary().ends_with("verdict: agrees with the references on everything it supports"));
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct OwnCheck {
    pub backend: BackendKind,
    pub references: Vec<BackendKind>,
    /// Ops it declares and that were checked, and the others with the reason.
    pub supported_ops: Vec<&'static str>,
    pub unsupported_ops: Vec<(&'static str, String)>,
    /// Per op of `supported_ops`: its verdict (`agrees`, `**finding**: ...`).
    pub op_verdicts: Vec<(String, String)>,
    pub ops: OpsReport,
    pub fuzz: Option<FuzzReport>,
    pub models: Vec<ModelCheck>,
}

impl OwnCheck {
    /// The ops where it is wrong: a finding, a missing gradient, or disagreement with
    /// finite differences.
    pub fn wrong_ops(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ops
            .rows
            .iter()
            .filter(|r| r.backend == self.backend && r.unsupported.is_none())
            .filter(|r| r.findings > 0 || r.odd_one_out > 0 || r.missing_or_non_finite > 0 || r.fd_agree < r.fd_checked)
            .map(|r| r.op.clone())
            .collect();
        if let Some(f) = &self.fuzz {
            v.extend(
                f.findings
                    .iter()
                    .filter(|f| f.key.odd_backend == Some(self.backend) && !f.key.kind.starts_with("refused"))
                    .map(|f| format!("{} (fuzz: {})", f.key.op, f.key.kind)),
            );
        }
        v.dedup();
        v
    }

    /// Ops it declares but refused on some cases (an attribute or shape it lacks): a
    /// limit, reported, not a wrong answer.
    pub fn refused_ops(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ops.rows.iter().filter(|r| r.backend == self.backend && r.refused > 0).map(|r| r.op.clone()).collect();
        if let Some(f) = &self.fuzz {
            v.extend(f.findings.iter().filter(|f| f.key.odd_backend == Some(self.backend) && f.key.kind.starts_with("refused")).map(|f| f.key.op.clone()));
        }
        v.sort();
        v.dedup();
        v
    }

    /// Every check that ran agrees.
    pub fn agrees(&self) -> bool {
        self.wrong_ops().is_empty() && self.models.iter().all(|m| m.agree != Some(false))
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let refs: Vec<&str> = self.references.iter().map(|k| k.name()).collect();
        let mut s = format!("{} against {} (f64 unless stated)\n", self.backend, refs.join(", "));
        s += &format!("supports {} of {} ops: {}\n", self.supported_ops.len(), Op::NAMES.len(), self.supported_ops.join(", "));
        for (op, verdict) in &self.op_verdicts {
            s += &format!("  {op}: {}\n", verdict.replace("**", ""));
        }
        if let Some(f) = &self.fuzz {
            let mine: Vec<String> =
                f.findings.iter().filter(|x| x.key.odd_backend == Some(self.backend) && !x.key.kind.starts_with("refused")).map(|x| format!("{} {}", x.key.op, x.key.kind)).collect();
            let refused = f.findings.iter().filter(|x| x.key.odd_backend == Some(self.backend) && x.key.kind.starts_with("refused")).count();
            s += &format!(
                "fuzz: {} generated programs over its ops, {} agreed; wrong answers from {}: {}; distinct refusals: {refused}\n",
                f.cases,
                f.agreed,
                self.backend,
                if mine.is_empty() { "none".into() } else { mine.join("; ") }
            );
        }
        for m in &self.models {
            match (&m.skipped, m.agree) {
                (Some(why), _) => s += &format!("  model {}: skipped ({why})\n", m.model),
                (None, Some(a)) => s += &format!("  model {}: {}\n", m.model, if a { "agrees" } else { "DISAGREES" }),
                _ => {}
            }
        }
        let unsupported: Vec<&str> = self.unsupported_ops.iter().map(|(o, _)| *o).collect();
        s += &format!("skipped ops (not supported): {}\n", if unsupported.is_empty() { "none".into() } else { unsupported.join(", ") });
        let refused = self.refused_ops();
        if !refused.is_empty() {
            s += &format!("refuses some cases of: {} (see the ops rows)\n", refused.join(", "));
        }
        s += &format!("verdict: {}", if self.agrees() { "agrees with the references on everything it supports".to_string() } else { format!("wrong on {}", self.wrong_ops().join(", ")) });
        s
    }
}

/// Compares `kind` (registered with `backends::register`) with the references.
///
/// ```
/// use backprop_parity::backends::BackendKind;
/// use backprop_parity::study::own::{check_backend, OwnCheckOptions};
///
/// // Your registered engine's kind; here the built-in engine against candle, briefly.
/// let opts = OwnCheckOptions { op_cases: 2, fuzz_cases: 20, references: Some(vec![BackendKind::CANDLE]), models: false, ..Default::default() };
/// let check = check_backend(BackendKind::ENGINE, &opts).unwrap();
/// println!("{}", check.summary());
/// ```
pub fn check_backend(kind: BackendKind, opts: &OwnCheckOptions) -> Result<OwnCheck> {
    let backend = kind.create_with(&opts.backend_options)?;
    let caps = backend.capabilities();
    let references: Vec<BackendKind> = match &opts.references {
        Some(r) => r.clone(),
        None => BackendKind::defaults().into_iter().filter(|&k| k != kind).collect(),
    };
    if references.is_empty() {
        return Err(Error::Invalid(format!("checking {kind} needs at least one reference backend")));
    }
    let mut backends = references.clone();
    backends.push(kind);
    let (mut supported_ops, mut unsupported_ops) = (Vec::new(), Vec::new());
    for &op in Op::NAMES.iter() {
        match caps.lacks(op, opts.dtype) {
            None => supported_ops.push(op),
            Some(why) => unsupported_ops.push((op, why)),
        }
    }
    let ops_report = ops::run(
        &OpsOptions {
            ops: supported_ops.clone(),
            cases: opts.op_cases,
            seed: opts.seed,
            dtype: opts.dtype,
            backends: backends.clone(),
            backend_options: opts.backend_options.clone(),
        },
        |_, _, _| {},
    )?;
    let op_verdicts = ops_report
        .rows
        .iter()
        .filter(|r| r.backend == kind && r.implementation == "default")
        .map(|r| (r.op.clone(), crate::report::ops::verdict(r)))
        .collect();
    let fuzz_ops: Vec<&'static str> = fuzz::gen::OPS.iter().copied().filter(|op| supported_ops.contains(op)).collect();
    let fuzz = if opts.fuzz_cases > 0 && !fuzz_ops.is_empty() {
        Some(fuzz::run(
            &FuzzOptions {
                cases: opts.fuzz_cases,
                seed: opts.seed,
                max_nodes: 4,
                ops: fuzz_ops,
                dtype: opts.dtype,
                backends: backends.clone(),
                backend_options: opts.backend_options.clone(),
                shard: (1, 1),
                time_limit: None,
                nonfinite: false,
            },
            |_, _| {},
        )?)
    } else {
        None
    };
    let models = if opts.models { check_models(kind, &backends, &caps, opts)? } else { Vec::new() };
    Ok(OwnCheck { backend: kind, references, supported_ops, unsupported_ops, op_verdicts, ops: ops_report, fuzz, models })
}

fn check_models(kind: BackendKind, backends: &[BackendKind], caps: &crate::backends::Capabilities, opts: &OwnCheckOptions) -> Result<Vec<ModelCheck>> {
    let mut out = Vec::new();
    let mut runnable = Vec::new();
    for spec in ModelSpec::all_seed() {
        match caps.unsupported(&spec.program(2), opts.dtype) {
            Some(why) => out.push(ModelCheck { model: spec.name.clone(), skipped: Some(format!("{kind} {why}")), agree: None }),
            None => runnable.push(spec),
        }
    }
    if runnable.is_empty() {
        return Ok(out);
    }
    let kind_of_data = crate::data::DatasetKind::Mnist;
    let data = match crate::data::load(kind_of_data, &crate::data::default_dir(kind_of_data)) {
        Ok(d) => d,
        Err(e) => {
            out.extend(runnable.iter().map(|s| ModelCheck { model: s.name.clone(), skipped: Some(format!("the MNIST files: {e}")), agree: None }));
            return Ok(out);
        }
    };
    let study = grads::run(
        &data,
        &GradsOptions {
            models: runnable,
            dtype: opts.dtype,
            backends: backends.to_vec(),
            backend_options: opts.backend_options.clone(),
            batch: 25,
            seed: opts.seed,
            params: None,
            params_origin: None,
            save_grads: None,
        },
        |_| {},
    )?;
    for (name, m) in &study.models {
        let agree = m.diagnosis.as_ref().is_none_or(|d| d.odd_one_out != Some(kind) && !d.failing_pairs.iter().any(|p| p.split('-').any(|b| b == kind.name())));
        out.push(ModelCheck { model: name.clone(), skipped: None, agree: Some(agree) });
    }
    Ok(out)
}

/// Tests for your own backend: `check_backend_tests!(register_mine);` where
/// `register_mine()` returns its `BackendKind` (registering it once), and each test
/// asserts one part of `check_backend`: every declared op agrees with the references
/// and with finite differences, and generated programs over its ops find nothing
/// about it.
///
/// ```
/// use backprop_parity::backends::BackendKind;
///
/// // In your crate's tests/ (here the built-in engine stands in for yours).
/// fn register_mine() -> BackendKind {
///     BackendKind::ENGINE
/// }
/// backprop_parity::check_backend_tests!(register_mine);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! check_backend_tests {
    ($register:expr) => {
        #[test]
        fn own_backend_ops_agree_with_the_references() {
            let kind = $register();
            let opts = $crate::study::own::OwnCheckOptions { fuzz_cases: 0, models: false, ..Default::default() };
            let check = $crate::study::own::check_backend(kind, &opts).expect("the check runs");
            assert!(check.wrong_ops().is_empty(), "{}", check.summary());
        }

        #[test]
        fn own_backend_survives_a_fuzz_campaign() {
            let kind = $register();
            let opts = $crate::study::own::OwnCheckOptions { op_cases: 1, models: false, ..Default::default() };
            let check = $crate::study::own::check_backend(kind, &opts).expect("the check runs");
            assert!(check.wrong_ops().is_empty(), "{}", check.summary());
        }
    };
}
