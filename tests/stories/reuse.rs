//! Snapshots share unchanged files by hard link; sharing must never make a snapshot disagree
//! with its commit, whatever the history does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

fn verify(scratch: &Scratch, commit: &str) -> serde_json::Value {
    let out = dagsnap(scratch.tmp.path())
        .args(["verify", "--json", commit, "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(out.status.success(), "{commit} does not verify: {report}");
    report
}

/// Apply one random change of every kind the reuse logic has to get right.
fn random_change(rng: &mut StdRng, repo: &Path, step: usize) -> &'static str {
    let files: Vec<String> = walkdir::WalkDir::new(repo)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().strip_prefix(repo).unwrap().display().to_string())
        .collect();
    let pick = |rng: &mut StdRng| files[rng.gen_range(0..files.len())].clone();
    let path = |p: &str| repo.join(p);
    let kind = if files.len() < 6 {
        0
    } else {
        rng.gen_range(0..8)
    };
    match kind {
        0 => {
            let dir = format!("d{}", rng.gen_range(0..4));
            // The directory may have become a file in an earlier step.
            let p = if path(&dir).is_file() {
                format!("new_{step}.py")
            } else {
                format!("{dir}/new_{step}.py")
            };
            fs::create_dir_all(path(&p).parent().unwrap()).unwrap();
            fs::write(path(&p), format!("added at {step}\n")).unwrap();
            "add"
        }
        1 => {
            fs::remove_file(path(&pick(rng))).unwrap();
            "delete"
        }
        2 => {
            let p = pick(rng);
            if fs::symlink_metadata(path(&p))
                .unwrap()
                .file_type()
                .is_symlink()
            {
                fs::remove_file(path(&p)).unwrap();
            }
            fs::write(path(&p), format!("modified at {step}\n")).unwrap();
            "modify"
        }
        3 => {
            let p = pick(rng);
            let meta = fs::symlink_metadata(path(&p)).unwrap();
            if meta.file_type().is_symlink() {
                return "noop";
            }
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                0o644
            } else {
                0o755
            };
            fs::set_permissions(path(&p), fs::Permissions::from_mode(mode)).unwrap();
            "mode"
        }
        4 => {
            let (p, target) = (pick(rng), pick(rng));
            fs::remove_file(path(&p)).unwrap();
            std::os::unix::fs::symlink(format!("/elsewhere/{target}"), path(&p)).unwrap();
            "file->symlink"
        }
        5 => {
            // A file becomes a directory of the same name.
            let p = pick(rng);
            fs::remove_file(path(&p)).unwrap();
            fs::create_dir_all(path(&p)).unwrap();
            fs::write(
                path(&p).join("inner.py"),
                format!("was a file until {step}\n"),
            )
            .unwrap();
            "file->dir"
        }
        6 => {
            // A directory becomes a file of the same name.
            let dirs: Vec<String> = files
                .iter()
                .filter_map(|f| Path::new(f).parent().map(|d| d.display().to_string()))
                .filter(|d| !d.is_empty())
                .collect();
            if dirs.is_empty() {
                return "noop";
            }
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            fs::remove_dir_all(path(&d)).unwrap();
            fs::write(path(&d), format!("was a directory until {step}\n")).unwrap();
            "dir->file"
        }
        _ => {
            // Same content at a new path: a rename keeps the blob, so it may be shared.
            let from = pick(rng);
            if fs::symlink_metadata(path(&from))
                .unwrap()
                .file_type()
                .is_symlink()
            {
                return "noop";
            }
            let to = format!("moved_{step}/{step}.py");
            fs::create_dir_all(repo.join(format!("moved_{step}"))).unwrap();
            fs::rename(path(&from), path(&to)).unwrap();
            "rename"
        }
    }
}

#[test]
fn every_snapshot_of_a_random_history_verifies_against_its_commit() {
    let remote = Remote::new();
    for i in 0..12 {
        let p = format!("d{}/f{i}.py", i % 4);
        fs::create_dir_all(remote.dir.join(format!("d{}", i % 4))).unwrap();
        fs::write(remote.dir.join(&p), format!("initial {i}\n")).unwrap();
    }
    remote.commit_all("initial");
    let scratch = Scratch::new();
    let keep_all = ["--keep", "100", "--grace", "1h"];
    assert!(sync_once(&scratch, &remote.url(), &keep_all)
        .status
        .success());

    let mut rng = StdRng::seed_from_u64(0xda65);
    let mut commits = vec![remote.head()];
    let mut kinds = std::collections::BTreeMap::new();
    for step in 0..40 {
        for _ in 0..rng.gen_range(1..4) {
            *kinds
                .entry(random_change(&mut rng, &remote.dir, step))
                .or_insert(0) += 1;
        }
        let commit = remote.commit_all(&format!("step {step}"));
        let out = sync_once(&scratch, &remote.url(), &keep_all);
        assert!(out.status.success(), "step {step}: {}", stderr(&out));
        assert_eq!(assert_root_valid(&scratch.root()), commit);
        verify(&scratch, &commit);
        commits.push(commit);
    }
    for kind in [
        "add",
        "delete",
        "modify",
        "mode",
        "file->symlink",
        "file->dir",
        "dir->file",
        "rename",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "{kind} never exercised: {kinds:?}"
        );
    }
    // Shared inodes never make an older snapshot disagree with its own commit, as git itself
    // writes it (not only as dagsnap's entry list says).
    for commit in &commits {
        let report = verify(&scratch, commit);
        assert_eq!(report["extra"].as_array().unwrap().len(), 0, "{report}");
        let archived = scratch.path(&format!("archive-{commit}"));
        git_archive(&remote, commit, &archived);
        assert_eq!(
            tree_of(&scratch.root().join(SNAPSHOTS).join(commit)),
            tree_of(&archived),
            "snapshot {commit} differs from git archive"
        );
    }
    let reused = fs::read_dir(scratch.root().join(SNAPSHOTS))
        .unwrap()
        .count();
    assert_eq!(reused, commits.len(), "every snapshot retained");
}

/// Make every file of a snapshot immutable (root only): the kernel then refuses to hard-link
/// them (EPERM), which is the fallback path.
fn set_immutable(dir: &Path, on: bool) -> bool {
    std::process::Command::new("chattr")
        .arg("-R")
        .arg(if on { "+i" } else { "-i" })
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn when_linking_is_refused_the_files_are_written_and_the_tree_is_identical() {
    let remote = Remote::new();
    let files: Vec<(String, String)> = (0..30)
        .map(|i| (format!("dags/d{}/f{i}.py", i % 3), format!("dag {i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let first = remote.commit(&refs, "first");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let previous = scratch.root().join(SNAPSHOTS).join(&first);
    if !nix::unistd::geteuid().is_root() || !set_immutable(&previous, true) {
        skip(
            "root and chattr support",
            "this is not root, or chattr +i failed",
        );
        return;
    }
    let second = remote.commit(&[("dags/d0/f0.py", "changed\n")], "second");
    let out = sync_once(&scratch, &remote.url(), &["--log-level", "info"]);
    set_immutable(&previous, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writing every file instead"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("reused=0"), "{}", stderr(&out));

    // The same commit built with --full-copy into another root is the reference.
    let reference = Scratch::new();
    assert!(sync_once(&reference, &remote.url(), &["--full-copy"])
        .status
        .success());
    let view = |s: &Scratch| -> Vec<(String, String)> {
        let snap = s.root().join(SNAPSHOTS).join(&second);
        fingerprint(&snap)
            .into_iter()
            .map(|(p, v)| {
                // Compare mode, size and content; inode and mtime differ by nature.
                let fields: Vec<&str> = v.split(' ').collect();
                (
                    p.display().to_string(),
                    format!(
                        "{} {} {}",
                        fields[0],
                        fields[1],
                        fields.get(4).unwrap_or(&"")
                    ),
                )
            })
            .collect()
    };
    assert_eq!(view(&scratch), view(&reference));
    verify(&scratch, &second);
}

#[test]
fn a_file_deleted_by_hand_from_the_previous_snapshot_is_written_instead_of_linked() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "a\n"), ("b.py", "b\n")], "first");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let previous = scratch.root().join(SNAPSHOTS).join(&first);
    fs::set_permissions(&previous, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(previous.join("b.py")).unwrap();
    fs::set_permissions(&previous, fs::Permissions::from_mode(0o555)).unwrap();

    let second = remote.commit(&[("a.py", "a2\n")], "second");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), second);
    assert_eq!(read_current(&scratch.root(), "b.py"), "b\n");
    verify(&scratch, &second);
}
