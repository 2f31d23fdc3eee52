//! Peak resident memory of one training epoch, per model and backend, each in a process
//! of its own: the resident high-water mark (`VmHWM` in `/proc/self/status`) only ever
//! grows, so backends sharing a process would hide each other's peaks.
//!
//! The child (`parity-report memory-child`, hidden) loads MNIST, builds the model from
//! the seed's initial parameters, resets the high-water mark, notes its resident size
//! (`VmRSS`: the program, the data, the backend's libraries and the model), trains one
//! epoch (batch 25, the seed's
//! SGD with momentum, f32, dropout masks as in the lockstep runs) and reports that
//! baseline, the peak and the time as one JSON line. The bench runs a child per model
//! and backend, one after another.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use crate::backends::BackendKind;
use crate::data::batches::{batches, epoch_order};
use crate::data::Dataset;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::mnist::{ModelSpec, ParamSet};

/// What one child measured.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EpochMemory {
    /// Resident size after loading the data and building the model, before the first step.
    pub baseline_mb: f64,
    /// Resident high-water mark over the epoch (reset to the baseline just before it).
    pub peak_mb: f64,
    /// Training images in the epoch.
    pub images: usize,
    pub seconds: f64,
}

/// The child's work: one epoch of `spec` on `kind` over the first `images` training
/// images of the seeded epoch-0 order.
pub fn epoch_here(data: &Dataset, spec: &ModelSpec, kind: BackendKind, opts: &BackendOptions, images: usize) -> Result<EpochMemory> {
    let params = ParamSet::init(spec, 0);
    let mut runner = instantiate(kind, opts, spec, &params, DType::F32)?;
    let order = epoch_order(data.train.n, 0, 0);
    let order = &order[..images.min(order.len())];
    // Loading decompresses and converts the whole dataset, a transient peak above what
    // training needs; writing 5 to clear_refs (Linux 4.0+) resets the high-water mark to
    // the current resident size, so the peak below is the epoch's own.
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| Error::Invalid(format!("/proc/self/clear_refs: {e} (resetting the peak resident size needs Linux 4.0+)")))?;
    let baseline_mb = status_kb("VmRSS")? as f64 / 1024.0;
    let start = Instant::now();
    for (step, idx) in batches(order, 25).enumerate() {
        let batch = make_batch(&data.train, idx);
        let masks = step_masks(spec, idx.len(), 0, step);
        runner.forward_backward(&batch, &masks, false)?;
        runner.sgd_step(super::mnist::LR, super::mnist::MOMENTUM)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(EpochMemory { baseline_mb, peak_mb: status_kb("VmHWM")? as f64 / 1024.0, images: order.len(), seconds })
}

/// A `kB` field of `/proc/self/status`.
fn status_kb(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Invalid(format!("/proc/self/status: {e} (peak memory is measured on Linux only)")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| Error::Invalid(format!("/proc/self/status: no '{field}: ... kB' line")))
}

/// Runs `exe memory-child` for one model and backend and reads its JSON line.
pub fn epoch_in_child(exe: &Path, spec: &ModelSpec, kind: BackendKind, images: usize, threads: usize) -> Result<EpochMemory> {
    let out = Command::new(exe)
        .args(["memory-child", "--model", &spec.name, "--backend", &kind.to_string()])
        .args(["--images", &images.to_string(), "--threads", &threads.to_string()])
        .output()
        .map_err(|e| Error::Invalid(format!("{}: cannot start the memory child: {e}", exe.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "memory child for {} on {kind} failed ({}): {}",
            spec.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_str(stdout.trim())
        .map_err(|e| Error::Invalid(format!("memory child for {} on {kind}: unreadable answer '{}': {e}", spec.name, stdout.trim())))
}
