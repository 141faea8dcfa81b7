//! `--ref`: what each kind of ref publishes.

use crate::support::*;

#[test]
fn unset_ref_follows_the_remote_head_even_when_it_moves_to_another_branch() {
    let remote = Remote::new();
    let on_main = remote.commit(&[("a.py", "main\n")], "on main");
    remote.git(&["checkout", "-q", "-b", "other"]);
    let on_other = remote.commit(&[("a.py", "other\n")], "on other");
    remote.git(&["checkout", "-q", "main"]);
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(on_main));

    remote.git(&["symbolic-ref", "HEAD", "refs/heads/other"]);
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(on_other));
}

#[test]
fn a_branch_is_followed() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "main\n")], "on main");
    remote.git(&["checkout", "-q", "-b", "release"]);
    let release = remote.commit(&[("a.py", "release\n")], "on release");
    remote.git(&["checkout", "-q", "main"]);
    remote.commit(&[("a.py", "main 2\n")], "main moves on");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &["--ref", "release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(release.clone()));
    assert_eq!(read_current(&scratch.root(), "a.py"), "release\n");

    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &["--ref", "refs/heads/release"]);
    assert!(
        out.status.success(),
        "full ref names work too: {}",
        stderr(&out)
    );
    assert_eq!(assert_root_valid(&scratch.root()), release);
    assert_eq!(read_current(&scratch.root(), "a.py"), "release\n");
}

#[test]
fn a_lightweight_tag_is_published() {
    let remote = Remote::new();
    let tagged = remote.commit(&[("a.py", "1.0\n")], "release 1.0");
    remote.git(&["tag", "v1.0"]);
    remote.commit(&[("a.py", "later\n")], "later");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &["--ref", "v1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(tagged));
}

#[test]
fn an_annotated_tag_is_peeled_to_its_commit() {
    let remote = Remote::new();
    let tagged = remote.commit(&[("a.py", "2.0\n")], "release 2.0");
    remote.git(&["tag", "-a", "v2.0", "-m", "version 2.0"]);
    remote.commit(&[("a.py", "later\n")], "later");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &["--ref", "v2.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        published(&scratch.root()),
        Some(tagged),
        "the link names the commit, not the tag object"
    );
    assert_eq!(read_current(&scratch.root(), "a.py"), "2.0\n");
}

#[test]
fn a_full_commit_id_publishes_that_commit() {
    let remote = Remote::new();
    let old = remote.commit(&[("a.py", "old\n")], "old");
    remote.commit(&[("a.py", "new\n")], "new");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &["--ref", &old]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(old));
    assert_eq!(read_current(&scratch.root(), "a.py"), "old\n");
}

#[test]
fn a_branch_wins_over_a_tag_of_the_same_name() {
    let remote = Remote::new();
    let tagged = remote.commit(&[("a.py", "tag\n")], "tagged");
    remote.git(&["tag", "prod"]);
    remote.git(&["checkout", "-q", "-b", "prod"]);
    let branch = remote.commit(&[("a.py", "branch\n")], "branch");
    remote.git(&["checkout", "-q", "main"]);
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &["--ref", "prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(branch));
    assert!(stderr(&out).contains("ambiguous"), "{}", stderr(&out));

    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &["--ref", "refs/tags/prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(tagged));
}
