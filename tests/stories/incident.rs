//! The incident runbook: what is live, go back, hold it there, check it, resume.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn rollback_while_two_sync_loops_run_holds_until_unpin() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let c1 = remote.commit(&[("dags/a.py", "v1\n")], "v1");
    let loops: Vec<Daemon> = (0..2)
        .map(|i| {
            spawn_loop_with(
                &scratch,
                &scratch.path(&format!("cache-{i}")),
                &remote.url(),
                &["--period", "50ms"],
            )
        })
        .collect();
    loops[0].wait_for_commit(&scratch.root(), &c1, Duration::from_secs(30));
    let c2 = remote.commit(&[("dags/a.py", "v2\n")], "v2");
    loops[0].wait_for_commit(&scratch.root(), &c2, Duration::from_secs(30));
    let c3 = remote.commit(&[("dags/a.py", "v3 broken\n")], "v3 breaks the scheduler");
    loops[0].wait_for_commit(&scratch.root(), &c3, Duration::from_secs(30));

    let out = on_root(
        &scratch,
        &["rollback", "--reason", "v3 breaks the scheduler"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("link moved from {c3}")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&c2), "{}", stdout(&out));
    assert_eq!(published(&scratch.root()), Some(c2.clone()));
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "v2\n");

    // The remote moves on; the loops fetch and build it, but the link stays pinned.
    remote.commit(&[("dags/a.py", "v4\n")], "v4");
    let c5 = remote.commit(&[("dags/a.py", "v5 fixed\n")], "v5 fixes it");
    wait_until(
        Duration::from_secs(30),
        "the loops built the newest commit",
        || scratch.root().join(SNAPSHOTS).join(&c5).is_dir(),
    );
    // A loop that saw the newest commit held the link on the pin, and says so.
    wait_until(Duration::from_secs(10), "a loop says it is pinned", || {
        loops
            .iter()
            .any(|d| d.log_lines(&["the root is pinned", &c5]) > 0)
    });
    assert_eq!(
        published(&scratch.root()),
        Some(c2.clone()),
        "the pin holds"
    );
    let status = on_root(&scratch, &["status", "--json"]);
    assert_eq!(json(&status)["pinned"]["commit"], c2.as_str());
    assert_eq!(json(&status)["pinned"]["reason"], "v3 breaks the scheduler");
    assert_eq!(json(&status)["cause"], "rollback");
    assert!(stdout(&on_root(&scratch, &["status"])).contains("PINNED:"));

    let out = on_root(&scratch, &["unpin", "--reason", "v5 is out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    loops[0].wait_for_commit(&scratch.root(), &c5, Duration::from_secs(30));
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "v5 fixed\n");

    let log = on_root(&scratch, &["log", "--json"]);
    let causes: Vec<String> = json(&log)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cause"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &causes[..3],
        &["sync", "unpin", "rollback"],
        "newest first: {causes:?}"
    );
    let text = stdout(&on_root(&scratch, &["log"]));
    assert!(
        text.contains("rollback -> link") && text.contains("v3 breaks the scheduler"),
        "{text}"
    );
    for daemon in &loops {
        assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
    }
}

#[test]
fn rollback_to_a_commit_that_is_not_retained_changes_nothing() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let commits = publish_versions(&remote, &scratch, 3, "v");
    // Evict the oldest.
    assert!(on_root(&scratch, &["gc", "--keep", "1", "--grace", "0s"])
        .status
        .success());
    let before = reader_view(&scratch.root());

    for wanted in ["deadbeef", commits[0].as_str()] {
        let out = on_root(&scratch, &["rollback", wanted]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("no retained snapshot matches"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(&commits[1][..12]),
            "lists what is retained: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("v 1"),
            "with subjects: {}",
            stderr(&out)
        );
    }
    // Three steps back is further than what is retained.
    let out = on_root(&scratch, &["rollback", "--steps", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no snapshot 3 step(s) back")
            && stderr(&out).contains("no longer retained"),
        "{}",
        stderr(&out)
    );

    assert_eq!(reader_view(&scratch.root()), before, "nothing changed");
    assert!(
        json(&on_root(&scratch, &["status", "--json"]))["pinned"].is_null(),
        "nothing pinned"
    );
}

#[test]
fn rollback_by_prefix_and_pin_of_the_current_snapshot() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let commits = publish_versions(&remote, &scratch, 3, "v");
    let out = on_root(&scratch, &["rollback", &commits[0][..7]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(commits[0].clone()));

    // A pinned root does not move on a one-time sync either.
    let newer = remote.commit(&[("a.py", "new\n")], "newer");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(commits[0].clone()));
    assert!(
        scratch.root().join(SNAPSHOTS).join(&newer).is_dir(),
        "built ahead for the unpin"
    );

    assert!(on_root(&scratch, &["unpin"]).status.success());
    assert!(stdout(&on_root(&scratch, &["unpin"])).contains("was not pinned"));
    let out = on_root(&scratch, &["pin", "--reason", "freeze for the release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("stays live"), "{}", stdout(&out));
    assert_eq!(
        json(&on_root(&scratch, &["status", "--json"]))["pinned"]["commit"],
        commits[0].as_str()
    );
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert_eq!(
        published(&scratch.root()),
        Some(commits[0].clone()),
        "still pinned"
    );
    assert!(on_root(&scratch, &["unpin"]).status.success());
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert_eq!(
        published(&scratch.root()),
        Some(newer),
        "follows the remote after unpin"
    );
}

#[test]
fn rolling_back_again_goes_further_back_and_never_forward() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let v = publish_versions(&remote, &scratch, 5, "v");
    // v1 is evicted: rollback steps over it and says so.
    let old = scratch.root().join(SNAPSHOTS).join(&v[1]);
    dagsnap::remove_tree(&old).unwrap();

    let out = on_root(
        &scratch,
        &["rollback", "--reason", "v4 breaks the scheduler"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()).as_ref(), Some(&v[3]));
    let out = on_root(&scratch, &["rollback", "--reason", "v3 is broken too"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        published(&scratch.root()).as_ref(),
        Some(&v[2]),
        "back, not forward to v4"
    );
    assert!(stdout(&out).contains("link moved from"), "{}", stdout(&out));

    // Two steps back from v2: v1 is gone, so v0, naming what was skipped and why.
    let out = on_root(&scratch, &["rollback", "--steps", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()).as_ref(), Some(&v[0]));
    assert!(
        stdout(&out).contains(&format!("skipped {}", &v[1][..12]))
            && stdout(&out).contains("no longer retained"),
        "{}",
        stdout(&out)
    );
    // Nothing before v0.
    let out = on_root(&scratch, &["rollback"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()).as_ref(), Some(&v[0]));

    // After unpin the loops follow the remote again (v4), and a later rollback steps back
    // through what was live since: v0 (just before v4), then v2.
    assert!(on_root(&scratch, &["unpin"]).status.success());
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert_eq!(published(&scratch.root()).as_ref(), Some(&v[4]));
    let out = on_root(&scratch, &["rollback", "--steps", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()).as_ref(), Some(&v[2]));
}

#[test]
fn log_limit_zero_shows_every_entry() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 3, "v");
    let out = on_root(&scratch, &["log", "--limit", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
    let out = on_root(&scratch, &["log", "--limit", "2"]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
}

#[test]
fn list_shows_retained_snapshots_newest_first_with_markers() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let commits = publish_versions(&remote, &scratch, 3, "release");
    assert!(on_root(&scratch, &["rollback"]).status.success());

    let out = on_root(&scratch, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = json(&out);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["commit"], commits[1].as_str(), "the live one first");
    assert_eq!(rows[0]["current"], true);
    assert_eq!(rows[0]["pinned"], true);
    assert_eq!(rows[1]["commit"], commits[2].as_str());
    assert!(
        !rows[1]["retired_at"].is_null(),
        "the rolled-back one was retired"
    );
    for field in [
        "short",
        "subject",
        "author",
        "commit_date",
        "published_at",
        "files",
        "bytes",
    ] {
        assert!(!rows[0][field].is_null(), "{field} missing: {}", rows[0]);
    }
    let text = stdout(&on_root(&scratch, &["list"]));
    assert!(text.lines().nth(1).unwrap().starts_with("*P"), "{text}");
    assert!(text.contains("release 2"), "{text}");
}

#[test]
fn verify_finds_flipped_bytes_lost_files_changed_modes_and_extras() {
    let remote = Remote::new();
    remote.commit(
        &[
            ("dags/a.py", "alpha\n"),
            ("dags/b.py", "beta\n"),
            ("dags/c.py", "gamma\n"),
            ("dags/d.py", "delta\n"),
        ],
        "four dags",
    );
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let clean = on_root(&scratch, &["verify"]);
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );
    assert!(stdout(&clean).contains("intact"), "{}", stdout(&clean));

    let snap = scratch.root().join("current");
    let dags = fs::canonicalize(snap.join("dags")).unwrap();
    let writable = |p: &std::path::Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap()
    };
    // A byte flipped in place, the mode restored afterwards.
    writable(&dags.join("a.py"), 0o644);
    fs::write(dags.join("a.py"), "alphA\n").unwrap();
    writable(&dags.join("a.py"), 0o444);
    // A file deleted, a mode changed, bytecode written by a reader.
    writable(&dags, 0o755);
    fs::remove_file(dags.join("b.py")).unwrap();
    writable(&dags.join("c.py"), 0o755);
    fs::create_dir(dags.join("__pycache__")).unwrap();
    fs::write(dags.join("__pycache__/d.cpython-311.pyc"), "bytecode").unwrap();
    writable(&dags, 0o555);

    for extra in [
        &[][..],
        &["--cache-dir", &scratch.cache().display().to_string()][..],
    ] {
        let out = dagsnap(scratch.tmp.path())
            .args(["verify", "--json", "--root"])
            .arg(scratch.root())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let report = json(&out);
        let paths = |key: &str| -> Vec<String> {
            report[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["path"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(paths("missing"), vec!["dags/b.py"], "{report}");
        let modified = paths("modified");
        assert!(
            modified.contains(&"dags/a.py".to_string()),
            "flipped byte: {report}"
        );
        assert!(
            modified.contains(&"dags/c.py".to_string()),
            "mode change: {report}"
        );
        assert!(
            modified.contains(&"dags/".to_string()) || modified.len() == 2,
            "{report}"
        );
        let extra_paths = paths("extra");
        assert!(
            extra_paths.contains(&"dags/__pycache__".to_string()),
            "{report}"
        );
        assert!(
            extra_paths.contains(&"dags/__pycache__/d.cpython-311.pyc".to_string()),
            "{report}"
        );
        assert!(
            !modified.contains(&"dags/d.py".to_string()),
            "the untouched file is fine: {report}"
        );
    }
    let text = stdout(&on_root(&scratch, &["verify"]));
    assert!(
        text.contains("DAMAGED") && text.contains("content differs"),
        "{text}"
    );
}

#[test]
fn a_full_commit_id_ref_publishes_once_and_never_fetches_again() {
    let remote = Remote::new();
    let fixed = remote.commit(&[("a.py", "fixed\n")], "fixed");
    remote.commit(&[("a.py", "later\n")], "later");
    let scratch = Scratch::new();
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--ref", &fixed, "--period", "20ms", "--log-level", "debug"],
    );
    daemon.wait_for_commit(&scratch.root(), &fixed, Duration::from_secs(30));
    // Take the remote away: a loop that kept fetching would now fail.
    fs::rename(&remote.dir, remote.dir.with_extension("gone")).unwrap();
    wait_until(Duration::from_secs(30), "many idle polls", || {
        daemon.logs().matches("up to date").count() >= 20
    });
    assert!(!daemon.logs().contains("sync failed"), "{}", daemon.logs());
    assert_eq!(published(&scratch.root()), Some(fixed));
}

#[test]
fn a_read_only_mount_serves_the_reading_commands_and_refuses_the_rest() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    fs::create_dir_all(&root).unwrap();
    let mounted = nix::unistd::geteuid().is_root()
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !mounted {
        skip(
            "a read-only tmpfs mount",
            "mounting one is not permitted here",
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(root.clone());
    publish_versions(&remote, &scratch, 2, "v");
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(remounted.success());

    for args in [
        &["list"][..],
        &["log"],
        &["status"],
        &["verify"],
        &["list", "--json"],
        &["status", "--json"],
    ] {
        let out = on_root(&scratch, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    for args in [&["rollback"][..], &["pin"], &["unpin"], &["gc"]] {
        let out = on_root(&scratch, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is read-only here"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_pinned_snapshot_deleted_by_hand_is_rebuilt_and_stays_pinned() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let pinned = remote.commit(&[("a.py", "pinned\n")], "pinned");
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert!(on_root(&scratch, &["pin", "--reason", "release freeze"])
        .status
        .success());
    dagsnap::remove_tree(&scratch.root().join(SNAPSHOTS).join(&pinned)).unwrap();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), pinned);
    assert_eq!(
        json(&on_root(&scratch, &["status", "--json"]))["pinned"]["commit"],
        pinned.as_str()
    );
}

#[test]
fn a_pin_without_a_reason_is_logged_without_an_empty_one() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    assert!(on_root(&scratch, &["pin"]).status.success());
    remote.commit(&[("a.py", "new\n")], "new");
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "50ms"]);
    wait_until(
        Duration::from_secs(30),
        "the loop says it is pinned",
        || daemon.logs().contains("the root is pinned"),
    );
    let line = daemon
        .logs()
        .lines()
        .find(|l| l.contains("the root is pinned"))
        .unwrap()
        .to_string();
    assert!(!line.contains("reason="), "{line}");
}

#[test]
fn a_non_root_operator_removes_a_snapshot_and_then_the_whole_root() {
    if !nix::unistd::geteuid().is_root() {
        skip("root, to hand the root to another uid", "this is not root");
        return;
    }
    let remote = Remote::new();
    let scratch = Scratch::new();
    let v = publish_versions(&remote, &scratch, 3, "v");
    let root = scratch.root();
    // The root belongs to the uid the sidecar runs as; the operator is that uid too.
    let chown = std::process::Command::new("chown")
        .args(["-R", "65533:65533"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(
        scratch.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let as_operator = |args: &[&str]| {
        dagsnap_via(
            &[
                "setpriv",
                "--reuid=65533",
                "--regid=65533",
                "--clear-groups",
            ],
            Path::new("/"),
        )
        .args(args)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap()
    };
    // The premise: read-only snapshots defeat rm -rf for anyone but root.
    let rm = std::process::Command::new("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "rm",
            "-rf",
        ])
        .arg(root.join(SNAPSHOTS).join(&v[0]))
        .output()
        .unwrap();
    assert!(
        !rm.status.success(),
        "rm -rf worked; the story's premise is wrong"
    );

    let out = as_operator(&["remove", &v[0][..8]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.join(SNAPSHOTS).join(&v[0]).exists());
    let out = as_operator(&["remove", &v[2]]);
    assert_one_clear_line(&out, 2, "is live");

    // Not while a sync loop of the root runs.
    let mut daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "1h", "--log-level", "debug"],
    );
    wait_until(Duration::from_secs(30), "the loop's first poll", || {
        daemon.logs().contains("up to date")
    });
    let out = as_operator(&["remove", "--all"]);
    assert_one_clear_line(&out, 2, "are running");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
    // The loop ran as root and wrote as root; hand it back.
    std::process::Command::new("chown")
        .args(["-R", "65533:65533"])
        .arg(&root)
        .status()
        .unwrap();

    let out = as_operator(&["remove", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "the root is empty"
    );
}
