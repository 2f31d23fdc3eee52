//! What the study's records say: per dataset and model, accuracy over seeds (epoch 1,
//! last, best: mean and standard deviation), the seed's table beside it, the drift of
//! lockstep runs, and each of the seed's claims judged by a paired test over seeds.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{RunKey, RunRecords};
use crate::backends::BackendKind;
use crate::data::DatasetKind;
use crate::parity::stats::{paired, spread, Paired, Spread, HIGHER, LOWER};

/// The seed's table (test accuracy %: epoch 25, best of 25, epoch 1), MNIST.
pub const SEED_TABLE: [(&str, f64, f64, f64); 9] = [
    ("CNN", 98.99, 99.19, 96.83),
    ("CNN_Dropout", 98.51, 98.54, 91.95),
    ("CNN_BatchNorm", 99.20, 99.26, 98.45),
    ("MLP", 97.85, 97.94, 91.55),
    ("MLP_Dropout", 97.21, 97.35, 86.81),
    ("MLP_BatchNorm", 97.93, 98.21, 96.21),
    ("Softmax", 92.62, 92.65, 89.61),
    ("Softmax_Dropout", 89.08, 89.27, 84.29),
    ("Softmax_BatchNorm", 92.12, 92.20, 88.66),
];

/// How every claim is judged, stated once for the report.
pub const TEST: &str = "paired over seeds: per seed, the variant's test accuracy at the last epoch minus the plain model's \
    (same seed, so the same data order and start); the mean difference with its two-sided 95% Student-t interval \
    (n-1 degrees of freedom); a comparison is resolved when the interval excludes 0";

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StudySummary {
    /// Every run found in the records, finished or not.
    pub runs: Vec<RunStatus>,
    pub datasets: BTreeMap<DatasetKind, DatasetSummary>,
    /// Other epoch budgets of a dataset (a longer training, say), each summarised like the
    /// main one, where its finished runs can judge a claim (both models of a family, two or
    /// more seeds each).
    pub other_budgets: Vec<Budget>,
    /// The test behind every claim verdict.
    pub test: &'static str,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Budget {
    pub dataset: DatasetKind,
    pub summary: DatasetSummary,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RunStatus {
    pub key: RunKey,
    pub epochs_done: usize,
    pub epochs_planned: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// Test accuracy after the last recorded epoch, per backend.
    pub last_accuracy: BTreeMap<BackendKind, f64>,
    /// Wall time of the recorded epochs, per backend.
    pub seconds: BTreeMap<BackendKind, f64>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DatasetSummary {
    /// Epochs of the finished engine runs summarised here.
    pub epochs: usize,
    pub models: BTreeMap<String, ModelSummary>,
    pub claims: Vec<ClaimTest>,
    pub drift: Vec<DriftSummary>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelSummary {
    /// Seeds of the finished runs (the engine's results of each).
    pub seeds: Vec<u64>,
    pub first: Spread,
    pub last: Spread,
    pub best: Spread,
    /// Test accuracy per epoch: mean, lowest and highest over seeds.
    pub curve_mean: Vec<f64>,
    pub curve_min: Vec<f64>,
    pub curve_max: Vec<f64>,
    /// The seed's (epoch 25, best, epoch 1), on MNIST.
    pub seed_table: Option<(f64, f64, f64)>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ClaimTest {
    pub claim: &'static str,
    /// `holds`, `contradicted`, or `not resolved at N seeds`.
    pub verdict: String,
    pub comparisons: Vec<Comparison>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Comparison {
    pub plain: String,
    pub variant: String,
    pub paired: Paired,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DriftSummary {
    pub model: String,
    pub seed: u64,
    pub pair: String,
    /// The run, as its records name it (with candle's max-pool mode where it has one).
    pub run: String,
    /// The backend setting that tells this run from others of the same model, seed and
    /// backends (candle's max-pool mode), if any.
    pub variant: Option<String>,
    pub epochs: usize,
    /// Test accuracy per epoch of each backend of the run: what a difference in the
    /// backward costs in accuracy, measured.
    pub accuracy: BTreeMap<BackendKind, Vec<f64>>,
    /// Largest parameter difference over the largest parameter, at any epoch's end.
    pub max_params_scaled: f64,
    /// Largest |accuracy difference| at any epoch, in points.
    pub max_accuracy_points: f64,
    pub last_accuracy_points: f64,
}

/// The summary of every run in `runs`.
pub fn summarise(runs: &[RunRecords]) -> StudySummary {
    let status = runs.iter().map(run_status).collect();
    let datasets: BTreeSet<DatasetKind> = runs.iter().map(|r| r.settings.key.dataset).collect();
    let mut other_budgets = Vec::new();
    let mut main = BTreeMap::new();
    for d in datasets {
        let budgets = budgets(d, runs);
        let Some(&epochs) = budgets.first() else {
            main.insert(d, dataset(d, runs, 0));
            continue;
        };
        main.insert(d, dataset(d, runs, epochs));
        for &other in &budgets[1..] {
            let summary = dataset(d, runs, other);
            if summary.claims.iter().any(|c| c.comparisons.iter().any(|cmp| cmp.paired.n >= 2)) {
                other_budgets.push(Budget { dataset: d, summary });
            }
        }
    }
    StudySummary { runs: status, datasets: main, other_budgets, test: TEST }
}

fn run_status(r: &RunRecords) -> RunStatus {
    let last_accuracy = r.epochs.last().map(|e| e.results.iter().map(|(k, v)| (*k, v.test_accuracy)).collect()).unwrap_or_default();
    let mut seconds: BTreeMap<BackendKind, f64> = BTreeMap::new();
    for e in &r.epochs {
        for (k, s) in &e.seconds {
            *seconds.entry(*k).or_default() += s;
        }
    }
    RunStatus {
        key: r.settings.key.clone(),
        epochs_done: r.epochs.len(),
        epochs_planned: r.settings.epochs,
        train_images: r.settings.train_images,
        test_images: r.settings.test_images,
        last_accuracy,
        seconds,
    }
}

fn finished(dataset: DatasetKind, runs: &[RunRecords]) -> impl Iterator<Item = &RunRecords> {
    runs.iter().filter(move |r| r.settings.key.dataset == dataset && r.epochs.len() == r.settings.epochs)
}

/// The epoch budgets of `dataset`'s finished runs, the most common first (ties: the
/// longer first): the first is the study's main budget.
fn budgets(dataset: DatasetKind, runs: &[RunRecords]) -> Vec<usize> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for r in finished(dataset, runs) {
        *counts.entry(r.settings.epochs).or_default() += 1;
    }
    let mut budgets: Vec<(usize, usize)> = counts.into_iter().collect();
    budgets.sort_by_key(|&(e, n)| std::cmp::Reverse((n, e)));
    budgets.into_iter().map(|(e, _)| e).collect()
}

/// The engine's accuracy per epoch of every finished run of `dataset` with `epochs`
/// epochs, by model and seed. The engine is in every run, so its results cover every seed.
fn curves(dataset: DatasetKind, runs: &[RunRecords], epochs: usize) -> BTreeMap<String, BTreeMap<u64, Vec<f64>>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for r in finished(dataset, runs).filter(|r| r.settings.epochs == epochs) {
        let acc: Vec<f64> = r.epochs.iter().filter_map(|e| e.results.get(&BackendKind::ENGINE)).map(|e| e.test_accuracy).collect();
        if acc.len() == epochs {
            out.entry(r.settings.key.model.clone()).or_default().entry(r.settings.key.seed).or_insert(acc);
        }
    }
    out
}

/// `d`'s summary at one epoch budget. Lockstep drift is listed with the main budget only
/// (`other_budgets` hold the claims of a longer training), whatever each run's length.
fn dataset(d: DatasetKind, runs: &[RunRecords], epochs: usize) -> DatasetSummary {
    let main = budgets(d, runs).first().copied().unwrap_or(0) == epochs;
    let curves = curves(d, runs, epochs);
    let models = curves.iter().map(|(m, by_seed)| (m.clone(), model(d, m, by_seed))).collect();
    let claims = claims(d, &curves);
    let drift = runs
        .iter()
        .filter(|r| main && r.settings.key.dataset == d && r.settings.key.backends.len() > 1)
        .flat_map(|r| {
            let pairs: BTreeSet<String> = r.epochs.iter().flat_map(|e| e.drift.keys().cloned()).collect();
            pairs.into_iter().map(move |pair| {
                let of = |f: &dyn Fn(&super::Drift) -> f64| r.epochs.iter().filter_map(|e| e.drift.get(&pair)).map(f).collect::<Vec<f64>>();
                let worst = |v: Vec<f64>| v.into_iter().fold(0.0f64, crate::parity::max_nan);
                let mut accuracy: BTreeMap<BackendKind, Vec<f64>> = BTreeMap::new();
                for e in &r.epochs {
                    for (k, v) in &e.results {
                        accuracy.entry(*k).or_default().push(v.test_accuracy);
                    }
                }
                DriftSummary {
                    model: r.settings.key.model.clone(),
                    seed: r.settings.key.seed,
                    run: r.settings.key.label(),
                    variant: r.settings.key.variant.clone(),
                    epochs: r.epochs.len(),
                    accuracy,
                    max_params_scaled: worst(of(&|x| x.params_scaled)),
                    max_accuracy_points: worst(of(&|x| x.accuracy_points.abs())),
                    last_accuracy_points: of(&|x| x.accuracy_points).last().copied().unwrap_or(f64::NAN),
                    pair,
                }
            })
        })
        .collect();
    DatasetSummary { epochs, models, claims, drift }
}

fn model(d: DatasetKind, name: &str, by_seed: &BTreeMap<u64, Vec<f64>>) -> ModelSummary {
    let curves: Vec<&Vec<f64>> = by_seed.values().collect();
    let at = |f: &dyn Fn(&Vec<f64>) -> f64| spread(&curves.iter().map(|c| f(c)).collect::<Vec<f64>>());
    let epochs = curves.first().map_or(0, |c| c.len());
    let column = |e: usize| curves.iter().map(|c| c[e]).collect::<Vec<f64>>();
    ModelSummary {
        seeds: by_seed.keys().copied().collect(),
        first: at(&|c| c[0]),
        last: at(&|c| c[c.len() - 1]),
        best: at(&|c| c.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        curve_mean: (0..epochs).map(|e| spread(&column(e)).mean).collect(),
        curve_min: (0..epochs).map(|e| column(e).into_iter().fold(f64::INFINITY, f64::min)).collect(),
        curve_max: (0..epochs).map(|e| column(e).into_iter().fold(f64::NEG_INFINITY, f64::max)).collect(),
        seed_table: (d == DatasetKind::Mnist).then(|| SEED_TABLE.iter().find(|r| r.0 == name).map(|r| (r.1, r.2, r.3))).flatten(),
    }
}

const DROPOUT_HELPS_NOT: &str = "Dropout did not improve any classifier (MNIST, 25 epochs).";
const BATCHNORM_HELPS: &str = "Batch normalisation improved every classifier.";
const DROPOUT_HELPS_HARDER: &str = "Dropout helps on a harder task (Fashion-MNIST).";

/// The seed's claims that `dataset` can test, each over the families with both models.
fn claims(d: DatasetKind, curves: &BTreeMap<String, BTreeMap<u64, Vec<f64>>>) -> Vec<ClaimTest> {
    let compare = |variant: &str| -> Vec<Comparison> {
        ["CNN", "MLP", "Softmax"]
            .iter()
            .filter_map(|family| {
                let plain = curves.get(*family)?;
                let other_name = format!("{family}_{variant}");
                let other = curves.get(&other_name)?;
                let seeds: Vec<u64> = plain.keys().filter(|s| other.contains_key(s)).copied().collect();
                let last = |c: &BTreeMap<u64, Vec<f64>>| seeds.iter().map(|s| *c[s].last().expect("epochs")).collect::<Vec<f64>>();
                Some(Comparison { plain: family.to_string(), variant: other_name, paired: paired(&last(plain), &last(other)) })
            })
            .collect()
    };
    let unresolved = |cs: &[Comparison]| format!("not resolved at {} seeds", cs.iter().map(|c| c.paired.n).min().unwrap_or(0));
    let judge = |claim: &'static str, cs: Vec<Comparison>, holds: bool, contradicted: bool| ClaimTest {
        claim,
        verdict: if cs.is_empty() {
            "not tested".into()
        } else if contradicted {
            "contradicted".into()
        } else if holds {
            "holds".into()
        } else {
            unresolved(&cs)
        },
        comparisons: cs,
    };
    let outcome = |cs: &[Comparison], o: &str| cs.iter().filter(|c| c.paired.outcome == o).count();
    match d {
        DatasetKind::Mnist => {
            let dropout = compare("Dropout");
            let (up, down) = (outcome(&dropout, HIGHER), outcome(&dropout, LOWER));
            let n = dropout.len();
            let bn = compare("BatchNorm");
            let (bn_up, bn_down) = (outcome(&bn, HIGHER), outcome(&bn, LOWER));
            let bn_n = bn.len();
            vec![judge(DROPOUT_HELPS_NOT, dropout, down == n, up > 0), judge(BATCHNORM_HELPS, bn, bn_up == bn_n, bn_down > 0)]
        }
        DatasetKind::Fashion => {
            let dropout = compare("Dropout");
            let (up, down) = (outcome(&dropout, HIGHER), outcome(&dropout, LOWER));
            let n = dropout.len();
            vec![judge(DROPOUT_HELPS_HARDER, dropout, up > 0, down == n && n > 0)]
        }
    }
}
