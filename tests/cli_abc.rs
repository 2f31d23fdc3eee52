//! `parity-report abc` end to end: outputs, the --init PATH contract, and bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{golden, loss_rtol, max_rel, parity_report, rejects, repo_path, temp_dir};

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is the JSON result")
}

fn losses(v: &serde_json::Value, backend: &str) -> Vec<f64> {
    v["backends"][backend]["loss"].as_array().unwrap_or_else(|| panic!("no {backend} loss")).iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn writes_the_report_and_json_with_every_built_backend() {
    let dir = temp_dir("report");
    let out = parity_report(&["abc", "--dtype", "f64", "--json", "-", "--out", dir.to_str().unwrap()]);
    let v = json_of(&out);
    let set = dir.join("abc");
    for name in ["abc.md", "abc.json", "abc_loss.svg"] {
        let p = set.join(name);
        assert!(p.metadata().map(|m| m.len() > 100).unwrap_or(false), "{} missing or empty", p.display());
    }
    assert!(!dir.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".new")));
    let svg = std::fs::read_to_string(set.join("abc_loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("engine") && svg.contains("candle"));
    let expected: Vec<&str> = if cfg!(feature = "torch") { vec!["engine", "candle", "torch"] } else { vec!["engine", "candle"] };
    for b in &expected {
        assert_eq!(losses(&v, b).len(), 30);
        for m in ["A", "B", "C"] {
            assert_eq!(v["backends"][b]["final"][m].as_array().unwrap().len(), 3, "final {m} of {b}");
        }
    }
    assert_eq!(v["backends"].as_object().unwrap().len(), expected.len());
    for (name, p) in v["parity"].as_object().unwrap() {
        assert_eq!(p["agree"], true, "{name}");
        assert!(p["loss"]["max_rel"].as_f64().unwrap() <= 1e-12, "{name}: {}", p["loss"]["max_rel"]);
    }
    let md = std::fs::read_to_string(set.join("abc.md")).unwrap();
    assert!(md.contains("abc_loss.svg") && md.contains("engine-candle"));
}

#[test]
fn init_from_a_file_matches_what_pytorch_computes_for_it() {
    let example = repo_path("reference/abc-init-example.json");
    for case in golden().cases.iter().filter(|c| c.init_source.ends_with("abc-init-example.json")) {
        let dir = temp_dir(&format!("init-{}", case.dtype));
        let out = parity_report(&[
            "abc",
            "--init",
            example.to_str().unwrap(),
            "--dtype",
            &case.dtype.to_string(),
            "--backends",
            "engine",
            "--json",
            "-",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let v = json_of(&out);
        let rel = max_rel(&losses(&v, "engine"), &case.loss);
        assert!(rel <= loss_rtol(case.dtype), "{}: engine vs PyTorch {rel:e}", case.name);
    }
}


fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp_dir("inputs");
    let malformed = write(&dir, "malformed.json", "{\"x\": [1, 2, 3], \"A\": ");
    let non_square = write(&dir, "nonsquare.json", r#"{"x": [1, 1], "A": [[1, 1]], "B": [[1, 1], [1, 1]], "C": [[1, 1], [1, 1]]}"#);
    // JSON has no NaN literal; a huge number overflows to infinity when parsed.
    let non_finite = write(&dir, "nan.json", r#"{"x": [1, 1e999], "A": [[1, 1], [1, 1]], "B": [[1, 1], [1, 1]], "C": [[1, 1], [1, 1]]}"#);
    rejects(&["abc", "--init", &malformed], "malformed.json");
    rejects(&["abc", "--init", &non_square], "A must be 2×2");
    rejects(&["abc", "--init", &non_finite], "finite number");
    let nan = write(&dir, "nan-literal.json", r#"{"x": [NaN, 1], "A": [[1, 1], [1, 1]], "B": [[1, 1], [1, 1]], "C": [[1, 1], [1, 1]]}"#);
    rejects(&["abc", "--init", &nan], "NaN");
    rejects(&["abc", "--init", &dir.join("missing.json").to_string_lossy()], "missing.json");
    rejects(&["abc", "--k", "0"], "--k 0");
    rejects(&["abc", "--steps", "0"], "--steps 0");
    rejects(&["abc", "--lr", "NaN"], "--lr");
    rejects(&["abc", "--init", "seed:x"], "seed:N");
    rejects(&["abc", "--dtype", "f16"], "f16");
    rejects(&["abc", "--backends", "engine,jax"], "jax");
    rejects(&["abc", "--backends", "engine,engine"], "twice");
    rejects(&["abc", "--init", &non_square, "--k", "3"], "nonsquare.json");
}

#[cfg(not(feature = "torch"))]
#[test]
fn asking_for_torch_without_the_feature_says_how_to_build_it() {
    rejects(&["abc", "--backends", "engine,torch"], "--features torch");
}
