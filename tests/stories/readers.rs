//! What readers see while publishers work.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::*;

/// A reader that resolves the link once per pass, as the design recommends: it must see all
/// of exactly one commit every time.
pub(crate) fn read_pass_resolving_once(root: &Path) -> Option<Result<usize, String>> {
    let target = fs::read_link(root.join("current")).ok()?;
    let snapshot: PathBuf = root.join(target);
    let listing = match fs::read_to_string(snapshot.join("LISTING")) {
        Ok(listing) => listing,
        Err(e) => {
            return Some(Err(format!(
                "LISTING unreadable in {}: {e}",
                snapshot.display()
            )))
        }
    };
    let expected: Vec<&str> = listing.lines().collect();
    let mut commit_number = None;
    for path in &expected {
        let content = match fs::read_to_string(snapshot.join(path)) {
            Ok(c) => c,
            Err(e) => {
                return Some(Err(format!(
                    "{path} unreadable in {}: {e}",
                    snapshot.display()
                )))
            }
        };
        match commit_number {
            None => commit_number = Some(content.clone()),
            Some(ref n) if *n != content => {
                return Some(Err(format!(
                    "mixed commits in one pass: {n:?} and {content:?}"
                )))
            }
            Some(_) => {}
        }
    }
    let on_disk = walkdir::WalkDir::new(&snapshot)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    if on_disk != expected.len() + 1 {
        return Some(Err(format!(
            "snapshot {} has {on_disk} files, its listing {} (+1)",
            snapshot.display(),
            expected.len()
        )));
    }
    Some(Ok(expected.len()))
}

/// Reader threads like Airflow's: some resolve the link once per pass and check they saw one
/// whole commit; others go through the link for every open and check no open ever fails.
pub(crate) struct Readers {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    pub(crate) fn start(root: &Path, resolving_once: usize, per_file: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for _ in 0..resolving_once {
            let (root, stop, passes, failures) = (
                root.to_path_buf(),
                stop.clone(),
                passes.clone(),
                failures.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match read_pass_resolving_once(&root) {
                        Some(Ok(_)) => {
                            passes.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => failures.lock().unwrap().push(e),
                        None => failures.lock().unwrap().push("the link is missing".into()),
                    }
                }
            }));
        }
        for _ in 0..per_file {
            let (root, stop, passes, failures) = (
                root.to_path_buf(),
                stop.clone(),
                passes.clone(),
                failures.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for f in 0..40 {
                        let path = root
                            .join("current")
                            .join(format!("dir{}/file{f}.py", f % 10));
                        if let Err(e) = fs::read_to_string(&path) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("open through the link: {}: {e}", path.display()));
                        }
                    }
                    passes.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Readers {
            stop,
            passes,
            failures,
            threads,
        }
    }

    /// Stop and return (passes, of either kind of reader; failures).
    pub(crate) fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.passes.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn readers_see_one_whole_commit_during_200_rapid_publishes() {
    let remote = Remote::new();
    let commits = remote.fast_commits("work", 200, 40);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "5ms", "--ref", "main"],
    );
    daemon.wait_for_commit(&root, &commits[0], Duration::from_secs(60));

    // Two readers resolve the link once per pass and check the whole tree; one goes through
    // the link for every open, like Airflow does: it may straddle a swap (the documented
    // limitation) but an open must never fail.
    let readers = Readers::start(&root, 2, 1);

    for commit in &commits[1..] {
        remote.git(&["update-ref", "refs/heads/main", commit]);
        daemon.wait_for_commit(&root, commit, Duration::from_secs(60));
    }
    let (passes, failures) = readers.finish();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());

    assert!(
        failures.is_empty(),
        "{} reader failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(passes > 0, "the readers made progress");
    assert_eq!(assert_root_valid(&root), commits[199]);
    let journal = fs::read_to_string(root.join(".dagsnap/journal.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 200, "one publication per commit");
}
