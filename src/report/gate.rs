//! The gate's and the mutation run's reports: `check.md`/`check.json`,
//! `mutants.md`/`mutants.json`.

use serde::Serialize;

use super::fmt::{sci, table};
use super::{Provenance, ReportSet};
use crate::error::Result;
use crate::study::gate::GateReport;
use crate::study::mutants::MutantsReport;

/// `check.json`'s fields: the baseline compared with, then the gate's result.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CheckJson {
    pub baseline: String,
    #[serde(flatten)]
    pub report: GateReport,
}

pub fn check_outputs(report: &GateReport, baseline_path: &str, provenance: &Provenance) -> Result<ReportSet> {
    super::set("check", provenance, &CheckJson { baseline: baseline_path.into(), report: report.clone() }, check_markdown(report, baseline_path), vec![])
}

/// The table of what regressed, where and by how much.
pub fn regression_table(report: &GateReport) -> String {
    let rows: Vec<Vec<String>> = report
        .regressions
        .iter()
        .map(|r| {
            vec![
                r.location.clone(),
                r.reason.to_string(),
                r.baseline.map_or("-".into(), sci),
                r.current.map_or("-".into(), sci),
                r.allowed.map_or("-".into(), sci),
                match (r.current, r.baseline) {
                    (Some(c), Some(b)) if b > 0.0 && c.is_finite() => format!("{:.1}x", c / b),
                    _ => "-".into(),
                },
                r.step.map_or("-".into(), |s| s.to_string()),
            ]
        })
        .collect();
    table(&["where (check case dtype pair item)", "why", "baseline", "now", "allowed", "worse by", "first step"], &rows)
}

fn check_markdown(report: &GateReport, baseline_path: &str) -> String {
    let mut md = format!(
        "# Gradient-agreement gate\n\nBaseline `{baseline_path}`; {} metrics compared, {} better than the baseline by more than the slack, \
         {} not in the baseline.\n\nVerdict: **{}**.\n\n",
        report.compared,
        report.improved,
        report.new_metrics,
        if report.passed { "pass" } else { "FAIL" }
    );
    if !report.regressions.is_empty() {
        md += &regression_table(report);
    }
    if let Some(f) = &report.fuzz {
        md += &format!(
            "\n## Fixed-seed fuzz campaign\n\n{} generated programs (seed {}) in {:.1} s: {} agreed, {} accepted differences, {} known reference bug(s) \
             (reference/known-reference-bugs.json), **{} new finding(s)** (each fails the gate).\n\n",
            f.cases,
            f.seed,
            f.seconds,
            f.agreed,
            f.accepted,
            f.known.len(),
            f.new.len()
        );
        let rows: Vec<Vec<String>> = f
            .new
            .iter()
            .map(|g| (g, "**new**".to_string()))
            .chain(f.known.iter().map(|g| (g, format!("known: {}", g.source.clone().unwrap_or_default()))))
            .map(|(g, status)| vec![g.op.clone(), g.backend.map_or("-".into(), |b| b.to_string()), g.kind.clone(), g.cases.to_string(), status])
            .collect();
        if !rows.is_empty() {
            md += &table(&["op", "backend at fault", "kind", "cases", "status"], &rows);
        }
    }
    md
}

pub fn mutants_outputs(report: &MutantsReport, provenance: &Provenance) -> Result<ReportSet> {
    super::set("mutants", provenance, report, mutants_markdown(report), vec![])
}

pub fn mutants_table(report: &MutantsReport) -> String {
    let rows: Vec<Vec<String>> = report
        .faults
        .iter()
        .map(|f| {
            vec![
                format!("`{}`", f.name),
                if f.caught { "yes".into() } else { "**no**".into() },
                f.check.clone().unwrap_or_default(),
                f.localised_to.clone().unwrap_or_else(|| "-".into()),
                f.expected.to_string(),
                if f.localised { "yes".into() } else { "no".into() },
                f.step.map_or("-".into(), |s| s.to_string()),
                f.failing.to_string(),
                f.fuzz.as_ref().map_or(format!("not in {}", crate::study::mutants::FUZZ_CASES), |h| {
                    format!("{} cases: {} in {}, shrunk to {} nodes, {} entries", h.cases_to_find, h.kind, h.op, h.nodes, h.input_entries)
                }),
            ]
        })
        .collect();
    table(&["fault", "caught", "first failing check", "localised to", "expected", "right place", "step", "failing metrics", "fuzzer alone"], &rows)
}

fn mutants_markdown(report: &MutantsReport) -> String {
    format!(
        "# Mutation testing of backprop\n\nEach fault is switched on in the engine alone and the quick suite rerun against the baseline \
         (backends: {}). Caught: **{} of {}**; localised to the right op or layer: **{} of {}**.\n\n{}",
        report.backends.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        report.caught,
        report.faults.len(),
        report.localised,
        report.faults.len(),
        mutants_table(report)
    )
}
