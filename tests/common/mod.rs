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
