//! A running loop outlives damage to everything it keeps: each file and directory under the
//! root's store and the private cache is corrupted, truncated, deleted or made unreadable, one
//! at a time, and each time the loop still reaches the remote's tip within a few cycles while a
//! reader never sees a dangling link or a mix of two commits.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::readers::Readers;
use crate::support::*;

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Garbage over the content of a file; a garbage file dropped into a directory.
    Corrupt,
    /// A file cut to zero bytes (directories are left alone).
    Truncate,
    Delete,
    /// Mode 000 (root ignores it, as the test suite's CI user is root; kept for other users).
    Unreadable,
}

fn damage(path: &Path, how: Damage) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let is_dir = meta.is_dir();
    let result = match (how, is_dir) {
        (Damage::Corrupt, false) => {
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| {
                    let len = meta.len().max(1);
                    f.seek(SeekFrom::Start(len / 3))?;
                    f.write_all(&vec![0xa5; (len - len / 3) as usize])
                })
        }
        (Damage::Corrupt, true) => fs::write(path.join("garbage.tmp"), b"\x00\xffgarbage"),
        (Damage::Truncate, false) => fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0)),
        (Damage::Truncate, true) => Ok(()),
        (Damage::Delete, false) => fs::remove_file(path),
        (Damage::Delete, true) => dagsnap::remove_tree(path).map_err(|e| e.source),
        (Damage::Unreadable, _) => fs::set_permissions(path, fs::Permissions::from_mode(0o000)),
    };
    // A file the loop replaced meanwhile is fine; anything else is the story's own bug.
    if let Err(e) = result {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "{}: {e}",
            path.display()
        );
    }
}

/// Every path under `dir`, relative, shallowest first, without the insides of snapshots (their
/// directories themselves are targets).
fn targets(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            !e.path()
                .parent()
                .is_some_and(|p| p.ends_with("snapshots") || p.ends_with("trash"))
        })
        .filter_map(Result::ok)
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

#[test]
fn a_loop_reaches_the_tip_while_its_store_and_cache_are_damaged_one_file_at_a_time() {
    let remote = Remote::new();
    let commits = remote.fast_commits("work", 400, 12);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "50ms",
            "--backoff-max",
            "200ms",
            "--ref",
            "main",
            "--keep",
            "2",
            // Long enough for a reader's pass (readers keep their files), short enough that
            // retired snapshots are collected, and the trash used, during the story.
            "--grace",
            "20s",
        ],
    );
    daemon.wait_for_commit(&root, &commits[0], Duration::from_secs(60));
    let mut next = 1;
    let advance = |daemon: &Daemon, next: &mut usize| {
        remote.git(&["update-ref", "refs/heads/main", &commits[*next]]);
        daemon.wait_for_commit(&root, &commits[*next], Duration::from_secs(30));
        *next += 1;
    };
    // Some history first: retired snapshots, trash, several manifests.
    for _ in 0..3 {
        advance(&daemon, &mut next);
    }
    let readers = Readers::start(&root, 1, 0);

    let store = root.join(".dagsnap");
    let cache = scratch.cache();
    let mut targets: Vec<PathBuf> = targets(&store).into_iter().map(|p| store.join(p)).collect();
    targets.extend(targets_of(&cache));
    let as_root = nix::unistd::geteuid().is_root();
    let mut rounds = 0;
    for target in &targets {
        for how in [
            Damage::Corrupt,
            Damage::Truncate,
            Damage::Delete,
            Damage::Unreadable,
        ] {
            if matches!(how, Damage::Unreadable) && !as_root {
                continue;
            }
            // Deleting the live snapshot (or what holds it) is the story breaking readers, not
            // dagsnap: a snapshot deleted by hand is its own story.
            let live = store.join("snapshots").join(published(&root).unwrap());
            if *target == live || (matches!(how, Damage::Delete) && live.starts_with(target)) {
                continue;
            }
            damage(target, how);
            rounds += 1;
            advance(&daemon, &mut next);
        }
    }

    let (passes, failures) = readers.finish();
    eprintln!("{rounds} rounds of damage, {passes} reader passes");
    assert!(
        failures.is_empty(),
        "{} reader failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        passes > 0 && rounds > 60,
        "passes {passes}, rounds {rounds}"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.logs()
    );
    assert_eq!(assert_root_valid(&root), commits[next - 1]);
}

fn targets_of(dir: &Path) -> Vec<PathBuf> {
    targets(dir).into_iter().map(|p| dir.join(p)).collect()
}
