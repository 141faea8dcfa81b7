//! Anything a restart would fix, the running loop fixes by itself: a deleted or damaged cache,
//! and a record from a clock that ran ahead.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, SystemTime};

use crate::support::*;

#[test]
fn a_cache_deleted_under_a_running_loop_is_re_created() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "100ms"]);
    daemon.wait_for_commit(&scratch.root(), &remote.head(), Duration::from_secs(30));

    // What a cleaner of /tmp does.
    fs::remove_dir_all(scratch.cache()).unwrap();
    let next = remote.commit(&[("a.py", "2\n")], "two");
    daemon.wait_for_commit(&scratch.root(), &next, Duration::from_secs(30));
    assert_eq!(read_current(&scratch.root(), "a.py"), "2\n");
    assert!(
        daemon.logs().contains("re-creating it"),
        "{}",
        daemon.logs()
    );
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
}

/// Overwrite everything between a pack's header and its trailer.
fn damage_packs(cache: &std::path::Path) {
    let packs = cache.join("repo.git/objects/pack");
    let mut damaged = 0;
    for entry in fs::read_dir(&packs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "pack") {
            let len = fs::metadata(&path).unwrap().len();
            let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.seek(SeekFrom::Start(12)).unwrap();
            file.write_all(&vec![0xa5; (len - 32) as usize]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no pack in {}", packs.display());
}

#[test]
fn a_damaged_pack_re_creates_the_cache_and_never_blames_the_ref() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n"), ("b.py", "unchanged\n")], "one");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    damage_packs(&scratch.cache());

    // A restart with a new commit: every file is read from the cache (--full-copy), and the
    // unchanged ones only exist in the damaged pack.
    let next = remote.commit(&[("a.py", "2\n")], "two");
    let out = sync_once(&scratch, &remote.url(), &["--full-copy"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(assert_root_valid(&scratch.root()), next);
    assert_eq!(read_current(&scratch.root(), "b.py"), "unchanged\n");
    assert!(err.contains("re-creating it and trying again"), "{err}");
    assert!(!err.contains("--ref"), "the ref is not to blame: {err}");

    // And under a running loop.
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "100ms", "--full-copy"],
    );
    wait_until(Duration::from_secs(30), "an idle poll", || {
        daemon.logs().contains("dagsnap sync starting")
    });
    damage_packs(&scratch.cache());
    let third = remote.commit(&[("a.py", "3\n")], "three");
    daemon.wait_for_commit(&scratch.root(), &third, Duration::from_secs(30));
    assert_eq!(read_current(&scratch.root(), "b.py"), "unchanged\n");
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
}

/// Write a latest-publication record as another host would, observed `ahead` in the future.
fn record_from_a_clock_ahead(scratch: &Scratch, host: &str, ahead: Duration) {
    let now = SystemTime::now();
    let record = serde_json::json!({
        "commit": "1111111111111111111111111111111111111111",
        "cause": "sync",
        "observed_at": humantime::format_rfc3339_nanos(now + ahead).to_string(),
        "published_at": humantime::format_rfc3339_nanos(now).to_string(),
        "host": host,
        "pid": 7,
        "repo": "elsewhere",
        "ref": "refs/heads/main",
        "moved_link": true,
    });
    // One file per publication, named by observation time (then publication time).
    let nanos = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    fs::write(
        scratch.root().join(format!(
            ".dagsnap/publications/{:020}-{:020}-{host}.json",
            nanos(now + ahead),
            nanos(now)
        )),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
}

#[test]
fn an_observation_from_a_clock_far_ahead_is_distrusted_and_named() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    record_from_a_clock_ahead(
        &scratch,
        "node-with-a-fast-clock",
        Duration::from_secs(3600),
    );
    let next = remote.commit(&[("a.py", "next\n")], "next");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
    let warning = stderr(&out)
        .lines()
        .find(|l| l.contains("WARN") && l.contains("future"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no warning: {}", stderr(&out)));
    assert!(warning.contains("node-with-a-fast-clock"), "{warning}");
}

#[test]
fn pin_and_unpin_reset_the_ordering_that_a_clock_slightly_ahead_set() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let first = publish_versions(&remote, &scratch, 1, "v").remove(0);
    // Within the tolerated skew: believed, so publishers defer to it...
    record_from_a_clock_ahead(&scratch, "node-a-little-ahead", Duration::from_secs(20));
    let next = remote.commit(&[("a.py", "next\n")], "next");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(first));

    // ...until an operator's pin and unpin, after which loops publish the latest commit at
    // their next poll, as `unpin` says.
    for command in ["pin", "unpin"] {
        let out = dagsnap(scratch.tmp.path())
            .args([command, "--root"])
            .arg(scratch.root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), next);
}
