//! Where reports go, written so that readers only ever see complete files and complete sets.
//!
//! A report set lives in its own folder, `<out>/<kind>/`. A new set is written into a
//! fresh hidden folder next to it (`<out>/.<kind>.new-<pid>-<nanos>`), then swapped in with
//! one `renameat2(RENAME_EXCHANGE)`: at every instant `<out>/<kind>` is the old complete set
//! or the new one. Swaps hold an exclusive `flock` on `<out>/.<kind>.lock`, so concurrent
//! runs into one folder take turns at the swap and each leaves a complete set; leftovers of
//! killed runs (their pid is gone) are removed at the next swap.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ReportSet;
use crate::error::{Error, Result};

/// Checks before any work that `dir` is a folder this process can write into, or one it
/// can create (its nearest existing ancestor is a writable folder), so that a long run does
/// not fail at its end. Nothing is created: bad input leaves no trace.
pub fn check_out_dir(dir: &Path) -> Result<()> {
    check_dir("--out", dir)
}

/// `check_out_dir` for the folder of any flag (`--save-grads DIR`).
pub fn check_dir(flag: &str, dir: &Path) -> Result<()> {
    let absolute = if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir().map_err(|e| Error::io(".", e))?.join(dir) };
    let existing = absolute.ancestors().find(|a| fs::symlink_metadata(a).is_ok()).unwrap_or(Path::new("/"));
    match fs::metadata(existing) {
        Ok(m) if m.is_dir() => {}
        Ok(_) if existing == absolute => return Err(Error::file(dir, format!("{flag}: expected a folder, found a file"))),
        Ok(_) => return Err(Error::file(dir, format!("{flag}: cannot create the folder: {} is a file", existing.display()))),
        Err(_) => return Err(Error::file(dir, format!("{flag}: {} is a symbolic link to nothing; expected a folder", existing.display()))),
    }
    if !writable(existing) {
        let what = if existing == absolute { "cannot write into the folder".to_string() } else { format!("cannot create the folder inside {}", existing.display()) };
        return Err(Error::file(dir, format!("{flag}: {what} (permission denied or read-only)")));
    }
    Ok(())
}

/// Whether a file can be created in `dir` (tried, then removed: permissions alone do not
/// tell about read-only mounts or root).
fn writable(dir: &Path) -> bool {
    let probe = unique_sibling(&dir.join(".write-probe"), "");
    let ok = File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// Where `--json` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonTarget {
    Stdout,
    File(PathBuf),
}

/// Parses and checks `--json PATH` before any work: `-` is stdout; a path must be new or a
/// regular file (a symlink, a device, a folder or a pipe is refused, never replaced).
pub fn check_json_target(arg: &str) -> Result<JsonTarget> {
    if arg == "-" {
        return Ok(JsonTarget::Stdout);
    }
    let path = PathBuf::from(arg);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::file(&path, "--json: is a symbolic link; expected a regular file or a new path (it would not be followed or replaced)"))
        }
        Ok(m) if !m.is_file() => return Err(Error::file(&path, "--json: not a regular file (a folder, device or pipe); expected a regular file or a new path")),
        _ => {}
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::file(&path, format!("--json: the folder {} does not exist", parent.display())));
    }
    Ok(JsonTarget::File(path))
}

/// Writes `contents` to `path` through a unique temporary name in the same folder and a
/// rename: readers see the old file or the new one, and two writers never share a
/// temporary file. Errors name `path`, not the temporary file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let tmp = unique_sibling(path, ".tmp");
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents.as_ref())?;
        f.flush()?;
        fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Replaces `<out>/<kind>/` by the set, as a whole; returns the files' final paths.
pub fn write_set(out: &Path, set: &ReportSet) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let target = out.join(set.kind);
    if let Ok(m) = fs::symlink_metadata(&target) {
        if !m.is_dir() {
            return Err(Error::file(&target, "expected the report folder here, found a file; move it away"));
        }
    }
    let staging = unique_sibling(&out.join(format!(".{}.new", set.kind)), "");
    let staged = (|| -> std::io::Result<()> {
        fs::create_dir(&staging)?;
        for o in &set.outputs {
            let path = staging.join(&o.file_name);
            // A set may hold folders of its own (fuzz findings).
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, &o.contents)?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = fs::remove_dir_all(&staging);
        return Err(Error::io(&target, e));
    }
    let _lock = SwapLock::take(&out.join(format!(".{}.lock", set.kind)))?;
    swap_in(&staging, &target).inspect_err(|_| {
        let _ = fs::remove_dir_all(&staging);
    })?;
    remove_leftovers(out, set.kind);
    Ok(set.outputs.iter().map(|o| target.join(&o.file_name)).collect())
}

/// `staging` becomes `target`; the previous set (if any) is removed after the swap.
fn swap_in(staging: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return fs::rename(staging, target).map_err(|e| Error::io(target, e));
    }
    exchange(staging, target).map_err(|e| Error::io(target, e))?;
    // `staging` now holds the old set.
    let _ = fs::remove_dir_all(staging);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("path holds a NUL byte"));
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the current directory.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Without an atomic exchange: the old set is moved aside, then the new one in (a crash
/// between the two renames leaves no set, never a mixed one).
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let aside = unique_sibling(b, ".old");
    fs::rename(b, &aside)?;
    fs::rename(a, b)?;
    fs::rename(&aside, a)
}

/// Staging folders of runs that no longer exist (killed while writing).
fn remove_leftovers(out: &Path, kind: &str) {
    let prefix = format!(".{kind}.new-");
    let Ok(entries) = fs::read_dir(out) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| p != std::process::id() && !process_alive(p)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// `<path><suffix>` made unique per process and call: `<name>-<pid>-<nanos>-<n><suffix>`.
fn unique_sibling(path: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut name: OsString = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(format!("-{}-{nanos}-{}{suffix}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    path.with_file_name(name)
}

/// An exclusive advisory lock held for the duration of a swap.
struct SwapLock(#[allow(dead_code)] File);

impl SwapLock {
    fn take(path: &Path) -> Result<Self> {
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; the lock goes with it when the file closes.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
        }
        Ok(SwapLock(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Output;

    fn set(kind: &'static str, tag: &str) -> ReportSet {
        ReportSet {
            kind,
            outputs: ["a.json", "a.md", "a.svg"].iter().map(|n| Output { file_name: n.to_string(), contents: format!("{tag} {n}") }).collect(),
        }
    }

    #[test]
    fn a_set_replaces_the_previous_one_whole_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("bp-set-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write_set(&dir, &set("abc", "old")).unwrap();
        fs::write(dir.join("abc").join("stale.md"), "from an older version").unwrap();
        let paths = write_set(&dir, &set("abc", "new")).unwrap();
        assert_eq!(paths.len(), 3);
        let mut names: Vec<String> = fs::read_dir(dir.join("abc")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["a.json", "a.md", "a.svg"]);
        assert_eq!(fs::read_to_string(dir.join("abc/a.md")).unwrap(), "new a.md");
        let hidden: Vec<_> = fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".new")).collect();
        assert!(hidden.is_empty(), "staging folders left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_targets_that_are_not_regular_files_are_refused() {
        assert_eq!(check_json_target("-").unwrap(), JsonTarget::Stdout);
        assert!(check_json_target("/dev/full").unwrap_err().to_string().contains("not a regular file"));
        assert!(check_json_target("/tmp").is_err());
        assert!(check_json_target("/nonexistent-folder/x.json").unwrap_err().to_string().contains("does not exist"));
        let link = std::env::temp_dir().join(format!("bp-link-{}", std::process::id()));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(check_json_target(link.to_str().unwrap()).unwrap_err().to_string().contains("symbolic link"));
        fs::remove_file(&link).unwrap();
    }

    #[test]
    fn atomic_writes_use_unique_temporaries_and_name_the_target_on_error() {
        let a = unique_sibling(Path::new("/x/report.json"), ".tmp");
        let b = unique_sibling(Path::new("/x/report.json"), ".tmp");
        assert_ne!(a, b);
        let e = write_atomic(Path::new("/nonexistent-folder/report.json"), "{}").unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent-folder/report.json:") && !e.contains(".tmp"), "{e}");
    }
}
