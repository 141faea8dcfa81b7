//! Retention: what GC keeps, what it deletes, and what it never touches.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use crate::support::*;

fn gc(scratch: &Scratch, args: &[&str]) -> std::process::Output {
    dagsnap(scratch.tmp.path())
        .arg("gc")
        .arg("--root")
        .arg(scratch.root())
        .args(args)
        .output()
        .unwrap()
}

fn snapshots(scratch: &Scratch) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(scratch.root().join(SNAPSHOTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn gc_keeps_the_current_the_newest_and_the_recent_and_deletes_the_rest() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let published_commits = publish_versions(&remote, &scratch, 6, "v");
    assert_eq!(
        snapshots(&scratch).len(),
        6,
        "the defaults (keep 5, grace 10m) kept everything"
    );

    // Everything was live within the hour: a one-hour grace keeps it all.
    let out = gc(&scratch, &["--keep", "1", "--grace", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshots(&scratch).len(), 6);

    // --keep counts what can be rolled back to, besides the current snapshot.
    let out = gc(&scratch, &["--keep", "1", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected = published_commits[4..].to_vec();
    expected.sort();
    assert_eq!(
        snapshots(&scratch),
        expected,
        "the current and the one before it remain"
    );
    assert_eq!(assert_root_valid(&scratch.root()), published_commits[5]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed 4 snapshot(s)"), "{stdout}");
    for gone in &published_commits[..4] {
        assert!(
            stdout.contains(gone.as_str()),
            "{gone} listed as removed: {stdout}"
        );
        assert!(!scratch
            .root()
            .join(".dagsnap/manifests")
            .join(format!("{gone}.json"))
            .exists());
    }

    // keep 0 still keeps the current snapshot.
    assert!(gc(&scratch, &["--keep", "0", "--grace", "0s"])
        .status
        .success());
    assert_eq!(snapshots(&scratch), vec![published_commits[5].clone()]);
    assert_eq!(assert_root_valid(&scratch.root()), published_commits[5]);
}

/// A lease as the Airflow bundle writes it: `leases/<commit>.<holder>.json`, renamed into place.
fn lease(scratch: &Scratch, commit: &str, holder: &str, expires_at: i64) {
    let leases = scratch.root().join(".dagsnap/leases");
    fs::create_dir_all(&leases).unwrap();
    let name = format!("{commit}.{holder}.json");
    let temp = leases.join(format!(".tmp-{name}"));
    fs::write(
        &temp,
        format!(r#"{{"commit": "{commit}", "holder": "{holder}", "expires_at": {expires_at}}}"#),
    )
    .unwrap();
    fs::rename(&temp, leases.join(&name)).unwrap();
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn gc_keeps_a_snapshot_a_worker_leases_until_the_lease_ends() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let v = publish_versions(&remote, &scratch, 4, "v");
    // A worker runs a DAG of v0 for another hour; one that ran v1 finished (its lease ended).
    lease(&scratch, &v[0], "worker-1.4242", now_seconds() + 3600);
    lease(&scratch, &v[1], "worker-2.77", now_seconds() - 10);

    let out = gc(&scratch, &["--keep", "0", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected = vec![v[0].clone(), v[3].clone()];
    expected.sort();
    assert_eq!(
        snapshots(&scratch),
        expected,
        "the current snapshot and the leased one stay; the rest goes"
    );
    let leases = scratch.root().join(".dagsnap/leases");
    assert!(leases.join(format!("{}.worker-1.4242.json", v[0])).exists());
    assert!(
        !leases.join(format!("{}.worker-2.77.json", v[1])).exists(),
        "an ended lease is removed"
    );

    // The run ends: the worker's lease runs out, and the next collection deletes v0.
    lease(&scratch, &v[0], "worker-1.4242", now_seconds() - 1);
    let out = gc(&scratch, &["--keep", "0", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshots(&scratch), vec![v[3].clone()]);
    assert_eq!(assert_root_valid(&scratch.root()), v[3]);
}

#[test]
fn gc_never_follows_a_symlink_out_of_the_store() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious.txt"), "keep me\n").unwrap();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).unwrap();

    let remote = Remote::new();
    std::os::unix::fs::symlink(outside.path(), remote.dir.join("escape")).unwrap();
    let with_link = remote.commit(&[("a.py", "1\n")], "symlink to outside");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    fs::remove_file(remote.dir.join("escape")).unwrap();
    remote.commit(&[("a.py", "2\n")], "no symlink");
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());

    let out = gc(&scratch, &["--keep", "0", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !snapshots(&scratch).contains(&with_link),
        "the snapshot with the symlink was deleted"
    );
    assert_eq!(
        fs::read_to_string(outside.path().join("precious.txt")).unwrap(),
        "keep me\n"
    );
    let mode = fs::metadata(outside.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "permissions outside the store untouched");
}

#[test]
fn gc_removes_staging_directories_abandoned_by_dead_publishers_on_any_host() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let store = scratch.root().join(SNAPSHOTS);
    let old = store.join(format!(
        ".staging-scheduler-7f9c.ns.svc.1.{}.00000000000000aa",
        now - 7200
    ));
    let fresh = store.join(format!(".staging-web-5d2b.1.{now}.00000000000000bb"));
    for dir in [&old, &fresh] {
        fs::create_dir_all(dir.join("dags")).unwrap();
        fs::write(dir.join("dags/x.py"), "x").unwrap();
        fs::set_permissions(dir.join("dags"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    let out = gc(&scratch, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !old.exists(),
        "a two-hour-old staging directory from another host is removed"
    );
    assert!(
        fresh.exists(),
        "a fresh one may belong to a live publisher and stays"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 abandoned staging"));

    // A publisher that dies mid-build on a small volume need not hold its space for an hour.
    let stalled = store.join(format!(
        ".staging-worker-9.1.{}.00000000000000cc",
        now - 600
    ));
    fs::create_dir_all(stalled.join("dags")).unwrap();
    let out = gc(&scratch, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stalled.exists(), "ten minutes is within the default hour");
    let out = gc(&scratch, &["--staging-max-age", "5m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stalled.exists(), "--staging-max-age 5m removes it");
    assert!(fresh.exists(), "the fresh one stays");
}

#[test]
fn a_non_root_publisher_retires_its_read_only_snapshots() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "root, to run the publisher as another uid",
            "this is not root",
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let remote = Remote::new();
    let scratch = Scratch::new();
    for dir in [remote.dir.parent().unwrap(), scratch.tmp.path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for dir in [scratch.root(), scratch.cache()] {
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65533), Some(65533)).unwrap();
    }
    let gitconfig = scratch.path("gitconfig");
    std::fs::write(&gitconfig, "[safe]\n\tdirectory = *\n").unwrap();
    let publish = || {
        dagsnap_via(
            &[
                "setpriv",
                "--reuid=65533",
                "--regid=65533",
                "--clear-groups",
            ],
            std::path::Path::new("/"),
        )
        .args([
            "sync",
            "--one-time",
            "--keep",
            "1",
            "--grace",
            "0s",
            "--repo",
            &remote.url(),
        ])
        .arg("--root")
        .arg(scratch.root())
        .arg("--cache-dir")
        .arg(scratch.cache())
        // The repository belongs to root; git serves it to another uid only if told it is safe.
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .output()
        .unwrap()
    };
    let mut last = String::new();
    for n in 0..4 {
        last = remote.commit(&[("a.py", &format!("{n}\n"))], &format!("v{n}"));
        let out = publish();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("could not remove old snapshots"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(assert_root_valid(&scratch.root()), last);
    let snapshots = std::fs::read_dir(scratch.root().join(SNAPSHOTS))
        .unwrap()
        .count();
    assert_eq!(
        snapshots, 2,
        "the live one and one for rollback; nothing in the trash"
    );
}
