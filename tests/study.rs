//! `parity-report study`: a run killed mid-epoch resumes to the bits of an uninterrupted
//! one; shards merged give the unsharded report; bad input is refused without touching
//! finished runs' records.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::temp_dir;
use serde_json::Value;

/// Lockstep with the other reference this build has, so its resume is tested too.
fn backends() -> &'static str {
    if cfg!(feature = "torch") {
        "engine,torch"
    } else {
        "engine,candle"
    }
}

fn study(extra: &[&str], out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_parity-report"));
    c.args(["study", "--quiet", "--out", out.to_str().unwrap()]).args(extra);
    c
}

fn run_dir(records: &Path, model: &str, seed: u64) -> PathBuf {
    // candle's two max-pool modes are two runs; the mode is part of the folder's name.
    let mode = if backends().contains("candle") { "-maxpool-builtin" } else { "" };
    records.join("mnist").join(model).join(format!("seed-{seed}")).join(backends().replace(',', "+") + mode)
}

/// Every training result of a run (epoch records without their wall times).
fn results(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in 1.. {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("epoch-{e:03}.json"))) else { break };
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        out.push(v);
    }
    out
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_bits_of_an_uninterrupted_one() {
    let args = ["--models", "MLP_BatchNorm", "--seeds", "3", "--epochs", "3", "--train-limit", "6000", "--test-limit", "200", "--backends", backends()];
    let whole = temp_dir("study-whole");
    let status = study(&args, &whole).status().unwrap();
    assert!(status.success());
    let killed = temp_dir("study-killed");
    let dir = run_dir(&killed.join("study-records"), "MLP_BatchNorm", 3);
    let mut child = study(&args, &killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !dir.join("epoch-001.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "epoch 1 never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.join("epoch-003.json").exists(), "the run finished before the kill: nothing was resumed");
    let o = study(&args, &killed).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let final_params = |d: &Path| std::fs::read(d.join("checkpoint-003.safetensors")).unwrap();
    let whole_dir = run_dir(&whole.join("study-records"), "MLP_BatchNorm", 3);
    assert!(final_params(&dir) == final_params(&whole_dir), "the resumed run's final parameters, statistics and momentum differ from the uninterrupted run's");
    assert_eq!(results(&dir), results(&whole_dir));
}

/// The report's own content: study.json without its provenance.
fn report(out: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("study/study.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("provenance");
    // Wall times differ between any two runs.
    for r in v["runs"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
    }
    v
}

#[test]
fn shards_merged_give_the_unsharded_report() {
    let args = ["--models", "Softmax,Softmax_Dropout", "--seeds", "0,1", "--epochs", "2", "--train-limit", "300", "--test-limit", "100", "--backends", "engine"];
    let whole = temp_dir("study-unsharded");
    assert!(study(&args, &whole).status().unwrap().success());
    // The shards' folders live until the merge has read them.
    let shard_outs: Vec<_> = (1..=3).map(|i| temp_dir(&format!("study-shard-{i}"))).collect();
    let mut shard_dirs = Vec::new();
    for (i, out) in (1..=3).zip(&shard_outs) {
        let mut a = args.to_vec();
        let shard = format!("{i}/3");
        a.extend(["--shard", &shard]);
        assert!(study(&a, out).status().unwrap().success(), "shard {i}");
        shard_dirs.push(out.join("study-records"));
    }
    let merged = temp_dir("study-merged");
    let mut a = vec!["--merge"];
    a.extend(shard_dirs.iter().map(|d| d.to_str().unwrap()));
    let o = study(&a, &merged).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(report(&merged), report(&whole));
    assert_eq!(report(&whole)["runs"].as_array().unwrap().len(), 4);
}

/// Finished runs are committed without their checkpoints (git ignores them): running the
/// same study again on such records trains nothing and gives the same report.
#[test]
fn finished_runs_without_checkpoints_are_kept_as_they_are() {
    let args = ["--models", "Softmax", "--seeds", "0", "--epochs", "2", "--train-limit", "300", "--test-limit", "100", "--backends", "engine"];
    let out = temp_dir("study-no-checkpoints");
    assert!(study(&args, &out).status().unwrap().success());
    let dir = out.join("study-records/mnist/Softmax/seed-0/engine");
    std::fs::remove_file(dir.join("checkpoint-002.safetensors")).unwrap();
    let before = snapshot(&dir);
    let first = report(&out);
    let o = study(&args, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(snapshot(&dir), before, "a finished run's records were rewritten");
    assert_eq!(report(&out), first);
}

fn snapshot(d: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap())).collect();
    files.sort();
    files
}

#[test]
fn bad_input_is_refused_and_finished_records_are_kept() {
    let out = temp_dir("study-bad");
    let args = ["--models", "Softmax", "--seeds", "0", "--epochs", "2", "--train-limit", "100", "--test-limit", "100", "--backends", "engine"];
    assert!(study(&args, &out).status().unwrap().success());
    let dir = out.join("study-records/mnist/Softmax/seed-0/engine");
    let refused = |extra: &[&str], needle: &str| {
        let before = snapshot(&dir);
        let o = study(extra, &out).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle) && stderr.lines().count() == 1, "{extra:?}: expected one line with '{needle}': {stderr}");
        assert!(snapshot(&dir) == before, "{extra:?} changed the records");
    };
    refused(&["--datasets", "cifar"], "cifar");
    refused(&["--seeds", "0,x"], "--seeds 0,x");
    refused(&["--seeds", "1,1"], "appears twice");
    refused(&["--shard", "3/2"], "--shard 3/2");
    refused(&["--shard", "0/2"], "--shard 0/2");
    // The same run with other settings must not resume into its records.
    let mut other = args.to_vec();
    other[7] = "200";
    refused(&other, "recorded with other settings");
    // As if epoch 2 had not finished: the run resumes from epoch 1's checkpoint, which
    // is corrupt, then one of another model.
    std::fs::remove_file(dir.join("epoch-002.json")).unwrap();
    let first = std::fs::read(dir.join("epoch-001.json")).unwrap();
    // Without epoch 1's checkpoint (git ignores checkpoints) the run trains again from the
    // start, to the same bits.
    let o = study(&args, &out).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(results(&dir).len(), 2);
    let reread: Value = serde_json::from_slice(&std::fs::read(dir.join("epoch-001.json")).unwrap()).unwrap();
    let mut old: Value = serde_json::from_slice(&first).unwrap();
    old.as_object_mut().unwrap().remove("seconds");
    let mut new = reread.clone();
    new.as_object_mut().unwrap().remove("seconds");
    assert_eq!(old, new);
    std::fs::remove_file(dir.join("epoch-002.json")).unwrap();
    std::fs::write(dir.join("checkpoint-001.safetensors"), b"not a checkpoint").unwrap();
    refused(&args, "not a safetensors file");
    let other_model = temp_dir("study-bad-other");
    let mlp = ["--models", "MLP", "--seeds", "0", "--epochs", "1", "--train-limit", "100", "--test-limit", "100", "--backends", "engine"];
    assert!(study(&mlp, &other_model).status().unwrap().success());
    std::fs::copy(other_model.join("study-records/mnist/MLP/seed-0/engine/checkpoint-001.safetensors"), dir.join("checkpoint-001.safetensors")).unwrap();
    refused(&args, "does not fit this run's engine model");
}
