//! Where the project's own files are found at run time (the shipped MNIST, the committed
//! baseline), so that an installed or copied binary does not depend on the folder it was
//! built in, and `check` works from any folder inside a checkout.
//!
//! A path relative to the project root is looked up, in order, under
//! `$BACKPROP_PARITY_HOME`, the current folder and its ancestors, the executable's
//! ancestors (`target/release/parity-report` lives inside its checkout), and last the
//! folder the crate was built from (for `cargo test` and `cargo run`).

use std::path::{Path, PathBuf};

/// Names the checkout root to use, overriding every other place.
pub const HOME_VAR: &str = "BACKPROP_PARITY_HOME";

/// The first existing `<root>/<relative>` over the places above, or None.
pub fn find(relative: &str) -> Option<PathBuf> {
    roots().into_iter().map(|r| r.join(relative)).find(|p| p.exists())
}

/// `find(relative)`, or `relative` itself (for an error message that names what is missing).
pub fn find_or_relative(relative: &str) -> PathBuf {
    find(relative).unwrap_or_else(|| PathBuf::from(relative))
}

fn roots() -> Vec<PathBuf> {
    if let Some(home) = std::env::var_os(HOME_VAR) {
        return vec![PathBuf::from(home)];
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_files_are_found_from_the_crate() {
        assert!(super::find("data/mnist/SHA256SUMS").is_some());
        assert!(super::find("reference/baseline.json").is_some());
        assert!(super::find("no/such/file").is_none());
    }
}
