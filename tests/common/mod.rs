//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use backprop_parity::models::abc::AbcInit;
use backprop_parity::DType;
use serde::Deserialize;

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One case of `reference/abc-golden.json`, computed by real PyTorch.
#[derive(Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub init_source: String,
    pub dtype: DType,
    pub lr: f64,
    pub steps: usize,
    pub init: AbcInit,
    pub loss: Vec<f64>,
    pub grads: Vec<std::collections::BTreeMap<String, Vec<Vec<f64>>>>,
    #[serde(rename = "final")]
    pub final_params: std::collections::BTreeMap<String, Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
pub struct Golden {
    pub cases: Vec<GoldenCase>,
}

pub fn golden() -> Golden {
    let path = repo_path("reference/abc-golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference/abc-golden.json parses")
}

/// The agreement the A/B/C study must reach with PyTorch (issue 2's acceptance bar).
pub fn loss_rtol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
    }
}

/// Largest |a-b|/|b| over two traces.
pub fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "trace lengths differ");
    a.iter().zip(b).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max)
}

/// Runs the `parity-report` binary of this build.
pub fn parity_report(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_parity-report")).args(args).output().expect("the binary runs")
}

/// A fresh, empty directory for one test, removed when the test is done with it (reports of
/// runs on the MNIST-sized models take tens of MB each, and a CI disk is finite). A failing
/// test keeps it, so that what it wrote can be looked at.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("bp-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// See [`temp_dir`].
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A bad invocation must fail with a readable message mentioning `needle`, without a
/// panic, and without writing a report.
pub fn rejects(args: &[&str], needle: &str) {
    let dir = temp_dir(&format!("bad-{}", needle.replace(|c: char| !c.is_alphanumeric(), "")));
    let out_dir = dir.join("out");
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--out", out_dir.to_str().unwrap()]);
    let out = parity_report(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected '{needle}' in: {stderr}");
    assert!(!out_dir.exists(), "{args:?} wrote a report");
}
