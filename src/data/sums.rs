//! `SHA256SUMS` verification (the `sha256sum` output format), so a damaged or swapped
//! data file is caught before any backend trains on it.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Parsed `SHA256SUMS`: (file name, lowercase hex digest) pairs.
pub struct Sums {
    entries: Vec<(String, String)>,
}

impl Sums {
    /// Read `path`; lines are `<64 hex digits>  <name>` (or ` *<name>`, binary mode).
    pub fn read(path: &Path) -> Result<Sums> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = line.split_once(' ').and_then(|(hash, name)| {
                let name = name.strip_prefix([' ', '*'])?;
                let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then(|| (name.trim_end().to_string(), hash.to_ascii_lowercase()))
            });
            let Some(entry) = parsed else {
                return Err(Error::file(
                    path,
                    format!("line {}: expected '<64 hex digits>  <file name>', found '{line}'", i + 1),
                ));
            };
            entries.push(entry);
        }
        Ok(Sums { entries })
    }

    /// Check `bytes` (the content of `file`) against the entry for `file`'s name. A file
    /// the list does not mention is an error too: the list exists to vouch for it.
    pub fn verify(&self, sums_path: &Path, file: &Path, bytes: &[u8]) -> Result<()> {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some((_, expected)) = self.entries.iter().find(|(n, _)| *n == name) else {
            return Err(Error::file(
                file,
                format!("not listed in {}; expected an entry for '{name}'", sums_path.display()),
            ));
        };
        let actual = hex(&Sha256::digest(bytes));
        if actual != *expected {
            return Err(Error::file(
                file,
                format!(
                    "SHA-256 mismatch: expected {expected} (from {}), actual {actual}; the file is damaged or not the one shipped",
                    sums_path.display()
                ),
            ));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
