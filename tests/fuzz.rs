//! `parity-report fuzz`: from a fixed seed and no hint it rediscovers candle's max-pool
//! backward bug and shrinks it; the same seed gives the same findings; shards together
//! find what the whole campaign finds; bad input is refused.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{parity_report, rejects, temp_dir};
use serde_json::Value;

fn campaign(out: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["fuzz", "--cases", "3000", "--seed", "1", "--quiet", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = parity_report(&args);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str::<Value>(&std::fs::read_to_string(out.join("fuzz/findings.json")).unwrap()).unwrap().as_array().unwrap().clone()
}

fn keys(findings: &[Value]) -> BTreeSet<(String, String, String)> {
    findings.iter().map(|f| (f["op"].to_string(), f["odd_backend"].to_string(), f["kind"].to_string())).collect()
}

#[test]
fn a_fixed_seed_rediscovers_candles_max_pool_backward_and_shrinks_it() {
    let out = temp_dir("fuzz-maxpool");
    let findings = campaign(&out, &[]);
    let pool = findings
        .iter()
        .find(|f| f["op"] == "max_pool2d" && f["kind"] == "wrong gradient" && f["nodes"].as_u64().unwrap() <= 2 && f["input_entries"].as_u64().unwrap() <= 16)
        .unwrap_or_else(|| panic!("no shrunk max_pool2d finding in {findings:#?}"));
    // The shrunk program replays: `run` on it disagrees (exit 1).
    let program = out.join("fuzz").join(pool["program"].as_str().unwrap());
    let replay = temp_dir("fuzz-replay");
    let o = parity_report(&["run", program.to_str().unwrap(), "--out", replay.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(program.with_file_name("reference.py").is_file() && program.with_file_name("finding.md").is_file());
    // candle with PyTorch's backward: the max-pool findings are gone.
    let exact = campaign(&temp_dir("fuzz-exact"), &["--candle-maxpool", "exact"]);
    assert!(!exact.iter().any(|f| f["op"] == "max_pool2d" && f["kind"] == "wrong gradient"), "{exact:#?}");
}

#[test]
fn the_same_seed_gives_the_same_findings_and_shards_add_up() {
    let a = campaign(&temp_dir("fuzz-a"), &[]);
    let b = campaign(&temp_dir("fuzz-b"), &[]);
    assert_eq!(a, b);
    let mut union = BTreeSet::new();
    for i in 1..=3 {
        let shard = format!("{i}/3");
        union.extend(keys(&campaign(&temp_dir(&format!("fuzz-shard-{i}")), &["--shard", &shard])));
    }
    assert_eq!(union, keys(&a));
}

#[test]
fn bad_input_is_refused() {
    rejects(&["fuzz", "--ops", "relu,convolve"], "'convolve' is not an op");
    rejects(&["fuzz", "--cases", "0"], "--cases 0");
    rejects(&["fuzz", "--max-nodes", "0"], "--max-nodes 0");
    rejects(&["fuzz", "--shard", "3/2"], "--shard 3/2");
    rejects(&["fuzz", "--backends", "engine"], "at least two");
}
