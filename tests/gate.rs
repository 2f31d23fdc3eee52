//! The gate: it passes on a clean engine, fails when agreement regresses against a
//! baseline (shown by editing a copy), and fails with every catalogued fault switched on.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use backprop_parity::backends::BackendKind;
use backprop_parity::data::{self, Dataset, DatasetKind};
use backprop_parity::engine::faults::{self, Fault};
use backprop_parity::study::gate::{evaluate, Baseline};
use backprop_parity::study::lockstep::BackendOptions;
use backprop_parity::study::mutants::judge;
use backprop_parity::study::suite::{self, BackendOutputs, Metric, SuiteConfig};

struct Clean {
    cfg: SuiteConfig,
    data: Dataset,
    outputs: BTreeMap<BackendKind, BackendOutputs>,
    baseline: Baseline,
}

/// The suite on clean backends, once per test binary; its metrics are the baseline.
fn clean() -> &'static Clean {
    static CLEAN: OnceLock<Clean> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let cfg = SuiteConfig { backends: BackendKind::built(), options: BackendOptions::default().with("candle", "maxpool", "exact") };
        let data = data::load(DatasetKind::Mnist, &data::default_dir(DatasetKind::Mnist)).unwrap();
        let outputs = suite::run(&cfg, &data).unwrap();
        let metrics = suite::metrics(&cfg, &outputs).unwrap();
        let baseline = Baseline::new(cfg.backends.clone(), metrics).unwrap();
        Clean { cfg, data, outputs, baseline }
    })
}

fn current() -> Vec<Metric> {
    clean().baseline.metrics.clone()
}

#[test]
fn the_gate_passes_on_a_clean_engine() {
    let c = clean();
    let r = evaluate(&c.baseline, &current(), &c.cfg.backends);
    assert!(r.passed, "{:?}", r.regressions);
    assert_eq!(r.compared, c.baseline.metrics.len());
    for check in ["abc", "graph", "op", "grads", "train"] {
        assert!(c.baseline.metrics.iter().any(|m| m.check == check), "no {check} metrics");
    }
    // All nine models, in both dtypes.
    for model in backprop_parity::models::mnist::SEED_MODELS {
        assert!(c.baseline.metrics.iter().any(|m| m.check == "grads" && m.case == model && m.dtype == backprop_parity::DType::F32));
        assert!(c.baseline.metrics.iter().any(|m| m.check == "train" && m.case == model));
    }
}

#[test]
fn the_gate_fails_when_agreement_regresses_against_an_edited_baseline() {
    let c = clean();
    // A copy of the baseline that claims engine and candle once agreed far better on
    // one CNN gradient: today's value is a regression against it.
    let mut edited = c.baseline.clone();
    let target = edited.metrics.iter_mut().find(|m| m.check == "grads" && m.case == "CNN" && m.item == "conv1.weight" && m.pair == "engine-candle").unwrap();
    target.value = target.value / 1e6 - 1e-30;
    let location = target.location();
    edited.slack.floor_f64 = 0.0;
    edited.slack.floor_f32 = 0.0;
    let r = evaluate(&edited, &current(), &c.cfg.backends);
    assert!(!r.passed);
    assert_eq!(r.regressions.len(), 1, "{:?}", r.regressions);
    assert_eq!(r.regressions[0].location, location);
    assert_eq!(r.regressions[0].reason, "regressed");
}

#[test]
fn missing_metrics_non_finite_values_and_absent_backends_fail_the_gate() {
    let c = clean();
    let mut now = current();
    now.retain(|m| m.case != "MLP_BatchNorm");
    let r = evaluate(&c.baseline, &now, &c.cfg.backends);
    assert!(!r.passed && r.regressions.iter().all(|g| g.reason == "missing"));
    let mut now = current();
    now[0].value = f64::NAN;
    let r = evaluate(&c.baseline, &now, &c.cfg.backends);
    assert_eq!(r.regressions.len(), 1);
    assert_eq!(r.regressions[0].reason, "not finite");
    let r = evaluate(&c.baseline, &current(), &[BackendKind::ENGINE]);
    assert!(r.regressions.iter().any(|g| g.reason == "backend did not run"));
    assert!(Baseline::new(c.cfg.backends.clone(), vec![Metric { value: f64::INFINITY, ..current()[0].clone() }]).is_err());
}

/// The engine under `fault`, the others clean: the gate must fail, pointing at the right place.
fn gate_catches(fault: Fault) {
    let c = clean();
    let reference = BackendKind::reference_among(&c.cfg.backends).unwrap();
    let _on = faults::inject(fault);
    let mut outputs = c.outputs.clone();
    let params = outputs[&reference].train_params.clone();
    outputs.insert(BackendKind::ENGINE, suite::collect(BackendKind::ENGINE, &c.cfg, &c.data, Some(&params)).unwrap());
    let now = suite::metrics(&c.cfg, &outputs).unwrap();
    let r = evaluate(&c.baseline, &now, &c.cfg.backends);
    assert!(!r.passed, "{} went unnoticed", fault.name());
    let verdict = judge(fault, &r.regressions);
    assert!(verdict.localised, "{}: localised to {:?}, expected {}", fault.name(), verdict.localised_to, fault.site());
}

macro_rules! fault_tests {
    ($($name:ident: $fault:expr;)*) => {
        const TESTED: &[Fault] = &[$($fault),*];
        $(#[test] fn $name() { gate_catches($fault); })*
    };
}

fault_tests! {
    catches_matmul_grad_transposed: Fault::MatmulGradTransposed;
    catches_vecmat_inner_product: Fault::VecMatInnerProduct;
    catches_no_fan_out_accumulation: Fault::NoFanOutAccumulation;
    catches_breadth_first_order: Fault::BreadthFirstOrder;
    catches_sigmoid_derivative_on_input: Fault::SigmoidDerivativeOnInput;
    catches_relu_grad_at_zero_flipped: Fault::ReluGradAtZeroFlipped;
    catches_batchnorm_no_mean_var_terms: Fault::BatchNormNoMeanVarTerms;
    catches_running_var_biased: Fault::RunningVarBiased;
    catches_dropout_mask_ignored_in_backward: Fault::DropoutMaskIgnoredInBackward;
    catches_conv_weight_grad_flipped: Fault::ConvWeightGradFlipped;
    catches_maxpool_grad_to_all_ties: Fault::MaxPoolGradToAllTies;
    catches_cross_entropy_grad_unscaled: Fault::CrossEntropyGradUnscaled;
    catches_momentum_with_dampening: Fault::MomentumWithDampening;
}

#[test]
fn every_catalogued_fault_has_a_test() {
    for f in Fault::ALL {
        assert!(TESTED.contains(&f), "{} has no line in fault_tests!", f.name());
    }
}

#[test]
fn faults_are_off_by_default_and_scoped_to_their_guard() {
    assert!(Fault::ALL.iter().all(|f| !faults::on(*f)));
    {
        let _g = faults::inject(Fault::BreadthFirstOrder);
        assert!(faults::on(Fault::BreadthFirstOrder) && !faults::on(Fault::RunningVarBiased));
    }
    assert!(!faults::on(Fault::BreadthFirstOrder));
}

#[test]
fn an_emptied_or_partial_baseline_fails_the_gate() {
    let c = clean();
    // One model's metrics deleted from the baseline: the suite still computes them.
    let mut partial = c.baseline.clone();
    let before = partial.metrics.len();
    partial.metrics.retain(|m| m.case != "MLP_BatchNorm");
    assert!(partial.metrics.len() < before);
    let r = evaluate(&partial, &current(), &c.cfg.backends);
    assert!(!r.passed);
    assert_eq!(r.regressions.len(), before - partial.metrics.len());
    assert!(r.regressions.iter().all(|g| g.reason == "not in the baseline" && g.location.contains("MLP_BatchNorm")), "{:?}", r.regressions);
    let mut empty = c.baseline.clone();
    empty.metrics.clear();
    assert!(empty.validate().unwrap_err().contains("no metrics"));
    assert!(!evaluate(&empty, &current(), &c.cfg.backends).passed);
}

#[test]
fn a_mangled_baseline_is_refused_with_how_to_fix_it() {
    let c = clean();
    assert_eq!(c.baseline.validate(), Ok(()));
    let refuses = |edit: &dyn Fn(&mut Baseline), needle: &str| {
        let mut b = c.baseline.clone();
        edit(&mut b);
        let e = b.validate().unwrap_err();
        assert!(e.contains(needle) && e.contains("restore the committed baseline"), "{e}");
    };
    refuses(&|b| b.slack.factor = -10.0, "slack factor -10");
    refuses(&|b| b.slack.factor = 1e9, "outside [1, 1000]");
    refuses(&|b| b.slack.floor_f64 = 0.0, "floor_f64 0");
    refuses(&|b| b.metrics[3].value = -1e-9, "a difference is finite and at least 0");
    refuses(&|b| b.suite_version = 0, "suite version 0");
    refuses(&|b| {
        let m = b.metrics[0].clone();
        b.metrics.push(m)
    }, "listed twice");
}
