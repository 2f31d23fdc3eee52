//! The step-0 gradient report: `grads.md`, `grads.json`, `grads_layers.svg`.

use super::fmt::{sci, table, ulps};
use super::plot::{grid_svg, Panel, Series, XAxis};
use super::{Output, Provenance, ReportSet};
use crate::error::Result;
use crate::study::grads::GradsStudy;

/// Exact agreement is drawn at this floor on the log plot.
const FLOOR: f64 = 1e-18;

pub fn outputs(study: &GradsStudy, provenance: &Provenance) -> Result<ReportSet> {
    let plots = vec![Output { file_name: "grads_layers.svg".into(), contents: layers_svg(study)? }];
    super::set("grads", provenance, study, markdown(study), plots)
}

/// Per model, the scaled gradient difference of every parameter (forward order) for
/// each backend pair: where along the network two backends part ways. Three panels a
/// row keep the nine models on one screen.
fn layers_svg(study: &GradsStudy) -> Result<String> {
    let tolerance = study.settings.scaled_tolerance;
    let panels: Vec<Panel> = study
        .models
        .iter()
        .map(|(name, m)| Panel {
            title: name.clone(),
            x_label: "parameter, forward order".into(),
            y_label: "max|a-b| / max|b|".into(),
            x_axis: XAxis::Named(m.order.clone()),
            log_y: true,
            series: m
                .worst_scaled
                .keys()
                .map(|pair| Series::new(pair.clone(), m.order.iter().enumerate().map(|(i, p)| (i as f64, m.params[p][pair].scaled)).collect()))
                .collect(),
            hlines: vec![(tolerance, format!("tolerance {tolerance:.0e}"))],
            y_clip: None,
            y_floor: Some(FLOOR),
        })
        .collect();
    grid_svg(&panels, 3, 540, 440)
}

fn markdown(study: &GradsStudy) -> String {
    let s = &study.settings;
    let mut md = format!(
        "# Gradients at one step\n\n\
         Every backend computes the gradient of the mean cross-entropy on the first {} training images \
         (file order) from the same parameters ({}) and the same dropout masks, in {}. A parameter agrees \
         when `max|a - b| <= {:.0e} · max|b|` (b: the more trusted backend of the pair). Backend settings: `{}`.\n\n\
         Verdict: **{}**.\n\n![gradient difference per parameter](grads_layers.svg)\n\n",
        s.batch,
        s.params,
        s.dtype,
        s.scaled_tolerance,
        s.backend_options.describe(),
        if study.agree { "every backend agrees on every parameter of every model" } else { "some backends disagree (see the diagnosis column)" }
    );
    let pairs: Vec<String> = study.models.values().next().map(|m| m.worst_scaled.keys().cloned().collect()).unwrap_or_default();
    let mut header = vec!["model".to_string()];
    header.extend(pairs.iter().map(|p| format!("worst `{p}`")));
    header.extend(["verdict".to_string(), "diagnosis".to_string()]);
    let rows: Vec<Vec<String>> = study
        .models
        .iter()
        .map(|(name, m)| {
            let mut r = vec![name.clone()];
            r.extend(pairs.iter().map(|p| sci(m.worst_scaled[p])));
            r.push(if m.agree { "agree".into() } else { "**disagree**".into() });
            r.push(m.diagnosis.as_ref().map_or("".into(), |d| {
                let probes: Vec<String> = d
                    .probes
                    .iter()
                    .map(|p| format!("`{}` {}", p.op, if p.agree { "agrees".to_string() } else { format!("**disagrees** ({})", p.worst_scaled.iter().map(|(k, v)| format!("{k} {}", sci(*v))).collect::<Vec<_>>().join(", ")) }))
                    .collect();
                format!(
                    "{}{}first disagreeing parameter from the loss backwards: `{}`{}; suspects: {}",
                    d.culprit.as_ref().map_or(String::new(), |c| format!("culprit: **`{c}`** (run alone: {}); ", probes.join(", "))),
                    match (&d.odd_one_out, &d.no_majority) {
                        (Some(k), _) => format!("odd one out: **{k}**; "),
                        (None, Some([a, b])) => format!("**no majority**: {} against {}; ", super::fmt::names(a), super::fmt::names(b)),
                        (None, None) => "no single odd one out; ".into(),
                    },
                    d.first_disagreeing_param,
                    d.last_agreeing_layer.as_ref().map_or(String::new(), |l| format!(" (`{l}` and everything after it agree)")),
                    d.suspects.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                )
            }));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    md += "\n## Per parameter\n\n\
           ULPs are exact up to a million and rounded above it: a count of about `2e9` (f32) or `9e18` (f64) means the two \
           values have opposite signs (an entry near zero), where a distance in ULPs says nothing; `-`: a NaN or infinity.\n\n";
    for (name, m) in &study.models {
        md += &format!("### {name}\n\nLoss: {}\n\n", m.loss.iter().map(|(k, l)| format!("{k} {l:.17e}")).collect::<Vec<_>>().join(", "));
        let mut header = vec!["#".to_string(), "parameter".to_string()];
        header.extend(pairs.iter().map(|p| format!("`{p}` max abs / scaled / ULPs")));
        let rows: Vec<Vec<String>> = m
            .order
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = vec![i.to_string(), format!("`{p}`")];
                r.extend(pairs.iter().map(|pair| {
                    let d = &m.params[p][pair];
                    format!("{} / {} / {}", sci(d.max_abs), sci(d.scaled), ulps(d.max_ulps))
                }));
                r
            })
            .collect();
        md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
        md += "\n";
    }
    md
}
