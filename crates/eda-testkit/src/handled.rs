//! Bookkeeping for crash tests: a handler appends the number of each event it handled
//! to a log file, one write a line (a SIGKILL between two writes could tear a line that
//! the next process appends to); the test reads the logs back and checks that nothing
//! was lost and how much was handled more than once.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

/// Appends `n` to the log as one line, in one write.
pub fn record(log: &mut std::fs::File, n: u64) {
    log.write_all(format!("{n}\n").as_bytes())
        .expect("writing the handled log");
}

/// The numbers in a log written by [`record`] (none if it does not exist yet).
pub fn read(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

/// Checks that every number in `0..events` was handled, panicking with the first
/// missing ones, and returns how many handlings were repeats.
pub fn duplicates(seen: impl IntoIterator<Item = u64>, events: u64) -> u64 {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for n in seen {
        *counts.entry(n).or_default() += 1;
    }
    let missing: Vec<u64> = (0..events)
        .filter(|n| !counts.contains_key(n))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost events (first ones): {missing:?}");
    counts.values().map(|c| c - 1).sum()
}

/// Lets `child` run for `wait`, then SIGKILLs it and reaps it. `false` (and no kill)
/// when it exited on its own first.
pub async fn kill_after(child: &mut std::process::Child, wait: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < wait {
        if child.try_wait().expect("polling the child").is_some() {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if child.try_wait().expect("polling the child").is_some() {
        return false;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reaping the child");
    true
}
