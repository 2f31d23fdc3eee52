//! The op-set report: `ops.md`, `ops.json`, and `cases/*.json`, the first disagreeing
//! case of each implementation as a program `parity-report run` replays.

use super::fmt::{sci, table};
use super::{Output, Provenance, ReportSet};
use crate::error::Result;
use crate::study::ops::{ImplRow, OpsReport};

pub fn outputs(report: &OpsReport, provenance: &Provenance) -> Result<ReportSet> {
    let files = report.programs.iter().map(|(name, json)| Output { file_name: name.clone(), contents: json.clone() }).collect();
    super::set("ops", provenance, report, markdown(report), files)
}

/// `a of b`, or `-` when nothing was compared.
fn of(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{a}/{b}")
    }
}

/// The row's verdict in words.
pub fn verdict(r: &ImplRow) -> String {
    if let Some(why) = &r.unsupported {
        return format!("not supported ({why}): skipped");
    }
    let computed = r.cases - r.refused - r.missing_or_non_finite.min(r.cases - r.refused);
    let agrees_all = r.compared.iter().all(|(k, n)| r.agree.get(k).copied().unwrap_or(0) == *n);
    if r.refused == r.cases {
        return "refused every case".into();
    }
    if computed == 0 {
        return "**gradient missing** in every case".into();
    }
    let mut v = if r.findings > 0 {
        format!("**finding**: wrong in {} case(s) where finite differences side with another backend", r.findings)
    } else if r.odd_one_out > 0 {
        format!("**finding**: the odd one out in {} case(s) (the other backends agree with each other; finite differences too coarse to tell)", r.odd_one_out)
    } else if r.missing_or_non_finite > 0 {
        format!("**gradient missing or not finite** in {} case(s)", r.missing_or_non_finite)
    } else if r.fd_agree == r.fd_checked && agrees_all {
        "agrees".into()
    } else if r.fd_agree == r.fd_checked {
        "agrees with finite differences; another backend differs".into()
    } else {
        "disagrees with finite differences".into()
    };
    if r.refused > 0 {
        v.push_str(&format!("; refused {} case(s)", r.refused));
    }
    v
}

fn markdown(r: &OpsReport) -> String {
    let mut md = format!(
        "# The op set\n\nEvery op of the program format and every implementation a backend offers of it, on {} random cases each \
         (seed {}, {}), attributes and shapes drawn over the op's valid domain (`src/study/ops/cases.rs`). Each case is the op alone \
         with a weighted-sum loss (a fixed pseudo-random cotangent). An implementation agrees with another backend (its default \
         implementation) when output and every input gradient are within {} of the compared tensor's largest entry, and with \
         central finite differences (f64, from the most trusted backend that computes the case: libtorch, else the engine, else \
         candle) within {} of max(1, the largest entry). A *finding* is a case where the implementation disagrees with finite \
         differences while another backend agrees with them, or where it is the odd one out: it disagrees with two or more \
         other backends that agree with each other. {:.1} s.\n\n",
        r.cases,
        r.seed,
        r.dtype,
        sci(r.scaled_tolerance),
        sci(r.fd_tolerance),
        r.seconds
    );
    let others: Vec<_> = r.backends.clone();
    let mut header = vec!["op".to_string(), "backend".into(), "implementation".into(), "computed".into(), "vs finite differences".into()];
    header.extend(others.iter().map(|k| format!("vs {k}")));
    header.extend(["worst scaled difference".into(), "verdict".into(), "first disagreeing case".into()]);
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let mut v = vec![row.op.clone(), row.backend.to_string(), row.implementation.clone(), of(row.cases - row.refused, row.cases), of(row.fd_agree, row.fd_checked)];
            v.extend(others.iter().map(|k| if *k == row.backend { "-".into() } else { of(row.agree.get(k).copied().unwrap_or(0), row.compared.get(k).copied().unwrap_or(0)) }));
            v.push(sci(row.worst_scaled));
            v.push(verdict(row));
            v.push(row.first_disagreement.as_ref().map_or("-".into(), |f| format!("[{f}]({f})")));
            v
        })
        .collect();
    md.push_str(&table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows));
    let refusals: Vec<Vec<String>> = r
        .rows
        .iter()
        .filter_map(|row| row.first_refusal.as_ref().map(|m| vec![row.op.clone(), format!("{} {}", row.backend, row.implementation), row.refused.to_string(), m.clone()]))
        .collect();
    if !refusals.is_empty() {
        md.push_str("\n## Refusals and missing gradients (results, not skipped tests)\n\n");
        md.push_str(&table(&["op", "implementation", "cases", "first message"], &refusals));
    }
    md.push_str(
        "\nReplay a kept case with `parity-report run ops/cases/<file>`; for a backend's other implementation add \
         `--implementation BACKEND:OP:NAME` (e.g. `candle:softmax:softmax_last_dim`).\n",
    );
    md
}
