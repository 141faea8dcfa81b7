//! Bad input: each case gives a clear one-line error, a non-zero exit, and leaves what is
//! already published untouched.

use std::fs;
use std::time::Duration;

use crate::support::*;

/// A root with one publication, whose reader view the bad input must leave alone.
fn published_root() -> (Remote, Scratch, String) {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    (remote, scratch, commit)
}

#[test]
fn an_unreachable_repository_fails_and_keeps_the_snapshot() {
    let (_remote, scratch, commit) = published_root();
    let before = reader_view(&scratch.root());
    let missing = scratch.path("gone.git").display().to_string();
    let out = sync_once_with(&scratch, &scratch.path("cache2"), &missing, &[]);
    assert_one_clear_line(&out, 1, "check the URL");
    assert_eq!(reader_view(&scratch.root()), before);
    assert_eq!(published(&scratch.root()), Some(commit));

    // A server that refuses connections, with a credential in the URL that must not leak.
    let out = sync_once(
        &Scratch::new(),
        "https://deploy:s3cr3t-t0ken@127.0.0.1:1/dags.git",
        &[],
    );
    assert_one_clear_line(&out, 1, "127.0.0.1:1/dags.git");
    assert!(!stderr(&out).contains("s3cr3t-t0ken"), "{}", stderr(&out));
}

#[test]
fn an_unknown_ref_names_what_exists() {
    let (remote, scratch, commit) = published_root();
    let before = reader_view(&scratch.root());
    let out = sync_once_with(
        &scratch,
        &scratch.path("c2"),
        &remote.url(),
        &["--ref", "no-such-branch"],
    );
    assert_one_clear_line(&out, 1, "ref 'no-such-branch' does not exist");
    assert!(
        stderr(&out).contains("refs/heads/main"),
        "lists what exists: {}",
        stderr(&out)
    );
    assert_eq!(reader_view(&scratch.root()), before);
    assert_eq!(published(&scratch.root()), Some(commit));

    let out = sync_once(&scratch, &remote.url(), &["--ref", "bad..name"]);
    assert_one_clear_line(&out, 2, "invalid ref name");
}

#[test]
fn a_root_that_is_a_file_is_refused() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::write(scratch.root(), "not a directory").unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "is not a directory");
    assert_eq!(
        fs::read_to_string(scratch.root()).unwrap(),
        "not a directory"
    );
}

/// A read-only filesystem (or, without root, a read-only directory) under the root.
struct ReadOnly {
    mount: Option<std::path::PathBuf>,
}

impl ReadOnly {
    /// Publish into a tmpfs at `root`, then make it read-only. None if mounting is impossible.
    fn mount_at(root: &std::path::Path) -> Option<ReadOnly> {
        fs::create_dir_all(root).unwrap();
        if !nix::unistd::geteuid().is_root() {
            return Some(ReadOnly { mount: None });
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| ReadOnly {
            mount: Some(root.to_path_buf()),
        })
    }

    fn seal(&self, root: &std::path::Path) {
        match &self.mount {
            Some(mount) => assert!(std::process::Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(mount)
                .status()
                .unwrap()
                .success()),
            None => {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(root, fs::Permissions::from_mode(0o555)).unwrap()
            }
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if let Some(mount) = &self.mount {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(mount)
                .status();
        }
    }
}

#[test]
fn a_root_that_is_not_writable_is_refused_and_keeps_serving() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let Some(read_only) = ReadOnly::mount_at(&scratch.root()) else {
        skip("a tmpfs mount", "mounting one is not permitted here");
        return;
    };
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    remote.commit(&[("a.py", "b\n")], "two");
    read_only.seal(&scratch.root());
    let before = fingerprint(&scratch.root());

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "is not writable");
    assert_eq!(fingerprint(&scratch.root()), before);
    assert_eq!(published(&scratch.root()), Some(commit));
}

#[test]
fn a_real_directory_where_the_link_goes_is_never_replaced() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::create_dir_all(scratch.root().join("current/dags")).unwrap();
    fs::write(scratch.root().join("current/dags/old.py"), "old\n").unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "is a real directory");
    assert_eq!(
        fs::read_to_string(scratch.root().join("current/dags/old.py")).unwrap(),
        "old\n"
    );
}

#[test]
fn a_root_full_of_a_previous_git_sync_checkout_is_refused() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::create_dir_all(scratch.root().join(".git")).unwrap();
    fs::write(scratch.root().join("dag.py"), "x\n").unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "dagsnap did not create (.git, dag.py)");
    assert!(scratch.root().join(".git").is_dir());
}

#[test]
fn a_link_to_somewhere_else_is_refused() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::create_dir_all(scratch.root()).unwrap();
    std::os::unix::fs::symlink("/etc", scratch.root().join("current")).unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "not a dagsnap snapshot");
    assert_eq!(
        fs::read_link(scratch.root().join("current")).unwrap(),
        std::path::Path::new("/etc")
    );
}

#[test]
fn a_malformed_duration_is_refused_before_anything_happens() {
    let scratch = Scratch::new();
    let out = sync_once(&scratch, "/nowhere", &["--period", "10 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid duration '10 parsecs'"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("like 10s, 1m30s or 500ms"),
        "{}",
        stderr(&out)
    );
    assert!(!scratch.root().exists(), "nothing was created");

    let out = dagsnap(scratch.tmp.path())
        .args(["sync", "--repo", "/nowhere", "--root"])
        .arg(scratch.root())
        .env("DAGSNAP_SYNC_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid duration 'soon'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_process_on_the_same_cache_is_refused_by_name() {
    let (remote, scratch, commit) = published_root();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    wait_until(Duration::from_secs(30), "the loop holds its cache", || {
        daemon.logs().contains("dagsnap sync starting")
    });
    std::thread::sleep(Duration::from_millis(200));

    // A one-time sync stands by for at most --sync-timeout, then names the cache's holder.
    let out = sync_once(&scratch, &remote.url(), &["--sync-timeout", "1s"]);
    assert_one_clear_line(&out, 2, "is in use by another dagsnap process");
    assert!(stderr(&out).contains("standing by"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&scratch.cache().display().to_string()),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--cache-dir"), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(commit));
}

#[test]
fn a_cache_inside_the_root_is_refused() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once_with(&scratch, &scratch.root().join("cache"), &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "is inside the root");
}

#[test]
fn an_abbreviated_commit_id_is_recognized_as_one() {
    let (remote, scratch, _) = published_root();
    let short = &remote.head()[..8];
    let out = sync_once_with(
        &scratch,
        &scratch.path("c2"),
        &remote.url(),
        &["--ref", short],
    );
    let line = assert_one_clear_line(&out, 1, "does not exist");
    assert!(line.contains("give all 40 hex digits"), "{line}");
}

#[test]
fn operator_commands_print_text_errors_without_a_terminal() {
    let scratch = Scratch::new();
    // As under `kubectl exec` without -t: no terminal, no --log-format.
    let out = dagsnap(scratch.tmp.path())
        .env_remove("DAGSNAP_LOG_FORMAT")
        .args(["status", "--root"])
        .arg(scratch.path("nowhere"))
        .output()
        .unwrap();
    let line = assert_one_clear_line(&out, 2, "is not a dagsnap root");
    assert!(!line.trim_start().starts_with('{'), "{line}");
    // JSON when asked for.
    let out = dagsnap(scratch.tmp.path())
        .env("DAGSNAP_LOG_FORMAT", "json")
        .args(["status", "--root"])
        .arg(scratch.path("nowhere"))
        .output()
        .unwrap();
    assert!(
        stderr(&out).trim_start().starts_with('{'),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_describes_each_command_s_own_flags() {
    let scratch = Scratch::new();
    let help = |args: &[&str]| {
        let out = dagsnap(scratch.tmp.path()).args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let status = help(&["status", "--help"]);
    assert!(!status.contains("created if missing"), "{status}");
    let sync = help(&["sync", "--help"]);
    for heading in [
        "Repository:",
        "Schedule:",
        "Credentials and trust:",
        "Retention:",
        "Logging (any command):",
    ] {
        assert!(sync.contains(heading), "{heading} in {sync}");
    }
}

#[test]
fn a_local_repository_of_another_user_says_why_git_refuses_it() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "root, to give the repository to another uid",
            "this is not root",
        );
        return;
    }
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&remote.dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = sync_once(&Scratch::new(), &remote.url(), &[]);
    let line = assert_one_clear_line(&out, 1, "dubious ownership");
    assert!(line.contains("safe.directory"), "{line}");
    assert!(
        !line.contains("check the URL"),
        "not blamed on the URL: {line}"
    );
}

#[test]
fn a_build_jobs_count_out_of_range_is_refused_saying_what_is_accepted() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    for bad in ["0", "1000", "many"] {
        let out = sync_once(&Scratch::new(), &remote.url(), &["--build-jobs", bad]);
        assert_one_clear_line(&out, 2, "is not a number of threads from 1 to 256");
    }
}
