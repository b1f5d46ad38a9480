//! After the whole suite: no secret the suite hands a watchdog appears in any line that any
//! watchdog child logged, at the most verbose level (`common::LOG_LEVEL`).
//!
//! The logs are the suite's, in `common::log_dir()`; `.ci/test` empties that directory, runs
//! the suite, then runs this. Run alone, with no logs, it fails rather than pass on nothing.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

#[test]
#[ignore = "runs after the whole suite: .ci/test calls it"]
fn no_secret_appears_in_any_log_line_of_the_suite() {
    let dir = common::log_dir();
    let run_first = "run the whole suite first: `cargo test`, then this with `-- --ignored` (.ci/test does both)";
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "no watchdog log directory {}: {e}; {run_first}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no watchdog logs in {}; {run_first}",
        dir.display()
    );

    let secrets = common::secrets::all();
    let (mut lines, mut reloads) = (0usize, 0usize);
    let mut leaks = Vec::new();
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        for (n, line) in text.lines().enumerate() {
            lines += 1;
            reloads += usize::from(line.contains("secret reload"));
            for secret in secrets.iter().filter(|s| line.contains(s.as_str())) {
                leaks.push(format!("{}:{}: {secret:?}", file.display(), n + 1));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in the logs ({} lines):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    assert!(
        lines > 0,
        "{} watchdog logs in {}, all empty",
        files.len(),
        dir.display()
    );
    // The rotation tests log the most secret-adjacent lines: their logs must be among these.
    assert!(
        reloads > 0,
        "no secret reload was logged in {} files: did tests/secrets.rs run? {run_first}",
        files.len()
    );
    eprintln!(
        "{lines} lines in {} watchdog logs checked for {} secrets",
        files.len(),
        secrets.len()
    );
}
