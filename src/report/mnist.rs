//! The MNIST report: `mnist.md`, `mnist.json`, the seed's Figures 2 to 5 and the parity
//! plots (loss difference per step; gradient difference per step when re-synchronised).

use super::fmt::{sci, table};
use super::plot::{stacked_svg, Panel, Series, XAxis};
use super::{Output, Provenance, ReportSet};
use crate::backends::BackendKind;
use crate::error::Result;
use crate::study::claims;
use crate::study::grads::grad_tolerance;
use crate::study::mnist::MnistStudy;

const FLOOR: f64 = 1e-18;

pub fn outputs(study: &MnistStudy, provenance: &Provenance) -> Result<ReportSet> {
    let mut plots = Vec::new();
    for (file, title, filter) in FIGURES {
        plots.push(Output { file_name: file.to_string(), contents: figure(study, title, filter)? });
    }
    plots.push(Output { file_name: "mnist_loss_diff.svg".into(), contents: loss_diff_svg(study)? });
    plots.push(Output { file_name: "mnist_resync.svg".into(), contents: resync_svg(study)? });
    super::set("mnist", provenance, study, markdown(study), plots)
}

/// The seed's Figures 2 to 5: (file, title, which models).
const FIGURES: [(&str, &str, &str); 4] = [
    ("mnist_fig2_all.svg", "all models", ""),
    ("mnist_fig3_cnn.svg", "CNN", "CNN"),
    ("mnist_fig4_mlp.svg", "MLP", "MLP"),
    ("mnist_fig5_softmax.svg", "Softmax", "Softmax"),
];

fn in_family(model: &str, family: &str) -> bool {
    family.is_empty() || model == family || model.starts_with(&format!("{family}_"))
}

fn figure(study: &MnistStudy, title: &str, family: &str) -> Result<String> {
    let r = study.reference;
    let series = |f: &dyn Fn(&crate::study::mnist::EpochResult) -> f64| -> Vec<Series> {
        study
            .models
            .iter()
            .enumerate()
            .filter(|(_, (m, _))| in_family(m, family))
            .filter_map(|(i, (m, run))| run.backends.get(&r).map(|b| Series::new(m.clone(), b.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()).like(i)))
            .collect()
    };
    let panels = [
        Panel { title: format!("Test accuracy, {title} ({r}, {})", study.settings.dataset), x_label: "epoch".into(), y_label: "accuracy (%)".into(), x_axis: XAxis::Count, log_y: false, series: series(&|e| e.test_accuracy), hlines: vec![], y_clip: None, y_floor: None },
        Panel { title: format!("Test loss (the seed's definition), {title} ({r})"), x_label: "epoch".into(), y_label: "Σ batch means / test images".into(), x_axis: XAxis::Count, log_y: false, series: series(&|e| e.test_loss_seed), hlines: vec![], y_clip: None, y_floor: None },
    ];
    stacked_svg(&panels, 900, 360)
}

fn others(study: &MnistStudy) -> Vec<BackendKind> {
    study.settings.backends.iter().copied().filter(|&k| k != study.reference).collect()
}

fn pair_with_reference(study: &MnistStudy, k: BackendKind) -> String {
    let (a, b) = if k < study.reference { (k, study.reference) } else { (study.reference, k) };
    format!("{a}-{b}")
}

fn loss_diff_svg(study: &MnistStudy) -> Result<String> {
    let panels: Vec<Panel> = others(study)
        .into_iter()
        .map(|k| {
            let pair = pair_with_reference(study, k);
            Panel {
                title: format!("{k} vs {}: worst relative training-loss difference so far (own trajectories)", study.reference),
                x_label: "step".into(),
                y_label: "max over steps <= t of |loss - ref| / ref".into(),
                x_axis: XAxis::Count,
                log_y: true,
                series: study
                    .models
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (m, run))| run.trajectory.get(&pair).map(|t| Series::new(m.clone(), running_max(&t.rel)).like(i)))
                    .collect(),
                hlines: vec![(study.settings.tolerance.rtol, format!("rtol {:.1e}", study.settings.tolerance.rtol))],
                y_clip: None,
                y_floor: Some(FLOOR),
            }
        })
        .collect();
    if panels.is_empty() {
        return stacked_svg(&[empty_panel("one backend only: nothing to compare")], 900, 200);
    }
    stacked_svg(&panels, 900, 380)
}

/// The worst value so far at every step: drift reads as a rising staircase instead of
/// a saw of exact agreements and one-ulp differences.
fn running_max(rel: &[f64]) -> Vec<(f64, f64)> {
    let mut worst = 0.0f64;
    rel.iter()
        .enumerate()
        .map(|(i, &v)| {
            worst = if v.is_nan() { f64::NAN } else { worst.max(v) };
            (i as f64, worst)
        })
        .collect()
}

fn resync_svg(study: &MnistStudy) -> Result<String> {
    let grad_tol = grad_tolerance(study.settings.dtype);
    let panels: Vec<Panel> = others(study)
        .into_iter()
        .map(|k| {
            let pair = pair_with_reference(study, k);
            Panel {
                title: format!("{k} vs {}, re-synchronised each step: worst gradient difference / scale", study.reference),
                x_label: "step".into(),
                y_label: "max|a-b| / max|b|".into(),
                x_axis: XAxis::Count,
                log_y: true,
                series: study
                    .models
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (m, run))| {
                        let g = run.resync.as_ref()?.grad_scaled.get(&pair)?;
                        Some(Series::new(m.clone(), g.iter().enumerate().map(|(step, &v)| (step as f64, v)).collect()).like(i))
                    })
                    .collect(),
                hlines: vec![(grad_tol, format!("tolerance {grad_tol:.0e}"))],
                y_clip: None,
                y_floor: Some(FLOOR),
            }
        })
        .collect();
    if panels.is_empty() {
        return stacked_svg(&[empty_panel("one backend only: nothing to compare")], 900, 200);
    }
    stacked_svg(&panels, 900, 380)
}

fn empty_panel(title: &str) -> Panel {
    Panel { title: title.into(), x_label: String::new(), y_label: String::new(), x_axis: XAxis::Count, log_y: false, series: vec![], hlines: vec![], y_clip: None, y_floor: None }
}

fn markdown(study: &MnistStudy) -> String {
    let s = &study.settings;
    let mut md = format!(
        "# MNIST models in lockstep\n\n\
         Dataset {} ({} training images{}, {} test images), {} epoch(s), batches of {} (reshuffled every epoch by seed {}), \
         test batches of {}; SGD lr {} momentum {}; {}; parameters: {}. Backends: {} (reference: **{}**). \
         Backend settings: `{}`. Every backend sees the same batches in the same order and the same dropout masks.\n\n",
        s.dataset,
        s.train_images,
        if s.train_images < 60000 { " of 60000" } else { "" },
        s.test_images,
        s.epochs,
        s.train_batch,
        s.seed,
        s.test_batch,
        s.lr,
        s.momentum,
        s.dtype,
        s.params,
        s.backends.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        study.reference,
        s.backend_options.describe(),
    );
    md += "## Results after the last epoch\n\n";
    let kinds = &s.backends;
    let mut header = vec!["model".to_string()];
    header.extend(kinds.iter().map(|k| format!("{k} acc. % / test loss (seed) / mean")));
    header.extend(kinds.iter().map(|k| format!("{k} s")));
    let rows: Vec<Vec<String>> = study
        .models
        .iter()
        .map(|(m, run)| {
            let mut r = vec![m.clone()];
            r.extend(kinds.iter().map(|k| {
                run.backends.get(k).and_then(|b| b.epochs.last()).map_or("-".into(), |e| format!("{:.2} / {:.5} / {:.4}", e.test_accuracy, e.test_loss_seed, e.test_loss_mean))
            }));
            r.extend(kinds.iter().map(|k| run.backends.get(k).map_or("-".into(), |b| format!("{:.1}", b.seconds))));
            r
        })
        .collect();
    md += &table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    md += "\n![test accuracy and loss, all models](mnist_fig2_all.svg)\n\n![CNN](mnist_fig3_cnn.svg)\n\n![MLP](mnist_fig4_mlp.svg)\n\n![Softmax](mnist_fig5_softmax.svg)\n\n";
    md += "The Softmax models feed softmax probabilities to a cross-entropy that applies log-softmax again (the seed's \"double softmax\"), reproduced on purpose; it caps them near 92%.\n\n";
    md += "## Trajectories: where the backends part ways\n\n\
           Each backend trains on its own from the same start. Per step, the relative difference of the training loss to the \
           reference; the first step beyond the tolerance; the drift (least-squares slope of log10 of the difference).\n\n";
    let mut rows = Vec::new();
    for (m, run) in &study.models {
        for (pair, t) in &run.trajectory {
            rows.push(vec![m.clone(), format!("`{pair}`"), sci(t.max_rel), t.first_divergence.map_or("none".into(), |v| v.to_string()), t.decades_per_step.map_or("-".into(), |d| format!("{d:+.3}"))]);
        }
    }
    md += &table(&["model", "pair", "max rel. loss diff", "first step beyond tolerance", "drift (decades/step)"], &rows);
    md += "\n![loss difference per step](mnist_loss_diff.svg)\n\n";
    md += &format!("## Re-synchronised: one step's error without compounding\n\nBefore each of the first {} steps every backend takes the reference's parameters and running statistics; the loss and gradients of that step are compared.\n\n", s.resync_steps);
    let mut rows = Vec::new();
    for (m, run) in &study.models {
        if let Some(r) = &run.resync {
            for (pair, g) in &r.grad_scaled {
                let worst = g.iter().fold(0.0f64, |a, &b| if b.is_nan() { f64::NAN } else { a.max(b) });
                let loss = r.loss_rel[pair].iter().fold(0.0f64, |a, &b| a.max(b));
                rows.push(vec![m.clone(), format!("`{pair}`"), sci(loss), sci(worst), r.first_grad_disagreement[pair].map_or("none".into(), |v| v.to_string())]);
            }
        }
    }
    md += &table(&["model", "pair", "max rel. loss diff", "max gradient diff / scale", "first step beyond gradient tolerance"], &rows);
    md += "\n![gradient difference per re-synchronised step](mnist_resync.svg)\n\n";
    md += &format!("## The seed's claims, checked\n\nVerdicts from {}'s final epoch in this run.\n\n", study.reference);
    let rows: Vec<Vec<String>> = claims::check(study, study.reference)
        .into_iter()
        .map(|c| vec![c.claim.to_string(), format!("**{}**", c.verdict), c.evidence.join("; "), c.seed_table.to_string()])
        .collect();
    md += &table(&["claim", "verdict", "our evidence", "the seed's own table"], &rows);
    md += "\nThe seed's results (test accuracy %, epoch 25 / best / epoch 1): CNN 98.99 / 99.19 / 96.83, CNN_Dropout 98.51 / 98.54 / 91.95, \
           CNN_BatchNorm 99.20 / 99.26 / 98.45, MLP 97.85 / 97.94 / 91.55, MLP_Dropout 97.21 / 97.35 / 86.81, MLP_BatchNorm 97.93 / 98.21 / 96.21, \
           Softmax 92.62 / 92.65 / 89.61, Softmax_Dropout 89.08 / 89.27 / 84.29, Softmax_BatchNorm 92.12 / 92.20 / 88.66.\n";
    md
}
