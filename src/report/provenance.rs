//! What produced a report: every JSON output carries this block and every Markdown report
//! ends with it, so that a number quoted in a bug report can be traced to the code, the
//! framework versions and the kernels that computed it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backends::BackendKind;
use crate::dtype::DType;

/// Version of the JSON outputs' layout; raised whenever a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// backprop-parity's version (Cargo.toml).
    pub tool_version: String,
    /// The git commit the binary was built from (`-dirty`: with uncommitted source
    /// changes), or "unknown" outside a git checkout.
    pub git_commit: String,
    /// Every framework that ran, with its version.
    pub frameworks: Vec<Framework>,
    /// Element types computed in.
    pub dtypes: Vec<DType>,
    /// Threads of every backend (the engine's team, candle's rayon pool, libtorch's
    /// intra-op threads).
    pub threads: usize,
    pub cpu: Cpu,
    /// When the run finished, UTC, ISO 8601.
    pub date: String,
    /// The command line, program name first.
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Framework {
    pub backend: BackendKind,
    /// What computes for that backend: `backprop-parity engine`, `candle-core`, `libtorch`.
    pub name: String,
    pub version: String,
    /// The Rust binding between us and it (tch for libtorch), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub cores: usize,
    /// The vector extensions detected at run time that the engine's kernels can use.
    pub features: Vec<String>,
    /// The instruction set the engine's kernels ran on: `avx512`, `avx2` or `portable`.
    /// It decides the engine's bits.
    pub kernel_path: String,
}

impl Provenance {
    /// The block for a run of `backends` in `dtypes`, dated now.
    pub fn collect(backends: &[BackendKind], dtypes: &[DType]) -> Self {
        let mut dtypes = dtypes.to_vec();
        dtypes.sort();
        dtypes.dedup();
        Provenance {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("BP_GIT_COMMIT").into(),
            frameworks: backends.iter().map(|&k| Framework::of(k)).collect(),
            dtypes,
            threads: crate::engine::parallel::threads(),
            cpu: Cpu::here(),
            date: utc_now(),
            command: std::env::args().collect(),
        }
    }

    /// The Markdown footer every report ends with.
    pub fn markdown_footer(&self) -> String {
        let frameworks: Vec<String> = self
            .frameworks
            .iter()
            .map(|f| match &f.binding {
                Some(b) => format!("{} {} ({}, through {b})", f.backend, f.name, f.version),
                None => format!("{} {} {}", f.backend, f.name, f.version),
            })
            .collect();
        let dtypes: Vec<String> = self.dtypes.iter().map(|d| d.to_string()).collect();
        format!(
            "\n---\n\n<sub>backprop-parity {} (commit {}) · {} · {} · {} thread(s) · {} with {}, engine kernels: {} · {} · `{}`</sub>\n",
            self.tool_version,
            self.git_commit,
            frameworks.join("; "),
            dtypes.join(", "),
            self.threads,
            self.cpu.arch,
            if self.cpu.features.is_empty() { "no vector extensions".to_string() } else { self.cpu.features.join(", ") },
            self.cpu.kernel_path,
            self.date,
            self.command.join(" ").replace('`', "'"),
        )
    }
}

impl Framework {
    pub fn of(kind: BackendKind) -> Self {
        let (name, version, binding) = match kind {
            BackendKind::Engine => ("backprop-parity engine", env!("CARGO_PKG_VERSION").to_string(), None),
            BackendKind::Candle => ("candle-core", env!("BP_CANDLE_VERSION").to_string(), None),
            BackendKind::Torch => ("libtorch", env!("BP_LIBTORCH_VERSION").to_string(), Some(format!("tch {}", env!("BP_TCH_VERSION")))),
            BackendKind::Burn => ("burn", env!("BP_BURN_VERSION").to_string(), Some("burn-ndarray under burn-autodiff".to_string())),
        };
        Framework { backend: kind, name: name.into(), version, binding }
    }
}

impl Cpu {
    pub fn here() -> Self {
        Cpu {
            arch: std::env::consts::ARCH.into(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            features: vector_features(),
            kernel_path: crate::engine::ops::gemm::kernel_path().into(),
        }
    }
}

fn vector_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut found: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f.to_string());
                }
            )*};
        }
        probe!("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon".into());
        }
    }
    found
}

/// Now as `YYYY-MM-DDThh:mm:ssZ` (no time-zone database needed: UTC only).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc_of(secs)
}

fn utc_of(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc_of(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_of(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_of(1_796_219_999), "2026-12-02T13:59:59Z");
    }

    #[test]
    fn provenance_names_every_backend_once_and_the_kernel_path() {
        let p = Provenance::collect(&[BackendKind::Engine, BackendKind::Candle], &[DType::F64, DType::F32, DType::F64]);
        assert_eq!(p.frameworks.iter().map(|f| f.backend).collect::<Vec<_>>(), [BackendKind::Engine, BackendKind::Candle]);
        assert_eq!(p.dtypes, [DType::F32, DType::F64]);
        assert!(["avx512", "avx2", "portable"].contains(&p.cpu.kernel_path.as_str()));
        assert!(p.frameworks.iter().all(|f| !f.version.is_empty() && f.version != "unknown"));
        assert!(p.markdown_footer().contains(&p.cpu.kernel_path));
    }
}
