//! The seed study's claims about dropout and batch norm, checked against our own runs.

use serde::Serialize;

use super::mnist::MnistStudy;
use crate::backends::BackendKind;
use crate::data::DatasetKind;

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ClaimVerdict {
    pub claim: &'static str,
    /// `holds`, `contradicted` or `not tested`.
    pub verdict: &'static str,
    pub evidence: Vec<String>,
    /// What the seed's own results table already says about the claim.
    pub seed_table: &'static str,
}

/// Final-epoch (accuracy %, seed test loss) of `model` on `backend`, if it ran.
fn last(study: &MnistStudy, model: &str, backend: BackendKind) -> Option<(f64, f64)> {
    let e = study.models.get(model)?.backends.get(&backend)?.epochs.last()?;
    Some((e.test_accuracy, e.test_loss_seed))
}

/// (family, plain vs variant: accuracy and loss) for every family where both ran.
fn comparisons(study: &MnistStudy, variant: &str, backend: BackendKind) -> Vec<(String, (f64, f64), (f64, f64))> {
    ["CNN", "MLP", "Softmax"]
        .iter()
        .filter_map(|f| Some((f.to_string(), last(study, f, backend)?, last(study, &format!("{f}_{variant}"), backend)?)))
        .collect()
}

fn describe(family: &str, variant: &str, plain: (f64, f64), other: (f64, f64)) -> String {
    format!(
        "{family}: {:.2}% → {family}_{variant} {:.2}% (test loss {:.5} → {:.5})",
        plain.0, other.0, plain.1, other.1
    )
}

/// Verdicts from `backend`'s final epoch.
pub fn check(study: &MnistStudy, backend: BackendKind) -> Vec<ClaimVerdict> {
    let dropout = comparisons(study, "Dropout", backend);
    let bn = comparisons(study, "BatchNorm", backend);
    let fashion = study.settings.dataset == DatasetKind::Fashion;
    let improved = |p: (f64, f64), o: (f64, f64)| o.0 > p.0 || o.1 < p.1;
    let mut out = Vec::new();
    let c1 = "Dropout did not improve any classifier, in accuracy or in test loss (MNIST, this budget).";
    out.push(if dropout.is_empty() || fashion {
        ClaimVerdict { claim: c1, verdict: "not tested", evidence: vec!["needs a plain and a _Dropout model trained on MNIST".into()], seed_table: SEED_DROPOUT }
    } else {
        let helped: Vec<_> = dropout.iter().filter(|(_, p, o)| improved(*p, *o)).collect();
        ClaimVerdict {
            claim: c1,
            verdict: if helped.is_empty() { "holds" } else { "contradicted" },
            evidence: dropout.iter().map(|(f, p, o)| describe(f, "Dropout", *p, *o)).collect(),
            seed_table: SEED_DROPOUT,
        }
    });
    let c2 = "Batch normalisation improved every classifier.";
    out.push(if bn.is_empty() {
        ClaimVerdict { claim: c2, verdict: "not tested", evidence: vec!["needs a plain and a _BatchNorm model".into()], seed_table: SEED_BN }
    } else {
        let all = bn.iter().all(|(_, p, o)| o.0 > p.0);
        ClaimVerdict {
            claim: c2,
            verdict: if all { "holds" } else { "contradicted" },
            evidence: bn.iter().map(|(f, p, o)| describe(f, "BatchNorm", *p, *o)).collect(),
            seed_table: SEED_BN,
        }
    });
    let c3 = "Dropout would help on a harder task with longer training (tested on Fashion-MNIST).";
    out.push(if !fashion || dropout.is_empty() {
        ClaimVerdict { claim: c3, verdict: "not tested", evidence: vec!["run `parity-report mnist --dataset fashion` with plain and _Dropout models".into()], seed_table: "The seed did not test it." }
    } else {
        let helped = dropout.iter().any(|(_, p, o)| o.0 > p.0);
        ClaimVerdict {
            claim: c3,
            verdict: if helped { "holds" } else { "contradicted" },
            evidence: dropout.iter().map(|(f, p, o)| describe(f, "Dropout", *p, *o)).collect(),
            seed_table: "The seed did not test it.",
        }
    });
    out
}

const SEED_DROPOUT: &str = "The seed's table agrees: every _Dropout model ends below its plain model (CNN 98.51 vs 98.99, MLP 97.21 vs 97.85, Softmax 89.08 vs 92.62 at epoch 25).";
const SEED_BN: &str = "The seed's own table contradicts it at epoch 25: Softmax_BatchNorm 92.12% < Softmax 92.62% (it holds for CNN 99.20 vs 98.99 and MLP 97.93 vs 97.85).";
