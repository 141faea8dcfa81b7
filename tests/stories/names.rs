//! A repository that `git clone` checks out on Linux is published, byte for byte as `git
//! archive` writes it; a path git refuses, or one the filesystem cannot hold, fails the publish
//! with the path named, and what is live stays live.

use std::process::Command;

use crate::support::*;

/// Names Windows reserves or forbids, and other bytes that are ordinary on Linux. Timestamped
/// SQL files (`a:b.sql`) are common in DAG repositories.
fn linux_names() -> Vec<TreeFile> {
    vec![
        TreeFile::file("aux.py", "print('aux')\n"),
        TreeFile::file("con.py", "print('con')\n"),
        TreeFile::file("nul", "nul\n"),
        TreeFile::file("a:b.sql", "select 1;\n"),
        TreeFile::file("sql/2024-01-01T00:00:00.sql", "select 2;\n"),
        TreeFile::file("x.", "trailing dot\n"),
        TreeFile::file("q?.py", "question\n"),
        TreeFile::file("*", "star\n"),
        TreeFile::file("trailing ", "trailing space\n"),
        TreeFile::file("back\\slash", "backslash\n"),
        TreeFile::file("tab\tname", "tab\n"),
        TreeFile::file("new\nline", "newline\n"),
        TreeFile::file("COM1/LPT1.txt", "devices as directories\n"),
        TreeFile::file(b"latin1-\xe9.py".to_vec(), "not UTF-8\n"),
        TreeFile::executable("bin/run:me", "#!/bin/sh\necho hi\n"),
        TreeFile::symlink("link-to-aux", "aux.py"),
    ]
}

#[test]
fn names_linux_allows_are_published_byte_for_byte_as_git_archive_writes_them() {
    let remote = Remote::new();
    let commit = remote.commit_tree(&linux_names(), "names Windows would refuse");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);

    let archived = scratch.path("archive");
    git_archive(&remote, &commit, &archived);
    let published = tree_of(&scratch.root().join("current/"));
    let expected = tree_of(&archived);
    assert_eq!(
        published.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(published, expected);

    // The next update of such a repository shares those files, as any other.
    let mut files = linux_names();
    files.push(TreeFile::file("new.py", "new\n"));
    let second = remote.commit_tree(&files, "one more file");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), second);
    assert!(stderr(&out).contains("published"), "{}", stderr(&out));
}

#[test]
fn a_path_git_refuses_to_check_out_fails_the_publish_naming_it() {
    let remote = Remote::new();
    let good = remote.commit_tree(&[TreeFile::file("dags/a.py", "a\n")], "good");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let before = reader_view(&scratch.root());

    for (path, shown) in [
        (&b".GIT/config"[..], "'.GIT'"),
        (b"dags/git~1/hooks/x", "'dags/git~1'"),
        (b"dags/.git./x", "'dags/.git.'"),
        (b"dags/x\\.git", "'dags/x\\.git'"),
    ] {
        let bad = remote.commit_tree(
            &[
                TreeFile::file("dags/a.py", "a\n"),
                TreeFile::file(path, "[core]\n\thooksPath = /tmp\n"),
            ],
            "a .git alias",
        );
        // git itself refuses to check it out on Linux.
        let clone = scratch.path(&format!("clone-{bad}"));
        let git_clone = Command::new("git")
            .args(["clone", "-q", &remote.url()])
            .arg(&clone)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            !git_clone.status.success()
                || String::from_utf8_lossy(&git_clone.stderr).contains("invalid path"),
            "git checks {shown:?} out: the story's premise is wrong"
        );

        let out = sync_once(&scratch, &remote.url(), &[]);
        let line = assert_one_clear_line(&out, 1, shown);
        assert!(line.contains("Rename it in the repository"), "{line}");
        assert_eq!(
            reader_view(&scratch.root()),
            before,
            "what is live stays live"
        );
        assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    }
}

#[test]
fn a_path_too_long_for_the_volume_is_named_in_the_error() {
    let remote = Remote::new();
    let good = remote.commit_tree(&[TreeFile::file("a.py", "a\n")], "good");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());

    // A single name over NAME_MAX (255 bytes).
    let long_name = format!("dags/{}.py", "n".repeat(300));
    remote.commit_tree(
        &[
            TreeFile::file("a.py", "a\n"),
            TreeFile::file(long_name.as_str(), "x\n"),
        ],
        "a long name",
    );
    let out = sync_once(&scratch, &remote.url(), &[]);
    let line = assert_one_clear_line(&out, 1, &long_name);
    assert!(line.contains("ENAMETOOLONG"), "{line}");
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));

    // A path that fits in git (and under PATH_MAX on its own) but not under the root.
    let deep = (0..20)
        .map(|i| format!("{i:02}{}", "d".repeat(199)))
        .collect::<Vec<_>>()
        .join("/")
        + "/dag.py";
    assert!(deep.len() < 4096 && deep.len() > 4020);
    remote.commit_tree(
        &[
            TreeFile::file("a.py", "a\n"),
            TreeFile::file(deep.as_str(), "x\n"),
        ],
        "a deep path",
    );
    let out = sync_once(&scratch, &remote.url(), &[]);
    let line = assert_one_clear_line(&out, 1, &deep);
    assert!(
        line.contains("ENAMETOOLONG") && line.contains("shorter --root"),
        "{line}"
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    assert_eq!(staging_dirs(&scratch.root()), Vec::<String>::new());
}
