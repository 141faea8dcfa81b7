//! The incident that started the project (../shared/seed/): two pods ran the same git-sync
//! loop against one shared DAG directory while Airflow read it and wrote `__pycache__` into it.
//! The same schedule is run with two copies of that script, then with two dagsnap publishers
//! started by the script that replaces it (contrib/seed/git-sync.sh), with the same arguments.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

const SEED_SCRIPT: &str = include_str!("../fixtures/seed-git-sync.sh");
const REPLACEMENT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/seed/git-sync.sh");
const SCHEDULE: Duration = Duration::from_secs(15);

/// What the run looked like from outside.
#[derive(Debug, Default)]
struct Tally {
    /// Times a sync process exited (each one a container restart in Kubernetes).
    exits: usize,
    /// Lines the sync processes printed that report an error.
    error_lines: Vec<String>,
    /// Reader passes that found a DAG file missing or unreadable.
    broken_reads: usize,
    reads: usize,
    /// Publications in dagsnap's journal.
    published: usize,
}

/// An Airflow stand-in: every few milliseconds it opens the 40 DAG files that every commit
/// has, and writes bytecode into `__pycache__` like the Python import system does (errors
/// ignored, as Python ignores them).
fn airflow_reader(
    dags: PathBuf,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let complete =
                (0..40).all(|f| fs::read(dags.join(format!("dir{}/file{f}.py", f % 10))).is_ok());
            reads.fetch_add(1, Ordering::Relaxed);
            if !complete {
                broken.fetch_add(1, Ordering::Relaxed);
            }
            let cache = dags.join("dir0/__pycache__");
            let _ = fs::create_dir_all(&cache)
                .and_then(|_| fs::write(cache.join("file0.cpython-311.pyc"), b"bytecode"));
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// The remote advances every 300 ms through `commits` while `SCHEDULE` runs; returns the
/// commit it ends on.
fn advance_remote(remote: &Remote, commits: &[String]) -> String {
    let start = Instant::now();
    let mut next = 1;
    let mut last = commits[0].clone();
    while start.elapsed() < SCHEDULE {
        last = commits[next % commits.len()].clone();
        remote.git(&["update-ref", "refs/heads/main", &last]);
        next += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    last
}

/// A "container" running the seed script, restarted whenever it exits, as the kubelet would.
fn git_sync_container(
    script: PathBuf,
    url: String,
    dir: PathBuf,
    home: PathBuf,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // `-e` as in the script's shebang line (`#!/bin/sh -e`).
            let mut child = Group::spawn(
                Command::new("sh")
                    .arg("-e")
                    .arg(&script)
                    .args([url.as_str(), "main"])
                    .arg(&dir)
                    .args(["git.example.com", "22", "/dev/null", "0.2"])
                    .env("HOME", &home)
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped()),
            );
            let stderr = child.0.stderr.take().unwrap();
            let reader =
                std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
            while !stop.load(Ordering::Relaxed) {
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let exited_by_itself = child.0.try_wait().unwrap().is_some();
            drop(child);
            let output = reader.join().unwrap();
            let mut tally = tally.lock().unwrap();
            if exited_by_itself {
                tally.exits += 1;
            }
            tally.error_lines.extend(
                output
                    .lines()
                    .filter(|l| {
                        l.contains("fatal:")
                            || l.contains("error:")
                            || l.contains("warning: could not")
                    })
                    .map(str::to_string),
            );
        }
    })
}

fn fixture() -> (Remote, Vec<String>) {
    let remote = Remote::new();
    let commits = remote.fast_commits("work", 60, 40);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    (remote, commits)
}

fn run_seed_scripts(scratch: &Scratch, remote: &Remote, commits: &[String]) -> Tally {
    let dir = scratch.path("dags");
    // The script hard-codes the incident's mount point; point it at this test's directory.
    let script = scratch.path("git-sync.sh");
    fs::write(
        &script,
        SEED_SCRIPT.replace("/dags/", &format!("{}/", dir.display())),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (broken, reads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let containers: Vec<_> = (0..2)
        .map(|_| {
            git_sync_container(
                script.clone(),
                remote.url(),
                dir.clone(),
                scratch.tmp.path().to_path_buf(),
                stop.clone(),
                tally.clone(),
            )
        })
        .collect();
    let reader = airflow_reader(dir, stop.clone(), broken.clone(), reads.clone());
    let _ = advance_remote(remote, commits);
    stop.store(true, Ordering::Relaxed);
    for c in containers {
        c.join().unwrap();
    }
    reader.join().unwrap();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.broken_reads = broken.load(Ordering::Relaxed);
    tally.reads = reads.load(Ordering::Relaxed);
    tally
}

/// dagsnap in the incident's pods: the ConfigMap's script replaced by
/// `contrib/seed/git-sync.sh` (docs/migrating.md), called with the same arguments.
fn replacement_container(scratch: &Scratch, remote: &Remote, pod: usize) -> Daemon {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_dagsnap"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = scratch.path(&format!("pod-{pod}.log"));
    let mut cmd = Command::new("sh");
    cmd.arg("-e")
        .arg(REPLACEMENT_SCRIPT)
        .args([remote.url().as_str(), "main"]);
    cmd.arg(scratch.root())
        .args(["git.example.com", "22", "/dev/null", "0.2"]);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy().to_ascii_uppercase();
        if name.starts_with("DAGSNAP_") || name.ends_with("_PROXY") {
            cmd.env_remove(key);
        }
    }
    Daemon::start(
        cmd.env("PATH", path)
            .env("HOME", scratch.tmp.path())
            // Each pod has its own local disk.
            .env("DAGSNAP_CACHE_DIR", scratch.path(&format!("cache-{pod}")))
            .env("DAGSNAP_LOG_FORMAT", "text")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null()),
        log,
    )
}

fn run_dagsnap_publishers(scratch: &Scratch, remote: &Remote, commits: &[String]) -> Tally {
    let root = scratch.root();
    let daemons: Vec<Daemon> = (0..2)
        .map(|pod| replacement_container(scratch, remote, pod))
        .collect();
    daemons[0].wait_for_commit(&root, &commits[0], Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let (broken, reads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = airflow_reader(
        root.join("current"),
        stop.clone(),
        broken.clone(),
        reads.clone(),
    );
    let last = advance_remote(remote, commits);
    // The publishers keep up: they end on the remote's last commit.
    daemons[0].wait_for_commit(&root, &last, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let mut tally = Tally {
        broken_reads: broken.load(Ordering::Relaxed),
        reads: reads.load(Ordering::Relaxed),
        ..Tally::default()
    };
    for mut daemon in daemons {
        if daemon.child.try_wait().unwrap().is_some() {
            tally.exits += 1;
        }
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        if !daemon.wait(Duration::from_secs(30)).success() {
            tally.exits += 1;
        }
        tally.error_lines.extend(
            daemon
                .logs()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .map(str::to_string),
        );
    }
    // Every commit the link showed was published once, in the order the remote moved.
    let moves = crate::support::journal_commits(&root);
    assert!(
        moves.len() >= 10,
        "only {} publications: {moves:?}",
        moves.len()
    );
    assert_eq!(moves.last(), Some(&last));
    tally.published = moves.len();
    tally
}

fn summary(name: &str, tally: &Tally) -> String {
    format!(
        "{name}: {} exits (container restarts), {} error lines, {} of {} reader passes found DAG files missing; first errors: {:?}",
        tally.exits,
        tally.error_lines.len(),
        tally.broken_reads,
        tally.reads,
        tally.error_lines.iter().take(3).collect::<Vec<_>>()
    )
}

#[test]
fn the_seed_incident_breaks_git_sync_but_not_dagsnap() {
    let (remote, commits) = fixture();

    let baseline = run_seed_scripts(&Scratch::new(), &remote, &commits);
    eprintln!("{}", summary("seed git-sync.sh x2", &baseline));
    assert!(
        baseline.exits + baseline.error_lines.len() + baseline.broken_reads > 0,
        "the baseline no longer reproduces the incident: {}",
        summary("seed git-sync.sh x2", &baseline)
    );

    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let ours = run_dagsnap_publishers(&Scratch::new(), &remote, &commits);
    eprintln!("{}", summary("dagsnap x2", &ours));
    assert_eq!(ours.exits, 0, "{}", summary("dagsnap x2", &ours));
    assert!(
        ours.error_lines.is_empty(),
        "{}",
        summary("dagsnap x2", &ours)
    );
    assert_eq!(ours.broken_reads, 0, "{}", summary("dagsnap x2", &ours));
    assert!(ours.reads > 0 && ours.published > 0);
}
