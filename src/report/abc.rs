//! The A/B/C report: `abc.md`, `abc.json`, `abc_loss.svg`.

use super::fmt::{full, sci, table, ulps};
use crate::engine::faults::Fault;
use super::plot::{stacked_svg, Panel, Series, XAxis};
use super::{Output, Provenance, ReportSet};
use crate::error::Result;
use crate::study::abc::AbcStudy;

/// Relative differences of exactly zero are drawn at this floor on the log plot.
pub const ZERO_FLOOR: f64 = 1e-18;

pub fn outputs(study: &AbcStudy, provenance: &Provenance) -> Result<ReportSet> {
    let svg_name = "abc_loss.svg";
    let plots = vec![Output { file_name: svg_name.into(), contents: loss_svg(study)? }];
    super::set("abc", provenance, study, markdown(study, svg_name), plots)
}

pub fn loss_svg(study: &AbcStudy) -> Result<String> {
    let s = &study.settings;
    let loss = Panel {
        title: format!(
            "A/B/C loss per step ({}, init {}, K={}, lr {}){}",
            s.dtype,
            s.init,
            s.k,
            s.lr,
            if study.faulty.is_some() { "; diverging values and NaN drawn at the top" } else { "" }
        ),
        x_label: "step".into(),
        y_label: "loss (log)".into(),
        x_axis: XAxis::Count,
        log_y: true,
        series: study
            .backends
            .iter()
            .map(|(k, run)| Series::new(k.to_string(), per_step(&run.loss)))
            .chain(study.faulty.iter().map(|f| Series::new(format!("engine with fault {}", f.fault.name()), per_step(&f.loss))))
            .collect(),
        hlines: vec![],
        y_clip: study.faulty.as_ref().map(|_| 1e3 * study.backends.values().flat_map(|r| r.loss.iter()).fold(0.0f64, |m, &v| m.max(v))),
        y_floor: None,
    };
    let reference = study.reference;
    // Each curve of the difference panel looks like its backend's curve above it.
    let look_of = |k| study.backends.keys().position(|&b| b == k).unwrap_or(0);
    let diff = Panel {
        title: format!("relative loss difference to {reference} (exact agreement drawn at {ZERO_FLOOR:.0e})"),
        x_label: "step".into(),
        y_label: "|loss - ref| / |ref| (log)".into(),
        x_axis: XAxis::Count,
        log_y: true,
        series: study
            .parity
            .values()
            // Pairs are named in registration order, so the reference can be either side
            // (torch-burn): every backend's curve against it.
            .filter(|p| p.a == reference || p.b == reference)
            .map(|p| {
                let other = if p.b == reference { p.a } else { p.b };
                Series::new(format!("{other} vs {reference}"), per_step(&p.loss.rel)).like(look_of(other))
            })
            .chain(study.faulty.iter().map(|f| {
                Series::new(format!("engine with fault {} vs {reference}", f.fault.name()), per_step(&f.vs_reference.rel)).like(study.backends.len())
            }))
            .collect(),
        hlines: vec![(study.tolerance.rtol, format!("rtol {:.1e}", study.tolerance.rtol))],
        y_clip: study.faulty.as_ref().map(|_| 1e3),
        y_floor: Some(ZERO_FLOOR),
    };
    stacked_svg(&[loss, diff], 900, 380)
}

/// One point per step.
fn per_step(values: &[f64]) -> Vec<(f64, f64)> {
    values.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect()
}

/// Why the seed's Figure 0 looked the way it did, for the fault that reproduces it.
fn fault_explanation(f: Fault) -> &'static str {
    match f {
        Fault::VecMatInnerProduct => {
            "the seed's own bug. For `y = x·A` with a vector `x`, the gradient of `A` must be the outer product `xᵀ·dy` \
             (one number per weight); taking the inner product `x·dy` instead gives every entry of A (and B) the same \
             update, so the matrices can only move along one direction and the loss drifts away from autograd's"
        }
        _ => "see `parity-report mutants` for what it does",
    }
}

pub fn markdown(study: &AbcStudy, svg_name: &str) -> String {
    let s = &study.settings;
    let mut md = format!(
        "# A/B/C parity report\n\n\
         `y = x·A, u = sigmoid(y), v = x·B, z = u + v, w = z·C, loss = Σ w²`, trained with \
         `P = P - lr·dL/dP` for A, B, C.\n\n\
         Settings: K = {}, lr = {}, {} steps, init `{}`, dtype {}; backends {}. \
         Reference for the plot: **{}**. Tolerance `|a - b| <= {} + {}·|b|` \
         (PyTorch's `assert_close` defaults for {} unless overridden).\n\n\
         Verdict: **{}**.\n\n![loss per step]({svg_name})\n\n",
        s.k,
        s.lr,
        s.steps,
        s.init,
        s.dtype,
        study.backends.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        study.reference,
        study.tolerance.atol,
        study.tolerance.rtol,
        s.dtype,
        if study.agree { "every backend agrees with every other within tolerance" } else { "backends disagree (see below)" },
    );
    md += "## Agreement per backend pair\n\n";
    let rows: Vec<Vec<String>> = study
        .parity
        .iter()
        .map(|(name, p)| {
            let worst_grad = p.grads.values().map(|d| d.scaled).fold(0.0f64, f64::max);
            let worst_ulps = p.grads.values().map(|d| d.max_ulps).max().unwrap_or(0);
            let worst_final = p.final_params.values().map(|d| d.max_rel).fold(0.0f64, f64::max);
            vec![
                format!("`{name}`"),
                sci(p.loss.max_rel),
                p.loss.first_divergence.map_or("none".into(), |s| s.to_string()),
                p.loss.decades_per_step.map_or("-".into(), |d| format!("{d:+.2}")),
                sci(worst_grad),
                ulps(worst_ulps),
                p.grads_first_divergence.map_or("none".into(), |s| s.to_string()),
                sci(worst_final),
                if p.agree { "agree".into() } else { "**disagree**".into() },
            ]
        })
        .collect();
    md += &table(
        &[
            "pair",
            "max rel. loss diff",
            "first loss step beyond tol.",
            "drift (decades/step)",
            "max grad diff / scale",
            "max grad ULPs",
            "first grad step beyond tol.",
            "max rel. final param diff",
            "verdict",
        ],
        &rows,
    );
    md += "\n## Loss per step\n\n";
    let kinds: Vec<_> = study.backends.keys().collect();
    let mut header = vec!["step".to_string()];
    header.extend(kinds.iter().map(|k| k.to_string()));
    let steps = s.steps;
    let shown: Vec<usize> = (0..steps).filter(|&i| i < 5 || i + 1 == steps || i % 10 == 9).collect();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|&i| {
            let mut r = vec![i.to_string()];
            r.extend(kinds.iter().map(|k| full(study.backends[k].loss[i])));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    if let Some(f) = &study.faulty {
        md += &format!(
            "\n## The engine with fault `{}`\n\nThe same run on the engine with a catalogued fault switched on: {}. Against {}: \
             first step beyond tolerance {}, largest relative loss difference {}, final loss {} (the correct backends: {}).\n",
            f.fault.name(),
            fault_explanation(f.fault),
            study.reference,
            f.vs_reference.first_divergence.map_or("none".into(), |s| s.to_string()),
            sci(f.vs_reference.max_rel),
            full(*f.loss.last().unwrap_or(&f64::NAN)),
            full(*study.backends[&study.reference].loss.last().unwrap_or(&f64::NAN)),
        );
    }
    md += "\nEvery step, every gradient and the final matrices are in the JSON file beside this one.\n";
    md
}
