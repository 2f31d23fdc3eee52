//! A report set is replaced as a whole or not at all: runs into one folder at once both
//! leave complete sets, and a run killed (SIGKILL) at any point while it works or writes
//! leaves the previous complete set or its own complete set, never a mix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::temp_dir;

fn spawn(args: &[&str], out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_parity-report"))
        .args(args)
        .args(["--out", out.to_str().unwrap(), "--quiet", "--backends", "engine,candle"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// The files of `<out>/abc/` by name, with the run's date taken out (the one thing that
/// differs between two runs of one command), or None if the folder is absent.
fn set_of(out: &Path, kind: &str) -> Option<BTreeMap<String, String>> {
    let dir = out.join(kind);
    let entries = std::fs::read_dir(&dir).ok()?;
    let mut files = BTreeMap::new();
    for e in entries {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        files.insert(e.file_name().to_string_lossy().to_string(), without_dates(&text));
    }
    Some(files)
}

/// `YYYY-MM-DDThh:mm:ssZ` replaced by a placeholder.
fn without_dates(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let is_date = i + 20 <= b.len()
            && b[i + 4] == b'-'
            && b[i + 10] == b'T'
            && b[i + 19] == b'Z'
            && b[i..i + 4].iter().all(u8::is_ascii_digit);
        if is_date {
            out.push_str("<date>");
            i += 20;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[test]
fn two_runs_into_one_folder_at_once_both_leave_complete_sets() {
    let out = temp_dir("sets-concurrent");
    let program = common::repo_path("reference/programs/mlp.json");
    let mut children = vec![
        spawn(&["abc", "--steps", "20"], &out),
        spawn(&["abc", "--steps", "20"], &out),
        spawn(&["run", program.to_str().unwrap()], &out),
    ];
    for c in &mut children {
        let status = c.wait().unwrap();
        assert!(status.success(), "a concurrent run failed");
    }
    for kind in ["abc", "run"] {
        let set = set_of(&out, kind).unwrap_or_else(|| panic!("no {kind} set"));
        let json: serde_json::Value = serde_json::from_str(&set[&format!("{kind}.json")]).expect("complete JSON");
        assert_eq!(json["kind"], kind);
        assert!(set[&format!("{kind}.md")].contains("<sub>backprop-parity"), "{kind}.md complete with its footer");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".lock") && n != "abc" && n != "run")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn a_run_killed_at_random_points_leaves_the_old_set_or_the_new_one() {
    let out = temp_dir("sets-killed");
    let steps = [20usize, 25];
    // The reference sets, made in the folder the killed runs write to (the command line,
    // --out included, is in the provenance).
    let mut refs = Vec::new();
    for s in steps {
        let start = Instant::now();
        assert!(spawn(&["abc", "--steps", &s.to_string()], &out).wait().unwrap().success());
        refs.push((set_of(&out, "abc").unwrap(), start.elapsed()));
    }
    let longest = refs.iter().map(|(_, t)| *t).max().unwrap();
    let mut current = 1; // the folder now holds the set of steps[1]
    let mut seen_new = 0;
    // A fixed linear congruential sequence: the same kill points on every run of the test.
    let mut rng: u64 = 0x5eed;
    for round in 0..40 {
        let next = round % 2; // alternate, so every completed run changes the folder
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = longest.mul_f64(((rng >> 33) % 1000) as f64 / 1000.0 * 1.2);
        let mut child = spawn(&["abc", "--steps", &steps[next].to_string()], &out);
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let now = set_of(&out, "abc").expect("the report folder is never missing");
        if now == refs[current].0 {
            continue;
        }
        assert!(now == refs[next].0, "round {round} (killed after {delay:?}): the folder holds neither the old set nor the new one: {:?}", now.keys());
        current = next;
        seen_new += 1;
    }
    // Some kills came after the swap: both outcomes were exercised.
    assert!(seen_new > 0 && seen_new < 40, "{seen_new} of 40 runs finished before their kill");
    let hidden: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".abc.new"))
        .collect();
    // Leftovers of killed runs are removed by the next run that swaps a set in.
    assert!(spawn(&["abc", "--steps", "20"], &out).wait().unwrap().success());
    let after: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".abc.new"))
        .collect();
    assert!(after.is_empty(), "before the last run {hidden:?}, after it {after:?}");
}
