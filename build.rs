//! Build-time facts for every binary and test:
//! - with `--features torch`, libtorch's directory as an rpath, so binaries run without
//!   LD_LIBRARY_PATH (torch-sys reports it as `cargo:libtorch_lib=...`, which reaches us
//!   as DEP_TCH_LIBTORCH_LIB), and the libtorch version it found;
//! - the versions of candle-core, tch and burn from Cargo.lock and the git commit, which every
//!   report's provenance block records.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-env=BP_LIBTORCH_VERSION={}", libtorch_version().unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [("candle-core", "BP_CANDLE_VERSION"), ("tch", "BP_TCH_VERSION"), ("burn-autodiff", "BP_BURN_VERSION")] {
        println!("cargo:rustc-env={var}={}", locked_version(&lock, krate).unwrap_or_else(|| "unknown".into()));
    }
    println!("cargo:rustc-env=BP_GIT_COMMIT={}", git_commit().unwrap_or_else(|| "unknown".into()));
}

/// `torch/version.py` of the torch package LIBTORCH points at (scripts/setup-torch's venv).
fn libtorch_version() -> Option<String> {
    let dir = std::env::var("LIBTORCH").ok()?;
    let text = std::fs::read_to_string(Path::new(&dir).join("version.py")).ok()?;
    let line = text.lines().find(|l| l.starts_with("__version__"))?;
    Some(line.split(['\'', '"']).nth(1)?.to_string())
}

fn locked_version(lock: &str, krate: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{krate}\"") {
            return lines.next()?.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string);
        }
    }
    None
}

/// The commit HEAD names, with `-dirty` when tracked sources differ from it; None outside
/// a git checkout (a crates.io download). Re-run when HEAD moves or a source changes.
fn git_commit() -> Option<String> {
    let git_dir = run("git", &["rev-parse", "--git-dir"])?;
    let head = Path::new(&git_dir).join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(r) = std::fs::read_to_string(&head) {
        if let Some(name) = r.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", Path::new(&git_dir).join(name).display());
        }
    }
    println!("cargo:rerun-if-changed={}", Path::new(&git_dir).join("packed-refs").display());
    for tracked in ["src", "build.rs", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={tracked}");
    }
    let commit = run("git", &["rev-parse", "HEAD"])?;
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no", "--", "src", "build.rs", "Cargo.toml", "Cargo.lock"])
        .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
