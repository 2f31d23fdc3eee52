//! The A/B/C study against golden values computed by real PyTorch
//! (`reference/abc-golden.json`, made by `reference/make_golden.py`).

mod common;

use backprop_parity::backends::BackendKind;
use backprop_parity::models::abc::{self, AbcInit, AbcSpec, InitSource};
use backprop_parity::parity::Tolerance;
use backprop_parity::study;
use common::{golden, loss_rtol, max_rel, GoldenCase};

fn check_backend_against_golden(kind: BackendKind) {
    let backend = kind.create().unwrap();
    for case in golden().cases {
        let program = abc::program(case.init.k());
        let inputs: Vec<_> = case.init.tensors().iter().map(|t| t.rounded(case.dtype)).collect();
        let run = backend.train_sgd(&program, &inputs, case.lr, case.steps, case.dtype).unwrap();
        let rel = max_rel(&run.loss, &case.loss);
        assert!(rel <= loss_rtol(case.dtype), "{kind} on {}: max relative loss difference {rel:e}", case.name);
        check_grads_and_final(kind, &case, &run);
    }
}

fn check_grads_and_final(kind: BackendKind, case: &GoldenCase, run: &backprop_parity::backends::Trajectory) {
    // Gradients relative to each tensor's scale; the last steps' tiny gradients are
    // dominated by cancellation, so they are measured against the step-0 scale.
    let tol = loss_rtol(case.dtype) * 10.0;
    for (step, (ours, theirs)) in run.grads.iter().zip(&case.grads).enumerate() {
        for (name, t) in ["A", "B", "C"].iter().zip(ours) {
            let want: Vec<f64> = theirs[*name].concat();
            let scale = case.grads[0][*name].concat().iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = t.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
            assert!(err <= tol, "{kind} on {} step {step}: d{name} differs by {err:e} of its scale", case.name);
        }
    }
    for (name, t) in ["A", "B", "C"].iter().zip(&run.final_params) {
        let want = case.final_params[*name].concat();
        let err = t.data.iter().zip(&want).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
        assert!(err <= tol, "{kind} on {}: final {name} differs by {err:e}", case.name);
    }
}

#[test]
fn engine_matches_pytorch_golden_values() {
    check_backend_against_golden(BackendKind::ENGINE);
}

#[test]
fn candle_matches_pytorch_golden_values() {
    check_backend_against_golden(BackendKind::CANDLE);
}

#[cfg(feature = "torch")]
#[test]
fn live_libtorch_matches_pytorch_golden_values() {
    check_backend_against_golden(BackendKind::TORCH);
}

#[test]
fn seeded_inits_are_the_ones_the_reference_script_used() {
    for case in golden().cases {
        if let Some(seed) = case.init_source.strip_prefix("seed:") {
            let ours = AbcInit::seeded(case.init.k(), seed.parse().unwrap());
            assert_eq!(ours, case.init, "{}: Rust and Python SplitMix64 disagree", case.name);
        }
    }
}

#[test]
fn the_seed_settings_reproduce_the_seed_study_trace() {
    // The seed study's PyTorch numbers, to the digits it printed.
    let want = [421.81674, 0.348353, 0.22347, 0.143874, 0.092843];
    let s = study::abc::run(&AbcSpec::seed(30), backprop_parity::DType::F64, &[BackendKind::ENGINE], Tolerance::torch_default(backprop_parity::DType::F64)).unwrap();
    let loss = &s.backends[&BackendKind::ENGINE].loss;
    for (got, want) in loss.iter().zip(want) {
        assert!(((got - want) / want).abs() < 5e-6, "loss {got} vs seed's {want}");
    }
    assert!(loss[29] > 1e-6 && loss[29] < 3e-6, "step 30 ends near 1.8e-6, got {}", loss[29]);
}

#[test]
fn study_pairs_every_backend_and_agrees() {
    let kinds = BackendKind::defaults();
    for dtype in backprop_parity::DType::ALL {
        let spec = AbcSpec::new(InitSource::Seed(7), Some(4), 0.01, 30).unwrap();
        let s = study::abc::run(&spec, dtype, &kinds, Tolerance::torch_default(dtype)).unwrap();
        assert_eq!(s.parity.len(), kinds.len() * (kinds.len() - 1) / 2);
        for (name, p) in &s.parity {
            assert!(p.agree, "{name} disagrees in {dtype}: loss max rel {:e}", p.loss.max_rel);
            assert!(p.loss.max_rel <= loss_rtol(dtype), "{name} {dtype}: {:e}", p.loss.max_rel);
        }
    }
}
