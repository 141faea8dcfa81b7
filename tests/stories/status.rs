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
    assert_eq!(json["ref"], "refs/heads/main");
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
