//! The gate's and the mutation run's reports: `check.md`/`check.json`,
//! `mutants.md`/`mutants.json`.

use serde::Serialize;

use super::fmt::{sci, table};
use super::{to_json, Output};
use crate::error::Result;
use crate::study::gate::GateReport;
use crate::study::mutants::MutantsReport;

#[derive(Serialize)]
struct CheckJson<'a> {
    baseline: &'a str,
    #[serde(flatten)]
    report: &'a GateReport,
}

pub fn check_outputs(report: &GateReport, baseline_path: &str) -> Result<Vec<Output>> {
    Ok(vec![
        Output { file_name: "check.json".into(), contents: to_json(&CheckJson { baseline: baseline_path, report })? },
        Output { file_name: "check.md".into(), contents: check_markdown(report, baseline_path) },
    ])
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
    if !report.passed {
        md += &regression_table(report);
    }
    md
}

pub fn mutants_outputs(report: &MutantsReport) -> Result<Vec<Output>> {
    Ok(vec![
        Output { file_name: "mutants.json".into(), contents: to_json(report)? },
        Output { file_name: "mutants.md".into(), contents: mutants_markdown(report) },
    ])
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
            ]
        })
        .collect();
    table(&["fault", "caught", "first failing check", "localised to", "expected", "right place", "step", "failing metrics"], &rows)
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
