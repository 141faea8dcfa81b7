//! git-sync's files in a root that dagsnap takes over (`--adopt-git-sync`, implied when dagsnap
//! runs as git-sync): recognizing them, telling whether git-sync still writes them, and removing
//! them once no reader and no git-sync can need them.
//!
//! git-sync v4 keeps its repository in `ROOT/.git`, a worktree per commit in
//! `ROOT/.worktrees/<commit>`, and its link `ROOT/<link> -> .worktrees/<commit>`, swapped
//! through a temporary link named `tmp-link`. v3 kept worktrees as `ROOT/rev-<commit>`.
//!
//! While a git-sync and a dagsnap share a root (a rolling update replaces one by the other over
//! minutes), the two must not fight over the link: git-sync re-points a link it does not
//! recognize at a worktree of its own. So dagsnap moves the link only after git-sync has left
//! its files alone for `--adopt-after`; until then it fetches and builds, so that taking over is
//! one rename. A git-sync that still runs notices the link moved at its next poll and takes it
//! back: that is a write, and dagsnap stands back again. The files are removed only when the
//! link has been dagsnap's for `--grace` with no git-sync write since: no reader still holds a
//! worktree, and no git-sync is running (one would have taken the link back).

use std::ffi::OsStr;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::commit::CommitId;
use crate::fsutil::{Dir, IoError, Kind};

/// git-sync v4's worktrees, under the root.
const WORKTREES: &str = ".worktrees";
/// git-sync's repository, the root's own `.git`.
const GIT_DIR: &str = ".git";
/// The temporary link git-sync swaps its link through.
const TEMP_LINK: &str = "tmp-link";
/// v3's worktrees: `rev-<commit>`.
const V3_PREFIX: &str = "rev-";

/// Whether `name`, at the top of a root, is one of git-sync's files.
pub(crate) fn is_git_sync_entry(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    matches!(name, GIT_DIR | WORKTREES | TEMP_LINK)
        || name.strip_prefix(V3_PREFIX).is_some_and(CommitId::is_valid)
}

/// Whether the root holds any of git-sync's files.
pub(crate) fn present(root: &Path) -> bool {
    fs::read_dir(root).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| is_git_sync_entry(&e.file_name()))
    })
}

/// The commit and worktree directory a link's `target` names, if it is one of git-sync's
/// worktrees in `root`. `link_dir` is the directory holding the link (relative targets are
/// relative to it).
pub(crate) fn worktree_of(
    root: &Path,
    link_dir: &Path,
    target: &Path,
) -> Option<(CommitId, PathBuf)> {
    let absolute = if target.is_absolute() {
        target.to_path_buf()
    } else {
        link_dir.join(target)
    };
    // Resolve `..` lexically: the link's directory is a real directory inside the root.
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    let inside = resolved.strip_prefix(root).ok()?;
    let parts: Vec<&OsStr> = inside.iter().collect();
    let commit = match parts.as_slice() {
        [dir, commit] if *dir == OsStr::new(WORKTREES) => commit.to_str()?,
        [dir] => dir.to_str()?.strip_prefix(V3_PREFIX)?,
        _ => return None,
    };
    Some((CommitId::parse(commit).ok()?, resolved.clone()))
}

/// When git-sync last wrote the root: the newest modification among its repository's
/// bookkeeping (what a fetch, a new worktree or a cleanup changes), its worktrees, and the link
/// if the link is git-sync's (`link_is_git_sync`).
pub(crate) fn last_write(root: &Path, link: &Path, link_is_git_sync: bool) -> Option<SystemTime> {
    let git = root.join(GIT_DIR);
    let mut watched = vec![
        git.clone(),
        git.join("HEAD"),
        git.join("FETCH_HEAD"),
        git.join("shallow"),
        git.join("index"),
        git.join("packed-refs"),
        git.join("worktrees"),
        git.join("refs/heads"),
        git.join("objects/pack"),
        root.join(WORKTREES),
        root.join(TEMP_LINK),
    ];
    if let Ok(entries) = fs::read_dir(root.join(WORKTREES)) {
        watched.extend(entries.filter_map(Result::ok).map(|e| e.path()));
    }
    if let Ok(entries) = fs::read_dir(root) {
        watched.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(V3_PREFIX))
                })
                .map(|e| e.path()),
        );
    }
    if link_is_git_sync {
        watched.push(link.to_path_buf());
    }
    watched
        .iter()
        .filter_map(|p| fs::symlink_metadata(p).ok()?.modified().ok())
        .max()
}

/// Remove git-sync's files from `root` (opened by the caller); returns what was removed.
/// Worktrees go first (they are what readers could see), the repository last.
///
/// Only what git-sync itself writes goes, as git-sync writes it: its repository and worktrees
/// are real directories, its temporary link a symlink into its worktrees. A symlink named like
/// one of them (dagsnap's own link, when `--link` is `.git` or `tmp-link`, as git-sync's
/// defaults make it with `--repo=…/.git`), anything at `link_top` (the first component of the
/// configured link), and anything else under those names stays.
pub(crate) fn remove(root: &Dir, link_top: &OsStr) -> Result<Vec<PathBuf>, IoError> {
    let mut found: Vec<(std::ffi::OsString, Kind)> = Vec::new();
    for (name, kind) in root.entries()? {
        if !is_git_sync_entry(&name) || name == link_top {
            continue;
        }
        let kind = match kind {
            Some(kind) => kind,
            None => match root.kind(&name)? {
                Some(kind) => kind,
                None => continue,
            },
        };
        let git_sync_wrote_it = match kind {
            Kind::Dir => true,
            Kind::Symlink => name == TEMP_LINK && is_worktree_link(root, &name),
            _ => false,
        };
        if git_sync_wrote_it {
            found.push((name, kind));
        }
    }
    found.sort_by_key(|(name, _)| name == GIT_DIR);
    let mut removed = Vec::new();
    for (name, _) in found {
        root.remove_tree(&name)?;
        removed.push(root.join(&name));
    }
    Ok(removed)
}

/// Whether the symlink `name` in `root` points into git-sync's worktrees.
fn is_worktree_link(root: &Dir, name: &OsStr) -> bool {
    root.read_link(name)
        .is_ok_and(|target| worktree_of(root.path(), root.path(), &target).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn git_sync_s_names_are_recognized_and_nothing_else() {
        for name in [".git", ".worktrees", "tmp-link", &format!("rev-{SHA}")] {
            assert!(is_git_sync_entry(OsStr::new(name)), "{name}");
        }
        for name in ["repo", "rev-main", ".gitignore", "dags", ".dagsnap"] {
            assert!(!is_git_sync_entry(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn worktree_targets_resolve_relative_and_absolute() {
        let root = Path::new("/git");
        let v4 = PathBuf::from(format!(".worktrees/{SHA}"));
        assert_eq!(
            worktree_of(root, root, &v4),
            Some((CommitId::parse(SHA).unwrap(), root.join(&v4)))
        );
        let nested = PathBuf::from(format!("../.worktrees/{SHA}"));
        assert_eq!(
            worktree_of(root, &root.join("links"), &nested).map(|w| w.0.to_string()),
            Some(SHA.to_string())
        );
        let absolute = root.join(format!("rev-{SHA}"));
        assert_eq!(
            worktree_of(root, root, &absolute).map(|w| w.0.to_string()),
            Some(SHA.to_string())
        );
        for other in [
            ".dagsnap/snapshots/x",
            "/elsewhere/.worktrees/abc",
            ".worktrees/main",
        ] {
            assert_eq!(worktree_of(root, root, Path::new(other)), None, "{other}");
        }
    }
}
