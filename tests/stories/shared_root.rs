//! Several publishers on one root, as scheduler, web and worker pods run them on a shared
//! volume: coordination, ordering, retention, crashes and faults.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::readers::Readers;
use crate::support::*;

fn publishers_share_one_root(count: usize, readers: usize) {
    let remote = Remote::new();
    let commits = remote.fast_commits("work", 110, 40);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let scratch = Scratch::new();
    let root = scratch.root();
    let daemons: Vec<Daemon> = (0..count)
        .map(|i| {
            spawn_loop_with(
                &scratch,
                &scratch.path(&format!("cache-{i}")),
                &remote.url(),
                &[
                    "--ref", "main", "--period", "100ms", "--keep", "2", "--grace", "3s",
                ],
            )
        })
        .collect();
    daemons[0].wait_for_commit(&root, &commits[0], Duration::from_secs(60));
    let readers = Readers::start(&root, readers / 2, readers - readers / 2);

    // The remote advances every 300 ms for 30 s.
    let start = Instant::now();
    let mut next = 1;
    while start.elapsed() < Duration::from_secs(30) && next < commits.len() {
        remote.git(&["update-ref", "refs/heads/main", &commits[next]]);
        next += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let tip = &commits[next - 1];
    daemons[0].wait_for_commit(&root, tip, Duration::from_secs(60));
    let (passes, failures) = readers.finish();

    assert!(
        failures.is_empty(),
        "{} reader failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(passes > 0, "readers made progress");
    for (i, mut daemon) in daemons.into_iter().enumerate() {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "publisher {i} exited:\n{}",
            daemon.logs()
        );
        let logs = daemon.logs();
        assert!(
            !logs.contains("ERROR"),
            "publisher {i} logged an error:\n{logs}"
        );
        daemon.signal(Signal::SIGTERM);
        assert!(
            daemon.wait(Duration::from_secs(30)).success(),
            "publisher {i}:\n{}",
            daemon.logs()
        );
    }
    assert_eq!(assert_root_valid(&root), *tip);
    // Never backward: the link's moves follow the remote's order, whoever made them.
    let order: Vec<usize> = journal_commits(&root)
        .iter()
        .map(|c| commits.iter().position(|k| k == c).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "the link moved backward: positions {order:?}"
    );
    let retained = fs::read_dir(root.join(SNAPSHOTS)).unwrap().count();
    assert!(
        retained < next / 2,
        "retention kept {retained} of {next} snapshots"
    );
    let trash = root.join(".dagsnap/trash");
    assert!(
        !trash.exists() || fs::read_dir(&trash).unwrap().count() == 0,
        "trash emptied"
    );
}

#[test]
fn two_publishers_share_one_root_without_errors() {
    publishers_share_one_root(2, 4);
}

#[test]
fn four_publishers_share_one_root_without_errors() {
    publishers_share_one_root(4, 4);
}

/// Many pods on one volume (scheduler, web servers, workers): 8 publishers, 40 readers.
#[test]
fn eight_publishers_and_forty_readers_share_one_root_and_it_never_goes_backward() {
    publishers_share_one_root(8, 40);
}

#[test]
fn a_publisher_with_a_stale_view_never_moves_the_link_backward() {
    let remote = Remote::new();
    let c0 = remote.commit(&[("a.py", "0\n")], "c0");
    let scratch = Scratch::new();
    let root_path = scratch.root();
    assert!(
        sync_once_with(&scratch, &scratch.path("cache-a"), &remote.url(), &[])
            .status
            .success()
    );
    let root = dagsnap::Root::new(&root_path, Path::new("current")).unwrap();

    // Hold the root's lock, as a publisher in the middle of a swap would.
    let lock = root.lock(Duration::ZERO).unwrap();
    // Publisher A observes c1, builds it, and waits for the lock.
    let c1 = remote.commit(&[("a.py", "1\n")], "c1");
    let mut stale = spawn_once_in_background(&scratch, "cache-a", &remote.url());
    wait_until(Duration::from_secs(60), "A built c1", || {
        root_path.join(SNAPSHOTS).join(&c1).is_dir()
    });
    // Meanwhile the remote moves on and publisher B observes c2, later than A observed c1.
    let c2 = remote.commit(&[("a.py", "2\n")], "c2");
    let mut fresh = spawn_once_in_background(&scratch, "cache-b", &remote.url());
    wait_until(Duration::from_secs(60), "B built c2", || {
        root_path.join(SNAPSHOTS).join(&c2).is_dir()
    });
    // B wins the lock first: stand in for it through the library, with B's observation.
    let b_publication = dagsnap::Publication {
        commit: dagsnap::CommitId::parse(&c2).unwrap(),
        cause: dagsnap::Cause::Sync,
        observed_at: SystemTime::now(),
        answered_at: Some(SystemTime::now()),
        published_at: SystemTime::now(),
        host: "stand-in-for-b".into(),
        pid: 1,
        repo: remote.url(),
        ref_name: "refs/heads/main".into(),
        moved_link: true,
        reason: None,
    };
    root.publish(&lock, &b_publication).unwrap();
    drop(lock);

    let a = stale.wait(Duration::from_secs(60));
    let b = fresh.wait(Duration::from_secs(60));
    assert!(
        a.success() && b.success(),
        "A:\n{}\nB:\n{}",
        stale.logs(),
        fresh.logs()
    );
    assert_eq!(
        published(&root_path),
        Some(c2.clone()),
        "A must not replace c2 with its older c1"
    );
    assert!(
        stale
            .logs()
            .contains("another publisher already published a newer state"),
        "{}",
        stale.logs()
    );
    let journal: Vec<String> = root
        .records()
        .journal()
        .unwrap()
        .into_iter()
        .map(|p| p.commit.to_string())
        .collect();
    assert_eq!(journal, vec![c0, c2], "c1 was never published");
}

fn spawn_once_in_background(scratch: &Scratch, cache: &str, repo: &str) -> Daemon {
    spawn_loop_with(
        scratch,
        &scratch.path(cache),
        repo,
        &["--one-time", "--lock-timeout", "60s"],
    )
}

#[test]
fn kill_minus_9_anywhere_leaves_a_valid_root_that_converges() {
    use rand::Rng;
    let remote = Remote::new();
    let commits = remote.fast_commits("main", 31, 300);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let scratch = Scratch::new();
    let root = scratch.root();
    assert!(
        sync_once(&scratch, &remote.url(), &["--keep", "1", "--grace", "0s"])
            .status
            .success()
    );
    let mut rng = seeded_rng("kill_minus_9_anywhere");
    for (round, commit) in commits.iter().enumerate().skip(1) {
        remote.git(&["update-ref", "refs/heads/main", commit]);
        let mut daemon = spawn_loop(
            &scratch,
            &remote.url(),
            &["--period", "20ms", "--keep", "1", "--grace", "0s"],
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        daemon.signal(Signal::SIGKILL);
        daemon.wait(Duration::from_secs(10));
        if let Some(linked) = published(&root) {
            assert!(
                root.join(SNAPSHOTS).join(&linked).is_dir(),
                "round {round}: the link points at a missing snapshot after kill -9"
            );
        }
        let out = sync_once(&scratch, &remote.url(), &["--keep", "1", "--grace", "0s"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert_eq!(
            assert_root_valid(&root),
            *commit,
            "round {round}: converged"
        );
    }
}

/// A small tmpfs mounted at a path for the duration of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let ok = nix::unistd::geteuid().is_root()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_keeps_serving_and_recovers_by_itself() {
    let remote = Remote::new();
    let small = remote.commit(&[("dags/a.py", "small\n")], "small");
    let scratch = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&scratch.root(), "2m") else {
        skip("a tmpfs mount", "mounting one is not permitted here");
        return;
    };
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());

    // A commit too large for the volume: 4 MiB of incompressible data on a 2 MiB tmpfs.
    let big: String = (0..4 * 1024 * 1024 / 16)
        .map(|i| format!("{:016x}", (i as u64).wrapping_mul(0x9e3779b97f4a7c15)))
        .collect();
    let large = remote.commit(&[("dags/big.dat", &big)], "large");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the filesystem is full"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        assert_root_valid(&scratch.root()),
        small,
        "the current snapshot keeps serving"
    );
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "small\n");

    // The loop retries, and publishes once space returns.
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "50ms", "--backoff-max", "200ms"],
    );
    wait_until(Duration::from_secs(30), "failures on the full disk", || {
        daemon.logs().matches("sync failed").count() >= 2
    });
    assert_eq!(published(&scratch.root()), Some(small.clone()));
    tmpfs.resize("64m");
    daemon.wait_for_commit(&scratch.root(), &large, Duration::from_secs(60));
    assert_eq!(staging_dirs(&scratch.root()), Vec::<String>::new());
}

#[test]
fn a_publisher_for_another_repository_takes_the_root_over_and_the_old_one_stands_back() {
    let ours = Remote::new();
    let our_commit = ours.commit(&[("a.py", "ours\n")], "ours");
    let theirs = Remote::new();
    let their_commit = theirs.commit(&[("a.py", "theirs\n")], "theirs");
    let scratch = Scratch::new();
    let mut running = spawn_loop(&scratch, &ours.url(), &["--period", "100ms"]);
    running.wait_for_commit(&scratch.root(), &our_commit, Duration::from_secs(30));

    // Started later, another configuration is the one the root follows.
    let out = sync_once_with(&scratch, &scratch.path("other-cache"), &theirs.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(their_commit.clone()));
    assert!(
        stderr(&out).contains("follows this configuration from now on"),
        "{}",
        stderr(&out)
    );
    running.wait_for_lines(&["standing back"], 1, Duration::from_secs(10));
    // A new commit of the old configuration moves nothing.
    let newer = ours.commit(&[("a.py", "ours 2\n")], "ours 2");
    running.wait_for_lines(&["standing back"], 1, Duration::from_secs(10));
    let out = on_root(&scratch, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["repo"], theirs.url().as_str(), "{status}");
    let publishers = status["publishers"].as_array().unwrap();
    assert!(
        publishers.iter().any(|p| p["standing_back"] == true),
        "the old publisher is shown standing back: {status}"
    );
    assert_ne!(published(&scratch.root()), Some(newer));
    running.stop();

    // A finished rolling update: nobody follows the old configuration any more.
    let out = sync_once_with(&scratch, &scratch.path("third-cache"), &ours.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("follows this configuration from now on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn publishers_that_spell_one_source_differently_share_the_root() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let mut running = spawn_loop(
        &scratch,
        &remote.path(),
        &["--period", "1h", "--ref", "main"],
    );
    running.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    // The same repository as a file:// URL with a trailing slash, the same branch by its full
    // name: one configuration, not a conflict.
    let second = remote.commit(&[("a.py", "2\n")], "two");
    let out = sync_once_with(
        &scratch,
        &scratch.path("other-cache"),
        &format!("{}/", remote.url()),
        &["--ref", "refs/heads/main"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(second));
    running.signal(Signal::SIGTERM);
    assert!(running.wait(Duration::from_secs(30)).success());
}

#[test]
fn a_busy_root_lock_skips_cycles_with_a_warning_and_publishes_once_free() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let root = dagsnap::Root::new(&scratch.root(), Path::new("current")).unwrap();
    // Another publisher (or a wedged NFS lock) holds the root's lock.
    let held = root.lock(Duration::ZERO).unwrap();
    let second = remote.commit(&[("a.py", "2\n")], "two");
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "20ms", "--lock-timeout", "100ms"],
    );
    wait_until(Duration::from_secs(30), "a skipped cycle", || {
        daemon
            .logs()
            .contains("skipping this cycle; another publisher of this root is busy")
    });
    assert_eq!(
        published(&scratch.root()),
        Some(first),
        "nothing moves without the lock"
    );
    drop(held);
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    assert!(
        !daemon.logs().contains("ERROR"),
        "contention is not an error:\n{}",
        daemon.logs()
    );
}
