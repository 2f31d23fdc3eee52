//! The study's report: `study.md`, `study.json`, and per dataset the seed's Figures 2 to 5
//! over seeds (the mean curve with the lowest and highest seed beside it).

use super::fmt::table;
use super::plot::{stacked_svg, Panel, Series, XAxis};
use super::{Output, Provenance, ReportSet};
use crate::error::Result;
use crate::parity::stats::Spread;
use std::collections::BTreeMap;

use crate::study::campaign::summary::{DatasetSummary, DriftSummary, StudySummary};

pub fn outputs(summary: &StudySummary, provenance: &Provenance) -> Result<ReportSet> {
    let mut plots = Vec::new();
    for (prefix, dataset, d) in sections(summary) {
        for (family, file) in [("", "all"), ("CNN", "cnn"), ("MLP", "mlp"), ("Softmax", "softmax")] {
            if d.models.keys().any(|m| in_family(m, family)) {
                plots.push(Output { file_name: format!("{prefix}{file}.svg"), contents: figure(d, &dataset, family)? });
            }
        }
    }
    let md = markdown(summary, &plots.iter().map(|p| p.file_name.clone()).collect::<Vec<_>>());
    super::set("study", provenance, summary, md, plots)
}

/// Each summarised (dataset, budget): the prefix of its plots' file names, its title
/// and its summary. The main budget keeps the plot names it always had.
fn sections(summary: &StudySummary) -> Vec<(String, String, &DatasetSummary)> {
    let main = summary.datasets.iter().map(|(dataset, d)| (format!("study_{dataset}_"), dataset.to_string(), d));
    let others = summary.other_budgets.iter().map(|b| (format!("study_{}_{}epochs_", b.dataset, b.summary.epochs), b.dataset.to_string(), &b.summary));
    main.chain(others).collect()
}

fn in_family(model: &str, family: &str) -> bool {
    family.is_empty() || model == family || model.starts_with(&format!("{family}_"))
}

fn figure(d: &DatasetSummary, dataset: &str, family: &str) -> Result<String> {
    let mut series = Vec::new();
    for (m, s) in d.models.iter().filter(|(m, _)| in_family(m, family)) {
        let points = |v: &[f64]| v.iter().enumerate().map(|(e, y)| ((e + 1) as f64, *y)).collect::<Vec<_>>();
        let look = series.len();
        series.push(Series::new(format!("{m} (mean of {})", s.seeds.len()), points(&s.curve_mean)));
        // The band between seeds, only on the per-family figures (nine bands would hide
        // the curves).
        if !family.is_empty() && s.seeds.len() > 1 {
            // Drawn in the mean's colour and marker, so each band reads as its model's.
            series.push(Series::new(format!("{m} lowest seed"), points(&s.curve_min)).like(look));
            series.push(Series::new(format!("{m} highest seed"), points(&s.curve_max)).like(look));
        }
    }
    let title = if family.is_empty() { "all models".to_string() } else { family.to_string() };
    let panel = Panel {
        title: format!("Test accuracy over seeds, {title} ({dataset}, {} epochs, engine)", d.epochs),
        x_label: "epoch".into(),
        y_label: "accuracy (%)".into(),
        x_axis: XAxis::Count,
        log_y: false,
        series,
        hlines: vec![],
        y_clip: None,
        y_floor: None,
    };
    stacked_svg(&[panel], 900, 420)
}

/// Runs of the same model, seed and backends that differ in one backend setting (candle's
/// max-pool mode): each backend's test accuracy per epoch side by side, so what a
/// backward costs in accuracy is read off measured runs.
fn variants(d: &DatasetSummary) -> String {
    let mut groups: BTreeMap<(String, u64, String), Vec<&DriftSummary>> = BTreeMap::new();
    for x in d.drift.iter().filter(|x| x.variant.is_some()) {
        groups.entry((x.model.clone(), x.seed, x.pair.clone())).or_default().push(x);
    }
    let mut md = String::new();
    for ((model, seed, pair), runs) in groups.into_iter().filter(|(_, runs)| runs.len() > 1) {
        md.push_str(&format!("\n{model}, seed {seed}, {pair}: test accuracy (%) per epoch in each setting\n\n"));
        let mut headers = vec!["epoch".to_string()];
        let mut columns: Vec<&Vec<f64>> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            for (backend, acc) in &r.accuracy {
                // A backend untouched by the setting (the engine) computes the same in
                // every variant: shown once, without the setting's name.
                let same_everywhere = runs.iter().all(|o| o.accuracy.get(backend) == Some(acc));
                if same_everywhere && i > 0 {
                    continue;
                }
                headers.push(if same_everywhere { backend.to_string() } else { format!("{backend} ({})", r.variant.as_deref().unwrap_or("-")) });
                columns.push(acc);
            }
        }
        let epochs = columns.iter().map(|c| c.len()).max().unwrap_or(0);
        let rows: Vec<Vec<String>> = (0..epochs)
            .map(|e| std::iter::once((e + 1).to_string()).chain(columns.iter().map(|c| c.get(e).map_or("-".into(), |a| format!("{a:.2}")))).collect())
            .collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        md.push_str(&table(&headers, &rows));
    }
    md
}

fn pm(s: &Spread) -> String {
    match s.sd {
        Some(sd) => format!("{:.2} ± {:.2}", s.mean, sd),
        None => format!("{:.2}", s.mean),
    }
}

fn markdown(summary: &StudySummary, plots: &[String]) -> String {
    let mut md = String::from("# The seed's study over seeds\n\n");
    md.push_str(&format!("Claims are judged by a stated test: {}.\n\n", summary.test));
    for (prefix, dataset, d) in sections(summary) {
        md.push_str(&format!("## {dataset}, {} epochs\n\n", d.epochs));
        let rows: Vec<Vec<String>> = d
            .models
            .iter()
            .map(|(m, s)| {
                let seed = |i: usize| s.seed_table.map_or("-".into(), |t| format!("{:.2}", [t.0, t.1, t.2][i]));
                vec![m.clone(), s.seeds.len().to_string(), pm(&s.last), seed(0), pm(&s.best), seed(1), pm(&s.first), seed(2)]
            })
            .collect();
        md.push_str(&table(
            &["model", "seeds", "last epoch", "seed's epoch 25", "best", "seed's best", "epoch 1", "seed's epoch 1"],
            &rows,
        ));
        md.push_str("\nTest accuracy in %, the engine's runs: mean ± sample standard deviation over seeds.\n\n");
        for p in plots.iter().filter(|p| p.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('_'))) {
            md.push_str(&format!("![{p}]({p})\n\n"));
        }
        md.push_str("### The seed's claims\n\n");
        for c in &d.claims {
            md.push_str(&format!("- **{}** {}\n", c.verdict, c.claim));
            for cmp in &c.comparisons {
                let ci = cmp.paired.ci95.map_or("no interval (one seed)".into(), |(lo, hi)| format!("95% CI [{lo:+.2}, {hi:+.2}]"));
                md.push_str(&format!(
                    "  - {} − {}: {:+.2} points over {} seeds, {ci}: {}\n",
                    cmp.variant, cmp.plain, cmp.paired.mean_difference, cmp.paired.n, cmp.paired.outcome
                ));
            }
        }
        if !d.drift.is_empty() {
            md.push_str("\n### Backends in lockstep from the same start\n\n");
            let rows: Vec<Vec<String>> = d
                .drift
                .iter()
                .map(|x| {
                    vec![
                        x.run.clone(),
                        x.pair.clone(),
                        x.epochs.to_string(),
                        format!("{:.1e}", x.max_params_scaled),
                        format!("{:.2}", x.max_accuracy_points),
                        format!("{:+.2}", x.last_accuracy_points),
                    ]
                })
                .collect();
            md.push_str(&table(&["run", "pair", "epochs", "max parameter difference / scale", "max \\|accuracy difference\\| (points)", "last epoch (points)"], &rows));
            md.push_str(&variants(d));
        }
        md.push('\n');
    }
    md.push_str("## Runs\n\n");
    let rows: Vec<Vec<String>> = summary
        .runs
        .iter()
        .map(|r| {
            let acc: Vec<String> = r.last_accuracy.iter().map(|(k, a)| format!("{k} {a:.2}")).collect();
            let secs: Vec<String> = r.seconds.iter().map(|(k, s)| format!("{k} {s:.0} s")).collect();
            vec![r.key.label(), format!("{} of {}", r.epochs_done, r.epochs_planned), format!("{}/{}", r.train_images, r.test_images), acc.join(", "), secs.join(", ")]
        })
        .collect();
    md.push_str(&table(&["run", "epochs", "train/test images", "last accuracy %", "time"], &rows));
    md
}
