//! The private cache over a long life: it stays shallow and bounded.

use std::sync::atomic::AtomicBool;

use dagsnap::{Cache, Remote as Source, Target};

use crate::support::*;

fn cache_bytes(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn the_cache_stays_shallow_and_bounded_across_1000_updates() {
    let remote = Remote::new();
    let commits = remote.fast_commits("main", 1000, 5);
    let scratch = Scratch::new();
    let source = Source::new(
        &remote.url(),
        Target::parse(Some("main")).unwrap(),
        1,
        Default::default(),
    )
    .unwrap();
    let mut cache = Cache::open(&scratch.cache(), &source, &scratch.root()).unwrap();
    let progress = gix::progress::tree::Root::new();
    let interrupt = AtomicBool::new(false);
    let pack_dir = scratch.cache().join("repo.git/objects/pack");
    let (mut max_packs, mut max_bytes, mut first_bytes) = (0, 0, 0);
    // Re-creating the cache (a full fetch of the tip) makes a new repository directory.
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(scratch.cache().join("repo.git"))
            .unwrap()
            .ino()
    };
    let mut first_inode = None;
    for (i, commit) in commits.iter().enumerate() {
        remote.git(&["update-ref", "refs/heads/main", commit]);
        let seen = cache.update(&source, &progress, &interrupt).unwrap();
        assert_eq!(seen.commit.to_string(), *commit, "update {i}");
        let packs = std::fs::read_dir(&pack_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pack")
            })
            .count();
        let bytes = cache_bytes(&scratch.cache());
        if i == 0 {
            first_bytes = bytes;
            first_inode = Some(inode());
        }
        assert_eq!(
            Some(inode()),
            first_inode,
            "update {i}: the cache was re-created (its packs are consolidated instead)"
        );
        max_packs = max_packs.max(packs);
        max_bytes = max_bytes.max(bytes);
    }
    assert!(max_packs <= 49, "packs accumulated: {max_packs}");
    assert!(
        max_bytes < 64 * first_bytes.max(16 * 1024),
        "the cache grew to {max_bytes} bytes (first fetch: {first_bytes})"
    );
    let tip = commits.last().unwrap();
    let history = git(
        &scratch.cache().join("repo.git"),
        &["rev-list", "--count", tip],
    );
    assert_eq!(history, "1", "still shallow after 1000 updates");
    eprintln!("1000 updates: at most {max_packs} packs, at most {max_bytes} bytes (first fetch {first_bytes})");
}
