//! The report of `parity-report run`: `run.md` and `run.json`.

use super::fmt::{sci, table};
use super::{Provenance, ReportSet};
use crate::error::Result;
use crate::study::run::RunStudy;

pub fn outputs(study: &RunStudy, provenance: &Provenance) -> Result<ReportSet> {
    super::set("run", provenance, study, markdown(study), vec![])
}

fn verdict(study: &RunStudy) -> String {
    let mut v = if study.agree { "every backend that ran agrees on every value".to_string() } else { "the backends disagree".to_string() };
    if let Some(d) = &study.diagnosis {
        if let Some(odd) = d.odd_one_out {
            v.push_str(&format!("; **{odd}** is the odd one out"));
        }
        if let Some([a, b]) = &d.no_majority {
            v.push_str(&format!("; **no majority**: {} against {}", super::fmt::names(a), super::fmt::names(b)));
        }
        if !d.culprits.is_empty() {
            let trained = d.nodes.iter().any(|n| !n.agree && n.at_trained_params);
            v.push_str(&format!("; run alone{}, node(s) {} ({}) disagree", if trained { " at the trained parameters" } else { "" }, d.culprits.join(", "), d.culprit_ops.join(", ")));
        }
        if !d.at_fault.is_empty() && d.odd_one_out.is_none() {
            let names: Vec<String> = d.at_fault.iter().map(|k| k.to_string()).collect();
            v.push_str(&format!("; finite differences contradict **{}** there", names.join(", ")));
        }
    }
    let failed: Vec<String> = study.backends.iter().filter(|(_, r)| !r.ok && r.unsupported.is_none()).map(|(k, _)| k.to_string()).collect();
    if !failed.is_empty() {
        v.push_str(&format!("; {} could not run it (below)", failed.join(", ")));
    }
    let skipped: Vec<&str> = study.backends.values().filter_map(|r| r.unsupported.as_deref()).collect();
    if !skipped.is_empty() {
        v.push_str(&format!("; skipped, not supported: {}", skipped.join("; ")));
    }
    v
}

/// One line for the terminal.
pub fn summary(study: &RunStudy) -> String {
    verdict(study).replace("**", "")
}

fn markdown(study: &RunStudy) -> String {
    let s = &study.settings;
    let mut md = format!(
        "# Program `{}`\n\n\
         Every backend runs the program from the same inputs in {} and differentiates it with its own autograd. \
         A value agrees when `max|a - b| <= {:.0e} · max|b|` (b: the more trusted backend of the pair; a gradient \
         tensor whose entries are all below 1/100 of the largest gradient is measured against that floor). \
         Backend settings: `{}`.\n\nVerdict: {}.\n\n",
        s.program,
        s.dtype,
        s.scaled_tolerance,
        s.backend_options.describe(),
        verdict(study)
    );
    let rows: Vec<Vec<String>> = study
        .backends
        .iter()
        .map(|(k, r)| vec![k.to_string(), if r.ok { "ran".into() } else { format!("failed: {}", r.error.clone().unwrap_or_default()) }, r.loss.map_or("-".into(), sci)])
        .collect();
    md.push_str(&table(&["backend", "status", "loss"], &rows));
    let pairs: Vec<String> = study.worst_scaled.keys().cloned().collect();
    if !pairs.is_empty() {
        md.push_str("\n## Every value, per backend pair (max|a-b| / max|b|)\n\n");
        let mut header = vec!["value"];
        header.extend(pairs.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = study
            .compared
            .iter()
            .map(|c| {
                let mut row = vec![format!("`{}`", c.item)];
                row.extend(pairs.iter().map(|p| c.pairs.get(p).map_or("-".into(), |d| if d.non_finite { "NaN/inf".into() } else { sci(d.scaled) })));
                row
            })
            .collect();
        md.push_str(&table(&header, &rows));
    }
    if let Some(d) = &study.diagnosis {
        md.push_str(&format!(
            "\n## Diagnosis\n\nFailing pairs: {}. Odd one out: {}. Each node run alone on {}'s values of its inputs, its output \
             weighted by a fixed pseudo-random cotangent (worst scaled difference of the output / of the input gradients):\n\n",
            d.failing_pairs.join(", "),
            d.odd_one_out.map_or("none (no single backend explains the failures)".into(), |k| k.to_string()),
            d.values_from
        ));
        let node_pairs: Vec<String> = d.nodes.first().map(|n| n.grad_scaled.keys().cloned().collect()).unwrap_or_default();
        let mut header = vec!["node", "op"];
        header.extend(node_pairs.iter().map(String::as_str));
        header.push("verdict");
        let rows: Vec<Vec<String>> = d
            .nodes
            .iter()
            .map(|n| {
                let mut row = vec![format!("`{}`{}", n.node, trained_label(n)), n.op.clone()];
                row.extend(node_pairs.iter().map(|p| format!("{} / {}", n.output_scaled.get(p).map_or("-".into(), |v| sci(*v)), n.grad_scaled.get(p).map_or("-".into(), |v| sci(*v)))));
                let refusals: Vec<String> = n.refused.iter().map(|(k, m)| format!("{k} refused: {m}")).collect();
                row.push(if n.agree { "agree".into() } else if refusals.is_empty() { "**disagree**".into() } else { refusals.join("; ") });
                row
            })
            .collect();
        md.push_str(&table(&header, &rows));
        for n in d.nodes.iter().filter(|n| n.finite_differences.is_some()) {
            let fd = n.finite_differences.as_ref().expect("filtered");
            match &fd.skipped {
                Some(why) => md.push_str(&format!("\nNode `{}`{}: no finite differences ({why}).\n", n.node, trained_label(n))),
                None => {
                    let each: Vec<String> = fd.scaled.iter().map(|(k, v)| format!("{k} {}", sci(*v))).collect();
                    md.push_str(&format!(
                        "\nNode `{}`{} against central finite differences in f64 (max|analytic - numeric| / max|numeric|, tolerance {:.0e}): {}.\n",
                        n.node,
                        trained_label(n),
                        fd.tolerance,
                        each.join(", ")
                    ));
                }
            }
        }
    }
    md
}

/// How a node check at the trained parameters is told apart from the one at the start.
fn trained_label(n: &crate::study::run::NodeCheck) -> &'static str {
    if n.at_trained_params {
        " (at the trained parameters)"
    } else {
        ""
    }
}
