//! The cases of the bad-and-unusual-input sweep (issue 11), each refused with one line
//! that names the flag or file and exit 2, or handled as the README documents.

mod common;

use std::process::{Command, Stdio};

use common::{parity_report, rejects, repo_path, temp_dir, TempDir};

/// Exit code and stderr of a run into a fresh `--out`: the folder `out` of the returned
/// one (removed when that is dropped).
fn code_and_stderr(args: &[&str]) -> (i32, String, TempDir) {
    let dir = temp_dir(&format!("sweep-{}", args.join("-").chars().filter(|c| c.is_alphanumeric()).take(40).collect::<String>()));
    let out = dir.join("out");
    let mut full = args.to_vec();
    full.extend(["--out", out.to_str().unwrap()]);
    let o = parity_report(&full);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (o.status.code().unwrap_or(-1), stderr, dir)
}

#[test]
fn resource_limits_are_refused_up_front_with_the_limit_and_why() {
    rejects(&["abc", "--k", "100000", "--steps", "1"], "--k 100000: at most 512");
    rejects(&["abc", "--steps", "100000000"], "--steps 100000000: at most 100000");
    rejects(&["abc", "--k", "512", "--steps", "100"], "3·K²·steps");
    rejects(&["bench", "--threads", "1000"], "--threads 1000: at most");
    rejects(&["bench", "--threads", "0"], "--threads 0");
    rejects(&["mnist", "--epochs", "100000"], "--epochs 100000: at most 1000");
}

#[test]
fn values_that_would_make_a_meaningless_run_are_refused() {
    rejects(&["abc", "--lr", "-1"], "--lr -1e0: expected a finite learning rate > 0");
    rejects(&["abc", "--lr", "0"], "--lr 0e0");
    rejects(&["abc", "--rtol", "1e300"], "--rtol 1e300: expected at most 1");
    rejects(&["abc", "--atol", "-1"], "--atol -1e0");
    rejects(&["--full", "abc"], "--full: is `parity-report study` without a subcommand");
}

#[test]
fn limits_are_refused_never_clamped() {
    rejects(&["mnist", "--test-limit", "20000"], "--test-limit 20000: expected 1 to 10000");
    rejects(&["mnist", "--train-limit", "70000"], "--train-limit 70000: expected 1 to 60000");
    rejects(&["mnist", "--train-limit", "100", "--resync-steps", "1000000"], "--resync-steps 1000000: at most 4");
}

#[test]
fn a_folder_holding_the_other_dataset_is_refused() {
    let mnist = repo_path("data/mnist");
    rejects(&["mnist", "--dataset", "fashion", "--data-dir", mnist.to_str().unwrap()], "holds mnist, not fashion");
}

#[test]
fn a_run_that_goes_non_finite_disagrees() {
    let (code, stderr, out) = code_and_stderr(&["abc", "--lr", "1e308", "--steps", "5"]);
    assert_eq!(code, 1, "NaN never counts as agreement: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("out/abc/abc.json")).unwrap()).unwrap();
    assert_eq!(doc["agree"], false);
}

#[test]
fn output_paths_that_are_not_regular_files_are_refused_before_any_work() {
    rejects(&["abc", "--json", "/dev/full"], "/dev/full: --json: not a regular file");
    let dir = temp_dir("sweep-json-link");
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(dir.join("target.json"), &link).unwrap();
    rejects(&["abc", "--json", link.to_str().unwrap()], "--json: is a symbolic link");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    rejects(&["abc", "--json", "/no/such/folder/x.json"], "--json: the folder /no/such/folder does not exist");
    // --out is a file: refused before the study runs, the file left alone.
    let file = dir.join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    let o = parity_report(&["abc", "--out", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out: expected a folder, found a file"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let o = parity_report(&["abc", "--out", "/proc/no-such/reports"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn out_before_the_subcommand_is_used() {
    let dir = temp_dir("sweep-out-first");
    let o = parity_report(&["--out", dir.to_str().unwrap(), "abc", "--steps", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("abc/abc.json").is_file());
}

#[test]
fn quiet_prints_nothing_on_stderr() {
    let dir = temp_dir("sweep-quiet");
    let o = parity_report(&["grads", "--models", "Softmax", "--batch", "2", "--quiet", "--out", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    // An error still says what went wrong, in one line.
    let o = parity_report(&["abc", "--k", "0", "--quiet"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn json_to_a_closed_stdout_fails_the_run() {
    let dir = temp_dir("sweep-closed-stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parity-report"))
        .args(["abc", "--steps", "50", "--json", "-", "--out", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--json -") && stderr.contains("stdout"), "{stderr}");
}

#[test]
fn messages_do_not_repeat_themselves() {
    let (code, stderr, _) = code_and_stderr(&["grads", "--params", "/no/such/params.safetensors"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    let (_, stderr, _) = code_and_stderr(&["abc", "--k", "0"]);
    assert!(!stderr.contains("invalid input"), "{stderr}");
}

#[test]
fn the_shipped_data_is_found_from_another_folder() {
    let dir = temp_dir("sweep-cwd");
    let o = Command::new(env!("CARGO_BIN_EXE_parity-report"))
        .args(["grads", "--models", "Softmax", "--batch", "2", "--quiet", "--out", "r"])
        .current_dir(&dir)
        .env_remove("BACKPROP_PARITY_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("r/grads/grads.json").is_file());
}

/// The gate finds the committed baseline from a folder inside the checkout.
#[cfg(feature = "torch")]
#[test]
fn check_finds_the_baseline_from_a_subfolder() {
    let out = temp_dir("sweep-check-cwd");
    let o = Command::new(env!("CARGO_BIN_EXE_parity-report"))
        .args(["check", "--quiet", "--fuzz-cases", "100", "--out", out.to_str().unwrap()])
        .current_dir(repo_path("src"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}
