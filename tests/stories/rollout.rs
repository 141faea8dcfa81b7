//! Changing `--ref` (or `--repo`) on a shared root is a rolling update like any other: the new
//! configuration's publisher takes the root over, the old one stands back until it is stopped,
//! readers never see the old branch again once the new one is live, and a configuration started
//! by mistake is undone by starting the right one again.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::servers::free_port;
use crate::support::*;

/// Commit `n` on `branch` (created from `main` if new); its id.
fn commit_on(remote: &Remote, branch: &str, n: usize) -> String {
    if branch != "main" && remote.git(&["branch", "--list", branch]).is_empty() {
        remote.git(&["branch", branch, "main"]);
    }
    if branch != "main" || !remote.git(&["branch", "--list", "main"]).is_empty() {
        remote.git(&["checkout", "-q", branch]);
    }
    remote.commit(
        &[("dags/a.py", &format!("{branch} {n}\n"))],
        &format!("{branch} {n}"),
    )
}

/// A publisher loop of `--ref branch` with its own cache and HTTP port; its base URL.
fn publisher(scratch: &Scratch, remote: &Remote, branch: &str, cache: &str) -> (Daemon, String) {
    let bind = format!("127.0.0.1:{}", free_port());
    let daemon = spawn_loop_with(
        scratch,
        &scratch.path(cache),
        &remote.url(),
        &["--ref", branch, "--period", "100ms", "--http-bind", &bind],
    );
    (daemon, format!("http://{bind}"))
}

/// Readers looking at the link every few milliseconds: the commits they saw, in order.
struct Readers {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(link: PathBuf) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let shown = fs::read_link(&link).ok().and_then(|target| {
                        // A complete tree behind it, or it does not count as shown.
                        fs::read_to_string(link.join("dags/a.py")).ok()?;
                        Some(target.file_name()?.to_string_lossy().into_owned())
                    });
                    seen.lock().unwrap().push(shown);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Readers {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Option<String>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_rolling_update_to_another_branch_completes_by_itself_while_commits_arrive_on_both() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (mut main_commits, mut next_commits) = (vec![commit_on(&remote, "main", 0)], Vec::new());
    next_commits.push(commit_on(&remote, "next", 0));
    let (mut old, old_base) = publisher(&scratch, &remote, "main", "cache-old");
    old.wait_for_commit(&scratch.root(), &main_commits[0], Duration::from_secs(30));
    let readers = Readers::start(scratch.root().join("current"));

    // The new pod starts with --ref next while the old one runs and commits keep coming.
    let (new, _new_base) = publisher(&scratch, &remote, "next", "cache-new");
    let mut n = 1;
    let mut switched = false;
    while !switched || n < 12 {
        main_commits.push(commit_on(&remote, "main", n));
        next_commits.push(commit_on(&remote, "next", n));
        n += 1;
        std::thread::sleep(Duration::from_millis(150));
        switched = published(&scratch.root()).is_some_and(|c| next_commits.contains(&c));
        assert!(
            n < 200,
            "the new configuration never went live:\n{}",
            new.logs()
        );
    }
    // The old publisher stands back, says so once, and its metric and status say it too.
    old.wait_for_lines(
        &["standing back: a publisher of another configuration"],
        1,
        Duration::from_secs(10),
    );
    assert_eq!(
        old.log_lines(&["standing back: a publisher of another configuration"]),
        1
    );
    let (_, metrics) = http("GET", &format!("{old_base}/metrics"), &[], b"");
    assert_eq!(metric(&metrics, "dagsnap_standing_back"), 1.0, "{metrics}");
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains("next"),
        "status says what the root follows:\n{status}"
    );
    assert!(
        new.logs()
            .contains("follows this configuration from now on"),
        "{}",
        new.logs()
    );

    // The old pod goes away as a rolling update ends: exit 0, nothing left to undo.
    old.stop();
    let last = commit_on(&remote, "next", n);
    new.wait_for_commit(&scratch.root(), &last, Duration::from_secs(30));
    let seen = readers.finish();

    assert!(seen.iter().all(Option::is_some), "the link never dangled");
    let first_next = seen
        .iter()
        .position(|c| next_commits.contains(c.as_ref().unwrap()) || c.as_ref() == Some(&last))
        .expect("readers saw the new branch");
    assert!(
        seen[..first_next]
            .iter()
            .all(|c| main_commits.contains(c.as_ref().unwrap())),
        "before the switch readers saw the old branch only"
    );
    let back = seen[first_next..]
        .iter()
        .filter(|c| main_commits.contains(c.as_ref().unwrap()))
        .count();
    assert_eq!(
        back, 0,
        "readers never saw the old branch again after the new one"
    );
}

#[test]
fn a_configuration_started_by_mistake_is_undone_by_starting_the_right_one_again() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let main = commit_on(&remote, "main", 0);
    let next = commit_on(&remote, "next", 0);
    let (mut right, _) = publisher(&scratch, &remote, "next", "cache-right");
    right.wait_for_commit(&scratch.root(), &next, Duration::from_secs(30));

    // Someone starts a publisher of main on this root: visible at once.
    let (mut mistake, mistake_base) = publisher(&scratch, &remote, "main", "cache-mistake");
    mistake.wait_for_commit(&scratch.root(), &main, Duration::from_secs(30));
    assert!(
        mistake
            .logs()
            .contains("follows this configuration from now on"),
        "{}",
        mistake.logs()
    );
    right.wait_for_lines(&["standing back"], 1, Duration::from_secs(10));

    // Starting the right configuration again takes the root back; the mistake stands back.
    right.stop();
    let (mut right, _) = publisher(&scratch, &remote, "next", "cache-right");
    right.wait_for_commit(&scratch.root(), &next, Duration::from_secs(30));
    mistake.wait_for_lines(&["standing back"], 1, Duration::from_secs(10));
    let standing_back = || {
        let (_, metrics) = http("GET", &format!("{mistake_base}/metrics"), &[], b"");
        (
            metric(&metrics, "dagsnap_standing_back"),
            metric(&metrics, "dagsnap_syncs_total{result=\"standing-back\"}"),
        )
    };
    let (gauge, cycles) = standing_back();
    assert_eq!(gauge, 1.0);
    // A commit on main moves nothing now: two more cycles of the mistake stand back.
    let later = commit_on(&remote, "main", 1);
    wait_until(Duration::from_secs(10), "two cycles standing back", || {
        standing_back().1 >= cycles + 2.0
    });
    assert_eq!(published(&scratch.root()), Some(next.clone()));
    let newer_next = commit_on(&remote, "next", 1);
    right.wait_for_commit(&scratch.root(), &newer_next, Duration::from_secs(30));
    assert_ne!(published(&scratch.root()), Some(later));
    mistake.stop();
    right.stop();
}
