//! Every subcommand once on small settings: its exit code, its JSON validated against the
//! committed schema (reference/schemas), its provenance block complete, its Markdown
//! footer present; and the committed schemas are exactly what the Rust types generate.

mod common;

use std::path::Path;

use backprop_parity::report::schema;
use common::{parity_report, repo_path, temp_dir, TempDir};
use serde_json::Value;

fn committed_schema(kind: &str) -> Value {
    let path = repo_path(&format!("reference/schemas/{kind}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_committed_schemas_are_what_the_types_generate() {
    for (kind, generated) in schema::all() {
        assert!(
            committed_schema(kind) == generated,
            "reference/schemas/{kind}.schema.json is stale: run `parity-report schemas reference/schemas` and commit it"
        );
    }
}

/// Validates `doc` against the committed schema of `kind`; the error lists every violation.
fn validate(kind: &str, doc: &Value) {
    if let Err(e) = validation(kind, doc) {
        panic!("{kind}.json does not match its schema: {e}");
    }
}

fn validation(kind: &str, doc: &Value) -> Result<(), String> {
    let mut compiler = boon::Compiler::new();
    let mut schemas = boon::Schemas::new();
    let url = format!("file:///reference/schemas/{kind}.schema.json");
    compiler.add_resource(&url, committed_schema(kind)).unwrap();
    let index = compiler.compile(&url, &mut schemas).unwrap_or_else(|e| panic!("{kind} schema does not compile: {e}"));
    schemas.validate(doc, index).map_err(|e| format!("{e:#}"))
}

#[test]
fn the_schemas_refuse_a_mangled_document() {
    let (code, out) = run("mangled", &["abc", "--steps", "2", "--backends", "engine,candle"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(out.join("abc/abc.json")).unwrap()).unwrap();
    validate("abc", &doc);
    let mut no_provenance = doc.clone();
    no_provenance.as_object_mut().unwrap().remove("provenance");
    let mut renamed = doc.clone();
    renamed["provenance"]["kernel"] = renamed["provenance"]["cpu"]["kernel_path"].take();
    let mut wrong_type = doc.clone();
    wrong_type["schema_version"] = Value::String("1".into());
    for (what, bad) in [("no provenance", no_provenance), ("an unknown field", renamed), ("a string version", wrong_type)] {
        assert!(validation("abc", &bad).is_err(), "a document with {what} passed");
    }
}

fn built_backends() -> Vec<&'static str> {
    if cfg!(feature = "torch") {
        vec!["engine", "candle", "torch"]
    } else {
        vec!["engine", "candle"]
    }
}

/// The provenance block names everything the issue asks for, and the backends that ran.
fn check_provenance(kind: &str, doc: &Value, backends: &[&str]) {
    assert_eq!(doc["schema_version"], 1, "{kind}");
    assert_eq!(doc["kind"], kind);
    let p = &doc["provenance"];
    for key in ["tool_version", "git_commit", "date"] {
        assert!(p[key].as_str().is_some_and(|s| !s.is_empty()), "{kind}: provenance.{key} missing: {p}");
    }
    let frameworks: Vec<&str> = p["frameworks"].as_array().unwrap().iter().map(|f| f["backend"].as_str().unwrap()).collect();
    assert_eq!(frameworks, backends, "{kind}: frameworks");
    for f in p["frameworks"].as_array().unwrap() {
        assert!(f["version"].as_str().is_some_and(|v| !v.is_empty() && v != "unknown"), "{kind}: {f}");
    }
    assert!(!p["dtypes"].as_array().unwrap().is_empty(), "{kind}: dtypes");
    assert!(p["threads"].as_u64().unwrap() >= 1);
    assert!(["avx512", "avx2", "portable"].contains(&p["cpu"]["kernel_path"].as_str().unwrap()), "{kind}: kernel path");
    assert!(p["cpu"]["arch"].as_str().is_some_and(|a| !a.is_empty()));
    let date = p["date"].as_str().unwrap();
    assert!(date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T', "{kind}: date {date}");
    assert!(p["command"].as_array().unwrap().iter().any(|a| a == kind) || kind == "check", "{kind}: command {}", p["command"]);
}

/// Runs `args` into a fresh folder; returns (exit code, the set's folder).
fn run(name: &str, args: &[&str]) -> (i32, TempDir) {
    let out = temp_dir(&format!("json-{name}"));
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--out", out.to_str().unwrap()]);
    let result = parity_report(&full);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (result.status.code().unwrap_or(-1), out)
}

/// The set `kind` in `out`: its JSON validated and its provenance checked, its Markdown
/// ending with the provenance footer.
fn check_set(out: &Path, kind: &str, backends: &[&str]) -> Value {
    let dir = out.join(kind);
    let text = std::fs::read_to_string(dir.join(format!("{kind}.json"))).unwrap_or_else(|e| panic!("{kind}.json: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    validate(kind, &doc);
    check_provenance(kind, &doc, backends);
    let md = std::fs::read_to_string(dir.join(format!("{kind}.md"))).unwrap();
    let footer = md.rsplit("---").next().unwrap();
    assert!(footer.contains(doc["provenance"]["git_commit"].as_str().unwrap()) && footer.contains(doc["provenance"]["date"].as_str().unwrap()), "{kind}.md footer: {footer}");
    doc
}

#[test]
fn abc_grads_and_run_write_valid_json_and_say_agreement_in_their_exit_code() {
    let all = built_backends();
    let (code, out) = run("abc", &["abc", "--steps", "3"]);
    assert_eq!(code, 0);
    check_set(&out, "abc", &all);
    // The engine with the seed's bug next to correct backends: the faulty run is reported.
    let (code, out) = run("abc-fault", &["abc", "--steps", "5", "--fault", "vecmat-inner-product"]);
    assert_eq!(code, 0, "the correct backends agree; the faulty engine is a separate line");
    let doc = check_set(&out, "abc", &all);
    assert_eq!(doc["faulty"]["fault"], "vecmat-inner-product", "one spelling of a fault: the command line's");

    let (code, out) = run("grads", &["grads", "--models", "Softmax", "--batch", "4"]);
    assert_eq!(code, 0);
    check_set(&out, "grads", &all);
    // candle-core's released max-pool backward: a disagreement, exit 1, a valid report.
    let (code, out) = run("grads-cnn", &["grads", "--models", "CNN", "--batch", "2", "--backends", "engine,candle"]);
    assert_eq!(code, 1);
    check_set(&out, "grads", &["engine", "candle"]);

    let mlp = repo_path("reference/programs/mlp.json");
    let (code, out) = run("run", &["run", mlp.to_str().unwrap()]);
    assert_eq!(code, 0);
    check_set(&out, "run", &all);
    let pool = repo_path("reference/programs/conv_pool.json");
    let (code, out) = run("run-pool", &["run", pool.to_str().unwrap()]);
    assert_eq!(code, 1);
    check_set(&out, "run", &all);
}

#[test]
fn mnist_and_bench_write_valid_json() {
    let all = built_backends();
    let (code, out) = run("mnist", &["mnist", "--models", "Softmax", "--epochs", "1", "--train-limit", "50", "--test-limit", "50", "--resync-steps", "2"]);
    assert_eq!(code, 0);
    let doc = check_set(&out, "mnist", &all);
    assert_eq!(doc["agree"], true);
    let (code, out) = run("bench", &["bench", "--models", "Softmax", "--steps", "2", "--warmup", "1", "--block", "1", "--memory-images", "0", "--fuzz-cases", "40"]);
    assert_eq!(code, 0);
    let doc = check_set(&out, "bench", &all);
    assert!(doc["models"]["Softmax"]["ratios"]["engine-candle"].as_f64().unwrap() > 0.0, "pairs spelt as everywhere else");
    assert_eq!(doc["fuzz"]["cases"], 40, "the fuzz throughput campaign ran");
    assert!(doc["fuzz"]["cases_per_second"].as_f64().unwrap() > 0.0);
}

/// The gate and the mutation run need every backend of the committed baseline (libtorch).
#[cfg(feature = "torch")]
#[test]
fn check_and_mutants_write_valid_json() {
    // The gate runs the backends its baseline lists (burn included), not the defaults.
    let baseline: Value = serde_json::from_str(&std::fs::read_to_string(repo_path("reference/baseline.json")).unwrap()).unwrap();
    let listed: Vec<String> = baseline["backends"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect();
    let all: Vec<&str> = listed.iter().map(String::as_str).collect();
    assert!(all.contains(&"burn"), "the committed baseline holds burn's metrics: {all:?}");
    let (code, out) = run("check", &["check", "--fuzz-cases", "300"]);
    assert_eq!(code, 0);
    let doc = check_set(&out, "check", &all);
    assert_eq!(doc["fuzz"]["cases"], 300, "the gate ran its fuzz campaign");
    assert_eq!(doc["fuzz"]["new"].as_array().unwrap().len(), 0, "no finding outside the reviewed lists: {}", doc["fuzz"]);
    let (code, out) = run("mutants", &["mutants", "--faults", "vecmat-inner-product"]);
    assert_eq!(code, 0);
    let doc = check_set(&out, "mutants", &all);
    assert_eq!(doc["faults"][0]["name"], "vecmat-inner-product");
}

#[test]
fn fuzz_writes_valid_json() {
    let (code, out) = run("fuzz", &["fuzz", "--cases", "200", "--seed", "1"]);
    assert!(code == 0 || code == 1, "{code}");
    let doc = check_set(&out, "fuzz", &built_backends());
    assert_eq!(doc["cases"], 200);
    // A time limit stops the campaign: the cases run so far, reported as such.
    let (code, out) = run("fuzz-time", &["fuzz", "--time-limit", "1", "--seed", "1", "--backends", "engine,candle"]);
    assert!(code == 0 || code == 1, "{code}");
    let doc = check_set(&out, "fuzz", &["engine", "candle"]);
    assert_eq!(doc["time_limit"], 1.0);
    let ran = doc["cases"].as_u64().unwrap();
    assert!(ran >= 1 && ran < 10_000_000, "{ran}");
    for bad in ["0", "-1", "nan"] {
        let (code, out) = run("fuzz-time-bad", &["fuzz", "--time-limit", bad]);
        assert_eq!(code, 2, "--time-limit {bad}");
        assert!(!out.join("fuzz").exists());
    }
}

/// `ops`: every implementation of an op on a few cases; candle's fused softmax_last_dim
/// has no backward, which the report names as a missing gradient (exit 1), and the case
/// it keeps replays with `run`.
#[test]
fn ops_writes_valid_json_and_names_a_missing_gradient() {
    let (code, out) = run("ops", &["ops", "--ops", "matmul,softmax", "--cases", "4"]);
    assert_eq!(code, 1);
    let doc = check_set(&out, "ops", &built_backends());
    let rows = doc["rows"].as_array().unwrap();
    let fused = rows.iter().find(|r| r["backend"] == "candle" && r["implementation"] == "softmax_last_dim").expect("candle's fused softmax is a row of its own");
    // Its last dimension only: the other cases are refused, the rest lack their gradient.
    let (missing, refused) = (fused["missing_or_non_finite"].as_u64().unwrap(), fused["refused"].as_u64().unwrap());
    assert!(missing >= 1 && missing + refused == 4, "{fused}");
    assert!(fused["first_refusal"].as_str().unwrap().contains("gradient missing"), "{fused}");
    for r in rows.iter().filter(|r| r["op"] == "matmul") {
        assert_eq!(r["fd_agree"], 4, "{r}");
        assert_eq!(r["findings"], 0, "{r}");
    }
    let case = out.join("ops").join(fused["first_disagreement"].as_str().unwrap());
    let o = parity_report(&["run", case.to_str().unwrap(), "--implementation", "candle:softmax:softmax_last_dim", "--out", out.join("replay").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "candle's missing gradient is a backend failure: {}", String::from_utf8_lossy(&o.stderr));
    let o = parity_report(&["run", case.to_str().unwrap(), "--out", out.join("replay-default").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "candle's default softmax has its gradient: {}", String::from_utf8_lossy(&o.stderr));
    let o = parity_report(&["run", case.to_str().unwrap(), "--implementation", "candle:softmax:nope"]);
    assert_eq!(o.status.code(), Some(2), "an unknown implementation is bad input");
    for args in [&["ops", "--ops", "nope"][..], &["ops", "--cases", "0"]] {
        let (code, out) = run("ops-bad", args);
        assert_eq!(code, 2, "{args:?}");
        assert!(!out.join("ops").exists(), "{args:?}: no report for bad input");
    }
}

#[test]
fn study_writes_valid_json() {
    let (code, out) = run("study", &["study", "--models", "Softmax,Softmax_Dropout", "--seeds", "0,1", "--epochs", "2", "--train-limit", "100", "--test-limit", "50", "--backends", "engine"]);
    assert_eq!(code, 0);
    let doc = check_set(&out, "study", &["engine"]);
    assert_eq!(doc["runs"].as_array().unwrap().len(), 4);
    assert!(doc["datasets"]["mnist"]["claims"][0]["verdict"].as_str().unwrap().starts_with("not resolved"), "two seeds, tiny budget");
}

#[test]
fn the_committed_baseline_matches_its_schema() {
    let text = std::fs::read_to_string(repo_path("reference/baseline.json")).unwrap();
    validate("baseline", &serde_json::from_str(&text).unwrap());
}

#[test]
fn bad_input_is_2_and_writes_no_report() {
    for args in [&["abc", "--k", "0"][..], &["grads", "--models", "Nope"], &["mnist", "--test-limit", "20000"], &["abc", "--lr", "-1"]] {
        let (code, out) = run("bad", args);
        assert_eq!(code, 2, "{args:?}");
        assert!(std::fs::read_dir(&out).unwrap().next().is_none(), "{args:?} wrote into --out");
    }
}
