//! The gradient-agreement gate: the quick suite's metrics against a committed baseline.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::suite::Metric;
use super::TOOL_VERSION;
use crate::backends::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// How much worse than the baseline a metric may get before the gate fails: by a factor,
/// or up to a floor below which differences are rounding noise of the dtype.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Slack {
    pub factor: f64,
    pub floor_f32: f64,
    pub floor_f64: f64,
}

impl Default for Slack {
    fn default() -> Self {
        Slack { factor: 10.0, floor_f32: 1e-5, floor_f64: 1e-12 }
    }
}

impl Slack {
    pub fn allowed(&self, baseline: f64, dtype: DType) -> f64 {
        let floor = match dtype {
            DType::F32 => self.floor_f32,
            DType::F64 => self.floor_f64,
        };
        (baseline * self.factor).max(floor)
    }
}

/// The version of what the quick suite measures. A baseline made by another version
/// compares different things and is refused; raise it whenever the suite's checks,
/// cases or metric definitions change.
pub const SUITE_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Baseline {
    /// `SUITE_VERSION` of the suite that made it (0: older than versioned baselines).
    #[serde(default)]
    pub suite_version: u32,
    pub tool_version: String,
    /// How the metrics are measured, in words.
    pub rule: String,
    pub slack: Slack,
    pub backends: Vec<BackendKind>,
    pub metrics: Vec<Metric>,
}

pub const RULE: &str = "Per backend pair (a, b): loss traces as max |a-b|/|b| over steps; gradients and parameters as \
     max |a-b| / max |b| over the compared tensors (a model's step-0 gradients with a floor of 1/100 of its largest \
     gradient entry). The gate fails where a metric exceeds max(baseline × factor, floor of its dtype), is NaN or \
     infinite, or is missing, where the suite computes a metric the baseline lacks, or where a baseline \
     backend did not run.";

impl Baseline {
    pub fn new(backends: Vec<BackendKind>, metrics: Vec<Metric>) -> Result<Self> {
        if let Some(m) = metrics.iter().find(|m| !m.value.is_finite()) {
            return Err(Error::Invalid(format!("refusing to write a baseline with a non-finite metric: {} = {}", m.location(), m.value)));
        }
        Ok(Baseline { suite_version: SUITE_VERSION, tool_version: TOOL_VERSION.into(), rule: RULE.into(), slack: Slack::default(), backends, metrics })
    }

    /// Reads a baseline for the gate; see `validate` for what is refused.
    pub fn read(path: &Path) -> Result<Self> {
        let b = Self::read_unchecked(path)?;
        b.validate().map_err(|m| Error::file(path, m))?;
        Ok(b)
    }

    /// Reads a baseline without judging it (the old one that `--update-baseline` replaces).
    pub fn read_unchecked(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a baseline file ({e}); restore it from git (`git checkout -- {}`)", path.display())))
    }

    /// Everything that would let a regression through unseen: an empty baseline, one
    /// made by another suite version, a slack outside its sane range, a value that no
    /// run can produce (negative, NaN, infinite), a metric listed twice.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let restore = "restore the committed baseline from git, or, after reviewing why, make a new one with `parity-report check --update-baseline`";
        if self.suite_version != SUITE_VERSION {
            return Err(format!("made by suite version {} but this build's suite is version {SUITE_VERSION}: it measures other things; {restore}", self.suite_version));
        }
        if self.metrics.is_empty() || self.backends.is_empty() {
            return Err(format!("holds no metrics or no backends, so it would pass anything; {restore}"));
        }
        let s = self.slack;
        if !(s.factor.is_finite() && (1.0..=1000.0).contains(&s.factor)) {
            return Err(format!("slack factor {} is outside [1, 1000] (below 1 invents regressions, above 1000 hides them); {restore}", s.factor));
        }
        for (name, floor) in [("floor_f32", s.floor_f32), ("floor_f64", s.floor_f64)] {
            if !(floor.is_finite() && floor > 0.0 && floor <= 1e-2) {
                return Err(format!("slack {name} {floor} is outside (0, 1e-2]; {restore}"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.metrics {
            if !(m.value.is_finite() && m.value >= 0.0) {
                return Err(format!("metric {} has value {}: a difference is finite and at least 0; {restore}", m.location(), m.value));
            }
            if !seen.insert(m.key()) {
                return Err(format!("metric {} is listed twice; {restore}", m.location()));
            }
        }
        Ok(())
    }
}

/// One reason the gate fails.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Regression {
    pub location: String,
    pub reason: &'static str,
    pub baseline: Option<f64>,
    pub current: Option<f64>,
    pub allowed: Option<f64>,
    pub step: Option<usize>,
    pub site: Option<String>,
    #[serde(skip)]
    pub check: String,
}

/// An examined finding about a reference framework (`reference/known-reference-bugs.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct KnownBug {
    pub op: String,
    pub backend: String,
    /// A prefix of the finding's kind.
    pub kind: String,
    pub reason: String,
    pub source: String,
}

/// The reviewed list, compiled in so that an installed binary applies the same rules.
pub fn known_reference_bugs() -> Vec<KnownBug> {
    #[derive(Deserialize)]
    struct File {
        known: Vec<KnownBug>,
    }
    let file: File = serde_json::from_str(include_str!("../../reference/known-reference-bugs.json")).expect("reference/known-reference-bugs.json parses");
    file.known
}

/// The gate's fixed-seed fuzz campaign: its size, and every finding judged against the
/// reviewed lists.
pub const GATE_FUZZ_SEED: u64 = 0;
pub const GATE_FUZZ_CASES: u64 = 5000;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GateFuzz {
    pub seed: u64,
    pub cases: u64,
    pub agreed: u64,
    /// Cases that are documented semantic differences.
    pub accepted: u64,
    pub seconds: f64,
    /// Findings that match a known reference bug, with its source.
    pub known: Vec<GateFinding>,
    /// Findings in neither list, or that blame the engine: each one fails the gate.
    pub new: Vec<GateFinding>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GateFinding {
    pub op: String,
    pub backend: Option<BackendKind>,
    pub kind: String,
    pub cases: u64,
    /// The known bug's source, for a known one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Sorts a campaign's findings into known reference bugs and new ones.
pub fn judge_fuzz(report: &super::fuzz::FuzzReport, known: &[KnownBug]) -> GateFuzz {
    let (mut known_found, mut new) = (Vec::new(), Vec::new());
    for f in &report.findings {
        let backend = f.key.odd_backend;
        let matched = known.iter().find(|k| {
            k.op == f.key.op && backend.is_some_and(|b| b != BackendKind::ENGINE && b.name() == k.backend) && f.key.kind.starts_with(&k.kind)
        });
        let g = GateFinding { op: f.key.op.clone(), backend, kind: f.key.kind.clone(), cases: f.cases, source: matched.map(|k| k.source.clone()) };
        if matched.is_some() {
            known_found.push(g);
        } else {
            new.push(g);
        }
    }
    GateFuzz {
        seed: report.seed,
        cases: report.cases,
        agreed: report.agreed,
        accepted: report.accepted.values().sum(),
        seconds: report.seconds,
        known: known_found,
        new,
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GateReport {
    pub passed: bool,
    pub compared: usize,
    pub regressions: Vec<Regression>,
    /// Metrics better than baseline by more than the slack factor (worth an update).
    pub improved: usize,
    /// Metrics the baseline does not know (each one between baseline backends is also a
    /// regression).
    pub new_metrics: usize,
    /// The fixed-seed fuzz campaign, when it ran: a new finding fails the gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuzz: Option<GateFuzz>,
}

/// Compares `current` (from a run on `ran`) with the baseline.
pub fn evaluate(baseline: &Baseline, current: &[Metric], ran: &[BackendKind]) -> GateReport {
    let mut regressions = Vec::new();
    for k in &baseline.backends {
        if !ran.contains(k) {
            regressions.push(Regression {
                location: format!("backend {k}"),
                reason: "backend did not run",
                baseline: None,
                current: None,
                allowed: None,
                step: None,
                site: None,
                check: "backend".into(),
            });
        }
    }
    let now: BTreeMap<_, &Metric> = current.iter().map(|m| (m.key(), m)).collect();
    let (mut compared, mut improved) = (0, 0);
    for b in &baseline.metrics {
        let involved = b.pair.split('-').all(|k| ran.iter().any(|r| r.name() == k));
        let Some(c) = now.get(&b.key()) else {
            if involved {
                regressions.push(Regression { location: b.location(), reason: "missing", baseline: Some(b.value), current: None, allowed: None, step: None, site: None, check: b.check.clone() });
            }
            continue;
        };
        compared += 1;
        let allowed = baseline.slack.allowed(b.value, b.dtype);
        let reason = if !c.value.is_finite() {
            Some("not finite")
        } else if c.value > allowed {
            Some("regressed")
        } else {
            None
        };
        if let Some(reason) = reason {
            regressions.push(Regression {
                location: c.location(),
                reason,
                baseline: Some(b.value),
                current: Some(c.value),
                allowed: Some(allowed),
                step: c.step,
                site: c.site.clone(),
                check: c.check.clone(),
            });
        } else if c.value * baseline.slack.factor < b.value {
            improved += 1;
        }
    }
    // A metric the suite computes between baseline backends that the baseline lacks is
    // a hole a regression could pass through (a partly deleted baseline): it fails.
    let known: std::collections::BTreeSet<_> = baseline.metrics.iter().map(Metric::key).collect();
    let in_baseline_pairs = |m: &Metric| m.pair.split('-').all(|k| baseline.backends.iter().any(|b| b.name() == k));
    let mut new_metrics = 0;
    for m in current.iter().filter(|m| !known.contains(&m.key())) {
        new_metrics += 1;
        if in_baseline_pairs(m) {
            regressions.push(Regression {
                location: m.location(),
                reason: "not in the baseline",
                baseline: None,
                current: Some(m.value),
                allowed: None,
                step: m.step,
                site: m.site.clone(),
                check: m.check.clone(),
            });
        }
    }
    GateReport { passed: regressions.is_empty(), compared, regressions, improved, new_metrics, fuzz: None }
}

impl GateReport {
    /// Adds the fuzz campaign's verdict: every new finding fails the gate.
    pub fn with_fuzz(mut self, fuzz: GateFuzz) -> Self {
        self.passed &= fuzz.new.is_empty();
        self.fuzz = Some(fuzz);
        self
    }
}

/// What `--update-baseline` changes, in words: counts and the largest moves.
pub fn describe_update(old: Option<&Baseline>, new: &Baseline) -> Vec<String> {
    let Some(old) = old else { return vec![format!("new baseline with {} metrics", new.metrics.len())] };
    let before: BTreeMap<_, f64> = old.metrics.iter().map(|m| (m.key(), m.value)).collect();
    let after: BTreeMap<_, f64> = new.metrics.iter().map(|m| (m.key(), m.value)).collect();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let mut moves: Vec<(f64, String)> = new
        .metrics
        .iter()
        .filter_map(|m| {
            let b = *before.get(&m.key())?;
            (b != m.value).then(|| (((m.value.max(1e-300)) / b.max(1e-300)).log10().abs(), format!("{}: {b:.3e} -> {:.3e}", m.location(), m.value)))
        })
        .collect();
    let changed = moves.len();
    moves.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut lines = vec![format!("{} metrics: {added} added, {removed} removed, {changed} changed", new.metrics.len())];
    lines.extend(moves.into_iter().take(10).map(|(_, s)| format!("  {s}")));
    lines
}
