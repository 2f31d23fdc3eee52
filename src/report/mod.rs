//! Formatting only: JSON, Markdown and SVG built in memory from a study's result, then
//! written together, each file through a temporary name and a rename, so that a failed
//! run never leaves a half-written report.

pub mod abc;
pub mod bench;
pub mod fmt;
pub mod gate;
pub mod grads;
pub mod mnist;
pub mod plot;
pub mod run;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One file of a report, fully rendered.
pub struct Output {
    pub file_name: String,
    pub contents: String,
}

/// Writes every output into `dir` (created if needed); returns the paths written.
pub fn write_all(dir: &Path, outputs: &[Output]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for out in outputs {
        let path = dir.join(&out.file_name);
        write_atomic(&path, &out.contents)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `contents` to `path` via `path.tmp` and a rename.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Pretty JSON; non-finite numbers become `null` (serde_json's rule), never a number.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| Error::Invalid(format!("JSON encoding failed: {e}")))
}
