//! The example of a user's own engine (examples/own_engine.rs), plugged in through the
//! open backend interface: the harness must find it right where it is right, wrong
//! where a bug was planted, and skip (with the reason) what it does not declare.

#[path = "../examples/own_engine.rs"]
mod own_engine;

use backprop_parity::study::own::OwnCheckOptions;
use own_engine::{check_tiny, register_tiny, TINY_OPS};

fn quick() -> OwnCheckOptions {
    OwnCheckOptions { op_cases: 8, fuzz_cases: 120, ..OwnCheckOptions::default() }
}

#[test]
fn the_example_engine_agrees_where_it_is_right_and_skips_what_it_lacks() {
    let check = check_tiny(false, &quick()).unwrap();
    assert!(check.agrees(), "{}", check.summary());
    assert_eq!(check.supported_ops.len(), TINY_OPS.len());
    assert!(check.unsupported_ops.iter().any(|(op, why)| *op == "conv2d" && why == "has no conv2d"));
    // Every seed model needs an op it lacks: skipped with the reason, not failed.
    assert_eq!(check.models.len(), 9);
    assert!(check.models.iter().all(|m| m.agree.is_none() && m.skipped.as_deref().is_some_and(|s| s.starts_with("tiny has no "))));
    // Its matmul takes matrices only: refused batched cases are reported as refusals.
    assert_eq!(check.refused_ops(), ["matmul"]);
    let fuzz = check.fuzz.as_ref().unwrap();
    assert!(fuzz.agreed > 0 && fuzz.ops.iter().all(|op| TINY_OPS.contains(op)));
}

#[test]
fn a_planted_tanh_bug_is_found_by_the_op_check_and_by_the_fuzzer() {
    let check = check_tiny(true, &quick()).unwrap();
    assert!(!check.agrees());
    let wrong = check.wrong_ops();
    assert!(wrong.iter().all(|w| w.starts_with("tanh")), "{wrong:?}");
    assert!(wrong.iter().any(|w| w == "tanh") && wrong.iter().any(|w| w.starts_with("tanh (fuzz")), "{wrong:?}");
}

#[test]
fn a_name_with_a_dash_is_refused_since_pairs_are_named_a_dash_b() {
    let reg = backprop_parity::backends::Registration::new("my-engine", "x", "0", |_| unreachable!());
    let err = backprop_parity::backends::register(reg).unwrap_err().to_string();
    assert!(err.contains("my-engine") && err.contains("'-'"), "{err}");
}

fn tiny() -> backprop_parity::backends::BackendKind {
    register_tiny("tiny", false)
}

backprop_parity::check_backend_tests!(tiny);

/// burn computes its sigmoid in f32: with it among the references, a program holding
/// both burn's sigmoid and the planted tanh bug has two wrong backends. The planted bug
/// must still be the only thing blamed on the example engine.
#[cfg(feature = "burn")]
#[test]
fn with_burn_among_the_references_only_the_planted_bug_is_blamed() {
    use backprop_parity::backends::BackendKind;
    let mut references = vec![BackendKind::ENGINE, BackendKind::CANDLE, BackendKind::BURN];
    if BackendKind::TORCH.is_built() {
        references.push(BackendKind::TORCH);
    }
    let opts = OwnCheckOptions { references: Some(references), models: false, ..quick() };
    let clean = check_tiny(false, &opts).unwrap();
    assert!(clean.agrees(), "{}", clean.summary());
    let planted = check_tiny(true, &opts).unwrap();
    let wrong = planted.wrong_ops();
    assert!(!wrong.is_empty() && wrong.iter().all(|w| w.starts_with("tanh")), "{}", planted.summary());
}
