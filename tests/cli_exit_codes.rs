//! The exit codes every subcommand shares: 0 agreement, 1 disagreement (or a failed
//! gate), 2 bad input or usage, 3 a backend failed; `--exit-zero` keeps 0 for a written
//! report.

mod common;

use common::{parity_report, temp_dir};

fn code(args: &[&str]) -> i32 {
    let dir = temp_dir(&format!("exit-{}", args.join("-").chars().filter(|c| c.is_alphanumeric()).take(40).collect::<String>()));
    let mut full = args.to_vec();
    let out_dir = dir.join("out");
    full.extend(["--out", out_dir.to_str().unwrap()]);
    let out = parity_report(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    out.status.code().unwrap_or(-1)
}

#[test]
fn agreement_is_0_and_disagreement_is_1() {
    assert_eq!(code(&["abc", "--steps", "3"]), 0);
    assert_eq!(code(&["grads", "--models", "MLP", "--batch", "4"]), 0);
    // candle-core's released max-pool backward: a disagreement.
    assert_eq!(code(&["grads", "--models", "CNN", "--batch", "2"]), 1);
    assert_eq!(code(&["grads", "--models", "CNN", "--batch", "2", "--candle-maxpool", "exact"]), 0);
    assert_eq!(code(&["mnist", "--models", "CNN", "--epochs", "1", "--train-limit", "50", "--test-limit", "20", "--resync-steps", "2"]), 1);
}

#[test]
fn exit_zero_keeps_the_report_only_behaviour() {
    assert_eq!(code(&["grads", "--models", "CNN", "--batch", "2", "--exit-zero"]), 0);
}

#[test]
fn bad_input_is_2() {
    assert_eq!(code(&["abc", "--k", "0"]), 2);
    assert_eq!(code(&["grads", "--models", "Nope"]), 2);
    assert_eq!(code(&["abc", "--no-such-flag"]), 2);
}

#[test]
fn a_mangled_baseline_file_is_bad_input_and_a_missing_one_names_the_path() {
    let dir = temp_dir("mangled-baseline");
    let path = dir.join("baseline.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::repo_path("reference/baseline.json")).unwrap()).unwrap();
    v["metrics"] = serde_json::json!([]);
    std::fs::write(&path, v.to_string()).unwrap();
    let out = parity_report(&["check", "--baseline", path.to_str().unwrap(), "--out", dir.join("out").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds no metrics") && stderr.contains("baseline.json"), "{stderr}");
    let out = parity_report(&["check", "--baseline", dir.join("none.json").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("none.json: no baseline here") && !stderr.contains("create one"), "{stderr}");
}
