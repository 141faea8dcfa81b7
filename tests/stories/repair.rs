//! The live snapshot repairs itself, and says so: `verify --repair` by hand, or the loop's
//! periodic check, rebuild a damaged snapshot and swap the link to the rebuilt copy while
//! readers keep reading.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::readers::Readers;
use crate::support::*;

/// What a reader running as root, or a person with an editor, does to a live snapshot.
fn damage_live(root: &Path) {
    let live = root.join("current");
    let file = live.join("dir1/file1.py");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, "edited in place\n").unwrap();
    let dir = fs::canonicalize(live.join("dir2")).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(dir.join("__pycache__")).unwrap();
    fs::write(dir.join("__pycache__/file2.cpython-311.pyc"), b"\x00stale").unwrap();
}

fn listing_repo(commits: usize) -> (Remote, Vec<String>) {
    let remote = Remote::new();
    let commits = remote.fast_commits("work", commits, 40);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    (remote, commits)
}

#[test]
fn verify_repair_rebuilds_a_damaged_live_snapshot_while_readers_read() {
    let (remote, commits) = listing_repo(1);
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &["--ref", "main"])
        .status
        .success());
    damage_live(&scratch.root());

    let out = on_root(&scratch, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("DAMAGED") && report.contains("verify --repair"),
        "{report}"
    );

    // Readers that open file after file through the link, as Airflow does: the damaged copy
    // is what they read before the swap, but no open may ever fail.
    let readers = Readers::start(&scratch.root(), 0, 2);
    let cache = scratch.cache().display().to_string();
    let out = on_root(&scratch, &["verify", "--repair", "--cache-dir", &cache]);
    let (passes, failures) = readers.finish();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    assert!(
        failures.is_empty(),
        "readers failed: {:?}",
        failures.first()
    );
    assert!(passes > 0, "the readers made progress");
    // Same commit, same name: the link is back on snapshots/<commit>.
    assert_eq!(assert_root_valid(&scratch.root()), commits[0]);
    assert_eq!(read_current(&scratch.root(), "dir1/file1.py"), "1\n");
    assert!(!scratch.root().join("current/dir2/__pycache__").exists());
    assert_eq!(on_root(&scratch, &["verify"]).status.code(), Some(0));
    // The damaged copy is retired, not deleted: a reader may still hold it until --grace.
    let retired: Vec<_> = fs::read_dir(scratch.root().join(SNAPSHOTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".retired-"))
        .collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    let log = String::from_utf8_lossy(&on_root(&scratch, &["log"]).stdout).into_owned();
    assert!(log.contains("repair"), "{log}");
    // GC deletes it once the grace period is over.
    assert!(on_root(&scratch, &["gc", "--grace", "0s"]).status.success());
    assert!(!fs::read_dir(scratch.root().join(SNAPSHOTS))
        .unwrap()
        .any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".retired-")));
}

#[test]
fn the_loop_repairs_the_live_snapshot_by_itself() {
    let (remote, commits) = listing_repo(1);
    let scratch = Scratch::new();
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--ref",
            "main",
            "--period",
            "50ms",
            "--verify-period",
            "200ms",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &commits[0], Duration::from_secs(30));
    damage_live(&scratch.root());
    wait_until(
        Duration::from_secs(30),
        "the loop repairs the snapshot",
        || daemon.logs().contains("repaired the live snapshot"),
    );
    assert!(
        daemon.logs().contains("the live snapshot is damaged"),
        "{}",
        daemon.logs()
    );
    assert_eq!(assert_root_valid(&scratch.root()), commits[0]);
    assert_eq!(on_root(&scratch, &["verify"]).status.code(), Some(0));
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
}

#[test]
fn verify_repair_fetches_a_commit_the_cache_let_go() {
    let (remote, commits) = listing_repo(3);
    let scratch = Scratch::new();
    for commit in &commits {
        remote.git(&["update-ref", "refs/heads/main", commit]);
        assert!(sync_once(&scratch, &remote.url(), &["--ref", "main"])
            .status
            .success());
    }
    // Rolled back to the first commit, which the shallow cache no longer holds.
    assert!(on_root(&scratch, &["rollback", &commits[0]])
        .status
        .success());
    damage_live(&scratch.root());
    let out = on_root(&scratch, &["verify", "--repair"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert_eq!(assert_root_valid(&scratch.root()), commits[0]);
    assert_eq!(on_root(&scratch, &["verify"]).status.code(), Some(0));
    let status: serde_json::Value =
        serde_json::from_slice(&on_root(&scratch, &["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["pinned"]["commit"],
        commits[0].as_str(),
        "still pinned"
    );
}

#[test]
fn a_repair_interrupted_with_the_link_on_the_fresh_copy_is_finished_by_the_loop() {
    let (remote, commits) = listing_repo(1);
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &["--ref", "main"])
        .status
        .success());
    // What a crash between steps 2 and 5 of a repair leaves: the link on the fresh copy.
    let snapshots = scratch.root().join(SNAPSHOTS);
    let fresh = snapshots.join(".repair").join(&commits[0]);
    fs::create_dir_all(fresh.parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(snapshots.join(&commits[0]))
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(copied.success());
    let link = scratch.root().join("current");
    let temp = scratch.root().join(".dagsnap-link-test");
    std::os::unix::fs::symlink(
        Path::new(SNAPSHOTS).join(".repair").join(&commits[0]),
        &temp,
    )
    .unwrap();
    fs::rename(&temp, &link).unwrap();
    assert_eq!(
        on_root(&scratch, &["status"]).status.code(),
        Some(0),
        "served meanwhile"
    );

    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--ref", "main", "--period", "50ms"],
    );
    wait_until(
        Duration::from_secs(30),
        "the loop finishes the repair",
        || fs::read_link(&link).is_ok_and(|t| t == Path::new(SNAPSHOTS).join(&commits[0])),
    );
    assert_eq!(assert_root_valid(&scratch.root()), commits[0]);
    wait_until(
        Duration::from_secs(30),
        "the fresh copy's name is retired",
        || !fresh.exists(),
    );
    drop(daemon);
}
