//! git-sync's flags that dagsnap accepts with a meaning of its own, or none: each is taken,
//! explained once at start, and does what its note says.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use crate::git_sync::{assert_root_valid_at, run_git_sync, shown_commit, spawn_git_sync};
use crate::support::*;

/// `git-sync --one-time` of `remote` into the scratch root's `dags` link, with `args`.
fn git_sync_once(scratch: &Scratch, remote: &Remote, args: &[&str]) -> Output {
    let root = scratch.root().display().to_string();
    git_sync_via(&[], scratch.tmp.path())
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .envs([
            ("GITSYNC_REPO", remote.url().as_str()),
            ("GITSYNC_ROOT", root.as_str()),
            ("GITSYNC_LINK", "dags"),
        ])
        .arg("--one-time")
        .args(args)
        .output()
        .unwrap()
}

/// Refused at start as git-sync refuses bad settings: exit 2 and one line saying `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].contains(needle), "{needle:?} in:\n{err}");
}

/// An executable script in the scratch directory, run directly (as git-sync runs hooks).
fn script(scratch: &Scratch, name: &str, body: &str) -> String {
    let path = scratch.path(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_pre_publish_hook_that_hangs_past_its_timeout_keeps_the_commit_unpublished() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "x = 1\n")], "one");
    let scratch = Scratch::new();
    let started = scratch.path("started");
    let hook = script(
        &scratch,
        "hangs.sh",
        &format!("touch {}; exec sleep 600", started.display()),
    );
    let out = git_sync_once(
        &scratch,
        &remote,
        &[
            &format!("--pre-publish-exechook-command={hook}"),
            "--pre-publish-exechook-timeout=1s",
            "--pre-publish-exechook-backoff=1h",
        ],
    );
    let log = stderr(&out);
    assert!(
        !out.status.success(),
        "a rejected commit fails a one-time sync:\n{log}"
    );
    assert!(started.exists(), "the hook ran:\n{log}");
    assert!(
        log.contains("the check rejected this commit") && log.contains("timed out after 1s"),
        "{log}"
    );
    assert!(
        log.contains("--pre-publish-exechook-backoff is not used"),
        "the backoff's note:\n{log}"
    );
    assert!(
        fs::symlink_metadata(scratch.root().join("dags")).is_err(),
        "{commit} stays unpublished"
    );
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains(&format!("REJECTED:    {commit}")) && status.contains("timed out"),
        "{status}"
    );
}

#[test]
fn a_pre_publish_timeout_under_a_second_is_refused_at_start() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "x = 1\n")], "one");
    let scratch = Scratch::new();
    let out = git_sync_once(
        &scratch,
        &remote,
        &[
            "--pre-publish-exechook-command=/bin/true",
            "--pre-publish-exechook-timeout=10ms",
        ],
    );
    assert_refused(&out, "--pre-publish-exechook-timeout must be at least 1s");
    assert!(fs::symlink_metadata(scratch.root().join("dags")).is_err());
}

#[test]
fn git_gc_git_and_stale_worktree_timeout_are_taken_and_explained() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "x = 1\n")], "one");
    let scratch = Scratch::new();
    let out = git_sync_once(
        &scratch,
        &remote,
        &[
            "--git=/opt/git/bin/git",
            "--git-gc=aggressive",
            "--stale-worktree-timeout=30m",
        ],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
    for note in [
        "--git /opt/git/bin/git is not used: dagsnap fetches with its own git implementation",
        "--git-gc has nothing to do",
        "previous snapshots stay for 30m after they stop being live (--grace)",
    ] {
        assert!(log.contains(note), "{note:?} in:\n{log}");
    }

    // A mode git-sync does not know is refused as git-sync refuses it, and nothing changes.
    let out = git_sync_once(&scratch, &remote, &["--git-gc=sometimes"]);
    assert_refused(
        &out,
        "invalid flag: --git-gc must be one of \"auto\", \"always\", \"aggressive\", or \"off\"",
    );
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
}

#[test]
fn git_sync_s_period_wait_and_failure_budget_keep_their_meaning() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let url = remote.url();

    // v3's --wait (seconds, fractional) beats v4's --period.
    let mut daemon = spawn_git_sync(
        &scratch,
        &[],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
            ("GITSYNC_PERIOD", "1h"),
            ("GIT_SYNC_WAIT", "0.2"),
        ],
    );
    wait_until(Duration::from_secs(30), "the first publish", || {
        shown_commit(&scratch.root().join("dags")).as_deref() == Some(first.as_str())
    });
    let second = remote.commit(&[("a.py", "2\n")], "two");
    wait_until(
        Duration::from_secs(10),
        "the next poll, 0.2 s later",
        || shown_commit(&scratch.root().join("dags")).as_deref() == Some(second.as_str()),
    );
    assert!(
        daemon.logs().contains("--wait (for --period)"),
        "{}",
        daemon.logs()
    );

    // git-sync's default --max-failures is 0: the first failure ends the process, as in
    // git-sync, and what is published stays live.
    fs::rename(&remote.dir, remote.dir.with_extension("gone")).unwrap();
    let status = daemon.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    assert_eq!(
        daemon.logs().matches("sync failed").count() + daemon.logs().matches("giving up").count(),
        1,
        "{}",
        daemon.logs()
    );
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), second);

    // --max-failures 3 gives up at the third failure in a row, as git-sync does.
    let mut daemon = spawn_git_sync(
        &scratch,
        &["--max-failures=3", "--period=50ms"],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
            ("DAGSNAP_BACKOFF_MAX", "100ms"),
        ],
    );
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    let logs = daemon.logs();
    assert_eq!(
        logs.matches("sync failed; the published snapshot is unchanged")
            .count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("giving up after 3 failed sync(s)"), "{logs}");

    // -1 never gives up.
    let daemon = spawn_git_sync(
        &scratch,
        &["--max-failures=-1", "--period=50ms"],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
            ("DAGSNAP_BACKOFF_MAX", "100ms"),
        ],
    );
    wait_until(Duration::from_secs(30), "five failures", || {
        daemon.logs().matches("sync failed").count() >= 5
    });
    fs::rename(remote.dir.with_extension("gone"), &remote.dir).unwrap();
    let third = remote.commit(&[("a.py", "3\n")], "three");
    wait_until(Duration::from_secs(30), "recovery", || {
        shown_commit(&scratch.root().join("dags")).as_deref() == Some(third.as_str())
    });
}

#[test]
fn until_the_first_sync_init_period_and_init_max_failures_apply() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let hidden = remote.dir.with_extension("not-yet");
    fs::rename(&remote.dir, &hidden).unwrap();
    // A network that comes up late: retry every 100 ms (not the hour of --period, nor its
    // backoff), and give up after 4 failures in a row before the first success.
    let env = [
        ("GITSYNC_REPO", remote.url()),
        ("GITSYNC_ROOT", root.clone()),
        ("GITSYNC_LINK", "dags".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = spawn_git_sync(
        &scratch,
        &[
            "--period=1h",
            "--init-period=100ms",
            "--init-max-failures=4",
            "--max-failures=-1",
        ],
        &env,
    );
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert_eq!(
        logs.matches("sync failed; the published snapshot is unchanged")
            .count(),
        3,
        "{logs}"
    );
    assert!(logs.contains("retry_in=100ms"), "{logs}");
    assert!(logs.contains("giving up after 4 failed sync(s)"), "{logs}");

    // Once a sync succeeded, --max-failures applies: -1 never gives up.
    fs::rename(&hidden, &remote.dir).unwrap();
    let daemon = spawn_git_sync(
        &scratch,
        &[
            "--period=50ms",
            "--init-max-failures=2",
            "--max-failures=-1",
        ],
        &[&env[..], &[("DAGSNAP_BACKOFF_MAX", "100ms")]].concat(),
    );
    wait_until(Duration::from_secs(30), "the first sync", || {
        scratch.root().join("dags").exists()
    });
    fs::rename(&remote.dir, &hidden).unwrap();
    wait_until(
        Duration::from_secs(30),
        "five failures after the first success",
        || daemon.logs().matches("sync failed").count() >= 5,
    );
    assert!(!daemon.logs().contains("giving up"), "{}", daemon.logs());
}

#[test]
fn sync_on_signal_syncs_when_the_signal_arrives() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let daemon = spawn_git_sync(
        &scratch,
        &[
            "--period=1h",
            "--sync-on-signal=SIGUSR1",
            "--max-failures=-1",
            // git-sync's verbosity: 1 to 5 is dagsnap's debug level.
            "-v=2",
        ],
        &[
            ("GITSYNC_REPO", &remote.url()),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
        ],
    );
    wait_until(Duration::from_secs(30), "the first sync", || {
        shown_commit(&scratch.root().join("dags")).as_deref() == Some(first.as_str())
    });
    let second = remote.commit(&[("a.py", "2\n")], "two");
    // The loop planned its next poll an hour away (a debug line, which -v=2 shows).
    daemon.wait_for_lines(
        &["waiting for the next poll", "next_poll_in=1h"],
        1,
        Duration::from_secs(30),
    );
    assert_eq!(
        shown_commit(&scratch.root().join("dags")).as_deref(),
        Some(first.as_str()),
        "no poll for an hour"
    );
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_until(Duration::from_secs(30), "the signalled sync", || {
        shown_commit(&scratch.root().join("dags")).as_deref() == Some(second.as_str())
    });
}

#[test]
fn group_write_makes_the_root_s_records_writable_by_the_group_and_snapshots_stay_read_only() {
    use std::os::unix::fs::MetadataExt;
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    let out = run_git_sync(
        &scratch,
        &["--group-write", "--one-time"],
        &[
            ("GITSYNC_REPO", &remote.url()),
            ("GITSYNC_ROOT", root.to_str().unwrap()),
            ("GITSYNC_LINK", "dags"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in walkdir::WalkDir::new(root.join(".dagsnap"))
        .into_iter()
        .filter_map(Result::ok)
    {
        let meta = entry.metadata().unwrap();
        let path = entry.path();
        if path.starts_with(root.join(SNAPSHOTS).join(&commit)) {
            assert_eq!(meta.mode() & 0o222, 0, "{} is read-only", path.display());
        } else if !meta.file_type().is_symlink() && !path.starts_with(root.join(SNAPSHOTS)) {
            assert_eq!(
                meta.mode() & 0o020,
                0o020,
                "{} is group-writable ({:o})",
                path.display(),
                meta.mode()
            );
        }
    }
}
