//! Every file dagsnap reads back is input: a damaged record degrades with a warning and never
//! stops publishing or an operator's command, and nothing planted under the root is published
//! as if dagsnap had built it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;

fn store(scratch: &Scratch) -> std::path::PathBuf {
    scratch.root().join(".dagsnap")
}

#[test]
fn a_damaged_state_file_stops_neither_publishing_nor_status() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    // The newest publication record, torn.
    let torn = store(&scratch).join("publications/99999999999999999999-torn.json");
    fs::write(&torn, "{\"commit\": tru").unwrap();

    let status = on_root(&scratch, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("commit:"));

    let next = remote.commit(&[("a.py", "next\n")], "next");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using the publication before it instead"),
        "{}",
        stderr(&out)
    );
    assert_eq!(assert_root_valid(&scratch.root()), next);
    assert!(
        !torn.exists(),
        "GC removed the damaged record after the publish"
    );
    assert!(
        !stderr(&out).contains("dagsnap rewrites it on the next publish"),
        "no promise of a repair that does not happen"
    );
}

#[test]
fn a_damaged_pin_holds_the_live_snapshot_until_unpin_releases_it() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let first = publish_versions(&remote, &scratch, 1, "v").remove(0);
    let pin = on_root(&scratch, &["pin", "--reason", "release window"]);
    assert!(pin.status.success(), "{}", stderr(&pin));
    fs::write(store(&scratch).join("pin.json"), b"\x00\x01garbage").unwrap();

    let next = remote.commit(&[("a.py", "next\n")], "next");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(first.clone()), "held");
    assert!(stderr(&out).contains("dagsnap unpin"), "{}", stderr(&out));

    let status = on_root(&scratch, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("PINNED") && text.contains("damaged"),
        "{text}"
    );

    let unpin = on_root(&scratch, &["unpin"]);
    assert_eq!(unpin.status.code(), Some(0), "{}", stderr(&unpin));
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
}

#[test]
fn an_invalid_byte_in_the_journal_costs_one_line_and_gc_removes_it() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let commits = publish_versions(&remote, &scratch, 3, "v");
    let journal = store(&scratch).join("journal.jsonl");
    let mut bytes = fs::read(&journal).unwrap();
    let first_line_end = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    bytes.splice(
        first_line_end..first_line_end,
        b"{\"commit\":\"\xff\xfe\"}\n".to_vec(),
    );
    fs::write(&journal, bytes).unwrap();

    let log = on_root(&scratch, &["log", "--json"]);
    assert_eq!(log.status.code(), Some(0), "{}", stderr(&log));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&log.stdout).unwrap();
    assert_eq!(entries.len(), 3);
    assert!(stderr(&log).contains("damaged"), "{}", stderr(&log));
    for command in [&["list"][..], &["gc"]] {
        let out = on_root(&scratch, command);
        assert_eq!(out.status.code(), Some(0), "{command:?}: {}", stderr(&out));
    }
    assert!(
        String::from_utf8(fs::read(&journal).unwrap()).is_ok(),
        "gc rewrote the journal without the damaged line"
    );
    let rollback = on_root(&scratch, &["rollback"]);
    assert_eq!(rollback.status.code(), Some(0), "{}", stderr(&rollback));
    assert_eq!(published(&scratch.root()).as_ref(), Some(&commits[1]));
}

#[test]
fn a_journal_past_its_size_limit_keeps_accepting_publications() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    let journal = store(&scratch).join("journal.jsonl");
    let line = fs::read(&journal).unwrap();
    let mut big = Vec::new();
    while big.len() < (1 << 20) + 4096 {
        big.extend_from_slice(&line);
        if big.len() > 1 << 19 && !big.contains(&0xff) {
            big.extend_from_slice(b"\xff\n");
        }
    }
    fs::write(&journal, &big).unwrap();

    for n in 0..3 {
        let commit = remote.commit(&[("a.py", &format!("{n}\n"))], &format!("after {n}"));
        let out = sync_once(&scratch, &remote.url(), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(assert_root_valid(&scratch.root()), commit);
    }
    assert!(fs::metadata(&journal).unwrap().len() < 1 << 20, "trimmed");
}

#[test]
fn a_directory_planted_under_a_commits_name_is_set_aside_and_rebuilt() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    let next = remote.commit(&[("a.py", "the real next\n")], "next");
    let planted = scratch.root().join(SNAPSHOTS).join(&next);
    fs::create_dir_all(&planted).unwrap();
    fs::write(planted.join("a.py"), "planted\n").unwrap();
    fs::write(planted.join("evil.py"), "import os\n").unwrap();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
    assert_eq!(read_current(&scratch.root(), "a.py"), "the real next\n");
    assert!(!scratch.root().join("current/evil.py").exists());
    assert!(stderr(&out).contains("moving aside"), "{}", stderr(&out));
}

#[test]
fn a_tampered_entry_list_cannot_share_a_file_from_outside_the_root() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let first = publish_versions(&remote, &scratch, 1, "v").remove(0);
    let outside = scratch.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "SECRET\n").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o444)).unwrap();

    // The next commit holds a file whose blob the tampered list claims to have at a path that
    // climbs out of the snapshot.
    let next = remote.commit(&[("copy.py", "copied\n")], "next");
    let blob = remote.git(&["rev-parse", &format!("{next}:copy.py")]);
    let entries = store(&scratch)
        .join("manifests")
        .join(format!("{first}.entries"));
    let mut list = fs::read(&entries).unwrap();
    list.extend_from_slice(format!("100644 {blob} 7 ../../../outside/secret\0").as_bytes());
    fs::write(&entries, list).unwrap();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
    assert_eq!(read_current(&scratch.root(), "copy.py"), "copied\n");
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
}

#[test]
fn a_file_edited_in_place_in_the_live_snapshot_is_not_shared_into_the_next() {
    let remote = Remote::new();
    remote.commit(
        &[("a.py", "aaaa\n"), ("b.py", "b\n"), ("c.py", "c\n")],
        "one",
    );
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    // Someone makes two files of the live snapshot writable and edits them: one keeps its size,
    // the other is put back read-only with another size.
    let live = scratch.root().join("current");
    for (name, content, mode) in [("a.py", "EVIL\n", 0o644), ("c.py", "EVIL!\n", 0o444)] {
        fs::set_permissions(live.join(name), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(live.join(name), content).unwrap();
        fs::set_permissions(live.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }

    let next = remote.commit(&[("b.py", "b2\n")], "two");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
    assert_eq!(read_current(&scratch.root(), "a.py"), "aaaa\n");
    assert_eq!(read_current(&scratch.root(), "c.py"), "c\n");
    let err = stderr(&out);
    assert_eq!(
        err.matches("changed on disk after it was published")
            .count(),
        1,
        "one warning: {err}"
    );
}

#[test]
fn a_link_directory_that_is_a_symlink_is_refused_and_status_sees_where_readers_arrive() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let elsewhere = scratch.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(scratch.root()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, scratch.root().join("dags")).unwrap();
    let out = sync_once(&scratch, &remote.url(), &["--link", "dags/current"]);
    assert_one_clear_line(&out, 2, "is a symlink");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written there"
    );

    // Published properly, then the link's directory is swapped for a symlink to a copy.
    fs::remove_file(scratch.root().join("dags")).unwrap();
    let out = sync_once(&scratch, &remote.url(), &["--link", "dags/current"]);
    assert!(out.status.success(), "{}", stderr(&out));
    fs::rename(scratch.root().join("dags"), elsewhere.join("dags")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("dags"), scratch.root().join("dags")).unwrap();
    let status = dagsnap(scratch.tmp.path())
        .args(["status", "--link", "dags/current", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("not at the snapshot"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A running loop refuses to move a link through it too.
    remote.commit(&[("a.py", "b\n")], "two");
    let out = sync_once(&scratch, &remote.url(), &["--link", "dags/current"]);
    assert_one_clear_line(&out, 2, "is a symlink");
    assert!(Path::new(&elsewhere.join("dags/current"))
        .symlink_metadata()
        .is_ok());
}

#[test]
fn rollback_refuses_a_snapshot_replaced_on_disk() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let commits = publish_versions(&remote, &scratch, 2, "v");
    let old = scratch.root().join(SNAPSHOTS).join(&commits[0]);
    dagsnap::remove_tree(&old).unwrap();
    fs::create_dir(&old).unwrap();
    fs::write(old.join("a.py"), "planted\n").unwrap();

    let out = on_root(&scratch, &["rollback"]);
    assert_one_clear_line(&out, 2, "cannot be trusted");
    let out = on_root(&scratch, &["rollback", &commits[0]]);
    assert_one_clear_line(&out, 2, "cannot be trusted");
    assert_eq!(published(&scratch.root()).as_ref(), Some(&commits[1]));
}
