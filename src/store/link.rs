//! The one thing readers look at: a symlink, replaced atomically.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::fsutil::{self, Context, IoError};

/// Prefix of the temporary links [`swap`] creates next to the link. It starts with `.dagsnap`
/// so the `.airflowignore` that dagsnap writes hides a leftover one from Airflow, and start-up
/// recognizes and removes leftovers after a crash.
pub const TEMP_PREFIX: &str = ".dagsnap-link-";

/// Point `link` at `target` so that every reader sees either the old or the new target.
///
/// After kubelet's `AtomicWriter`, reduced to the part that matters for a single link:
///
/// 1. Create a new symlink `<link dir>/.dagsnap-link-<pid>-<random>` pointing at `target`.
///    Nobody reads this name, so creating it is invisible. If it fails (full disk, read-only
///    mount), nothing has changed and the error is returned as is.
/// 2. `rename(2)` the new symlink over `link`. POSIX guarantees the replacement is atomic: a
///    concurrent `open("link/...")` resolves either the old or the new target, never nothing.
///    This is why the link is never deleted and re-created. If the rename fails, the temporary
///    link is removed and `link` still points at the old target.
/// 3. `fsync` the link's directory so the rename survives a power cut. If this fails, the swap
///    has happened for every reader but may be lost on a crash; the error is returned so the
///    caller reports it, and the next cycle re-checks the link anyway.
///
/// `target` is stored as given; callers pass a path relative to the link's directory so the
/// link resolves the same in every pod, whatever the volume's mount point.
pub fn swap(link: &Path, target: &Path) -> Result<(), IoError> {
    let dir = parent_dir(link);
    let temp = dir.join(format!("{TEMP_PREFIX}{}", fsutil::unique_suffix()));
    std::os::unix::fs::symlink(target, &temp).at("create temporary link", &temp)?;
    if let Err(e) = fs::rename(&temp, link) {
        let _ = fs::remove_file(&temp);
        return Err(IoError::new("replace link", link, e));
    }
    fsutil::fsync_dir(dir)
}

/// The link's target as stored, or `None` if there is no link. Anything at that path that is
/// not a symlink is an error: it is something dagsnap did not create.
pub fn read(link: &Path) -> Result<Option<PathBuf>, ReadError> {
    match fs::symlink_metadata(link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::new("inspect link", link, e).into()),
        Ok(meta) if !meta.file_type().is_symlink() => Err(ReadError::NotALink {
            path: link.to_path_buf(),
            kind: if meta.is_dir() { "directory" } else { "file" },
        }),
        Ok(_) => Ok(Some(fs::read_link(link).at("read link", link)?)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{} is a real {kind}, not the link dagsnap manages; move it away (dagsnap never deletes what it did not create) or choose another --link", path.display())]
    NotALink { path: PathBuf, kind: &'static str },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Remove temporary links a crash left between steps 1 and 2 of [`swap`].
pub fn remove_stale_temporaries(link: &Path) -> Result<(), IoError> {
    let dir = parent_dir(link);
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.at("list", dir)?,
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            // Only symlinks: never delete a real file that happens to share the prefix.
            if fs::symlink_metadata(&path)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(IoError::new("remove stale temporary link", &path, e))
                    }
                    _ => {
                        tracing::debug!(path = %path.display(), "removed temporary link left by a crash")
                    }
                }
            }
        }
    }
    Ok(())
}

/// The relative path from the directory of a link at `link_rel` (relative to a root) back up to
/// that root: `""` for `current`, `"../"` for `dags/current`.
pub fn path_to_root(link_rel: &Path) -> PathBuf {
    let depth = link_rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
        .saturating_sub(1);
    (0..depth)
        .map(|_| Component::ParentDir.as_os_str())
        .collect()
}

fn parent_dir(link: &Path) -> &Path {
    match link.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_replaces_target_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        swap(&link, Path::new("a")).unwrap();
        swap(&link, Path::new("b")).unwrap();
        assert_eq!(read(&link).unwrap(), Some(PathBuf::from("b")));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("current")]);
    }

    #[test]
    fn a_real_directory_is_not_taken_for_the_link() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("current")).unwrap();
        let err = read(&dir.path().join("current")).unwrap_err();
        assert!(err.to_string().contains("real directory"), "{err}");
    }

    #[test]
    fn nested_link_reaches_root() {
        assert_eq!(path_to_root(Path::new("current")), PathBuf::from(""));
        assert_eq!(path_to_root(Path::new("dags/current")), PathBuf::from(".."));
        assert_eq!(
            path_to_root(Path::new("a/b/current")),
            PathBuf::from("../..")
        );
    }
}
