//! `dagsnap status`: what is live, for people and machines.

use crate::support::*;

#[test]
fn status_shows_what_is_live_in_text_and_json() {
    let remote = Remote::new();
    let commit = remote.commit(
        &[("dags/a.py", "a\n"), ("dags/b.py", "bb\n")],
        "add two dags",
    );
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());

    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        commit.as_str(),
        "add two dags",
        "Ada Operator",
        "commit date:",
        "published:",
        " ago)",
        "2 files",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["commit"], commit.as_str());
    assert_eq!(json["subject"], "add two dags");
    assert_eq!(json["published"], true);
    assert_eq!(json["complete"], true);
    assert_eq!(json["files"], 2);
    assert_eq!(json["bytes"], 5);
    assert_eq!(json["ref"], "HEAD", "what the loops follow");
    assert_eq!(json["resolved_ref"], "refs/heads/main");
    for field in ["author", "commit_date", "published_at", "age_seconds"] {
        assert!(!json[field].is_null(), "{field} missing: {json}");
    }
}

#[test]
fn status_of_a_root_with_nothing_published_says_so_and_fails() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.root().join(".dagsnap")).unwrap();
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing published yet"));

    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--root"])
        .arg(scratch.path("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a dagsnap root"),
        "{}",
        stderr(&out)
    );
}

fn status_of(scratch: &Scratch, json: bool) -> std::process::Output {
    let mut cmd = dagsnap(scratch.tmp.path());
    cmd.args(["status", "--root"]).arg(scratch.root());
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn status_shows_the_ref_the_loops_follow_and_the_pin_apart_from_it() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let v = publish_versions(&remote, &scratch, 2, "v");
    let status: serde_json::Value =
        serde_json::from_slice(&status_of(&scratch, true).stdout).unwrap();
    assert_eq!(status["ref"], "HEAD");
    assert_eq!(status["resolved_ref"], "refs/heads/main");

    let rollback = dagsnap(scratch.tmp.path())
        .args(["rollback", "--reason", "bad", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(rollback.status.success(), "{}", stderr(&rollback));
    let status: serde_json::Value =
        serde_json::from_slice(&status_of(&scratch, true).stdout).unwrap();
    assert_eq!(status["commit"], v[0].as_str());
    assert_eq!(status["ref"], "HEAD", "still what the loops follow");
    assert_eq!(status["resolved_ref"], "refs/heads/main");
    assert_eq!(status["cause"], "rollback");
    assert_eq!(status["pinned"]["commit"], v[0].as_str());
    let text = String::from_utf8(status_of(&scratch, false).stdout).unwrap();
    assert!(
        text.contains("ref:         HEAD (refs/heads/main)"),
        "{text}"
    );
    assert!(text.contains("PINNED:"), "{text}");
}

#[test]
fn status_says_when_only_the_link_is_missing_and_how_it_comes_back() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 2, "v");
    std::fs::remove_file(scratch.root().join("current")).unwrap();
    let out = status_of(&scratch, false);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is missing, but 2 snapshot(s) are retained") && text.contains("rollback"),
        "{text}"
    );
    assert!(!text.contains("nothing published yet"), "{text}");
    // What it says works.
    let out = dagsnap(scratch.tmp.path())
        .args(["rollback", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status_of(&scratch, false).status.code(), Some(0));
}

#[test]
fn operator_commands_find_the_link_the_loops_recorded() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    // git-sync style: an absolute --link inside the root.
    let link = scratch.root().join("dags/repo");
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--link", &link.display().to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("../.dagsnap/snapshots").join(&commit)
    );
    // No --link: status finds it.
    let out = status_of(&scratch, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["link"], link.display().to_string());
    assert_eq!(status["files"], 1);
    assert!(String::from_utf8_lossy(&status_of(&scratch, false).stdout).contains("1 file, 2 bytes"));

    // An absolute --link off the root's volume (sharing only / with it) is refused.
    let out = sync_once(&scratch, &remote.url(), &["--link", "/elsewhere/repo"]);
    assert_one_clear_line(&out, 2, "must share a directory with it other than /");
}

#[test]
fn status_on_a_read_only_mount_sees_the_running_publishers() {
    if !nix::unistd::geteuid().is_root() {
        return skip("root, for a read-only bind mount", "this is not root");
    }
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "200ms"]);
    daemon.wait_for_commit(&scratch.root(), &commit, std::time::Duration::from_secs(30));
    // Readers' pods mount the root read-only; asking who publishes must work there too.
    let root = scratch.root().display().to_string();
    let out = dagsnap_via(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind -o ro "$1" "$1" && exec "$2" status --json --root "$1""#,
            "sh",
            &root,
        ],
        scratch.tmp.path(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["publishers"][0]["running"], true, "{json}");
    assert_eq!(json["publishers"][0]["pid"], daemon.child.id());
}
