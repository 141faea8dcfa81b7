//! The one thing readers look at: a symlink, replaced atomically.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::fsutil::{self, Context, IoError};

/// Prefix of the temporary links [`swap`] creates next to the link. It starts with `.dagsnap`
/// so the `.airflowignore` that dagsnap writes hides a leftover one from Airflow, and start-up
/// recognizes and removes leftovers after a crash.
pub const TEMP_PREFIX: &str = ".dagsnap-link-";

/// Point the link at `link_rel` under `root` at `target`, so that every reader sees either the
/// old or the new target.
///
/// After kubelet's `AtomicWriter`, reduced to the part that matters for a single link:
///
/// 1. Open the link's directory, walking from `root` one component at a time without following
///    symlinks ([`open_parent`]). A directory on the way that was replaced by a symlink (to
///    somewhere outside the root) fails the swap here, before anything is written, instead of
///    putting the link where readers do not look.
/// 2. Create a new symlink `.dagsnap-link-<pid>-<random>` in that directory, pointing at
///    `target`. Nobody reads this name, so creating it is invisible. If it fails (full disk,
///    read-only mount), nothing has changed and the error is returned as is.
/// 3. `renameat(2)` the new symlink over the link. POSIX guarantees the replacement is atomic: a
///    concurrent `open("link/...")` resolves either the old or the new target, never nothing.
///    This is why the link is never deleted and re-created. If the rename fails, the temporary
///    link is removed and the link still points at the old target.
/// 4. `fsync` the directory so the rename survives a power cut. If this fails, the swap has
///    happened for every reader but may be lost on a crash; the error is returned so the caller
///    reports it, and the next cycle re-checks the link anyway.
///
/// `target` is stored as given; callers pass a path relative to the link's directory so the
/// link resolves the same in every pod, whatever the volume's mount point.
pub fn swap(root: &Path, link_rel: &Path, target: &Path) -> Result<(), IoError> {
    let link = root.join(link_rel);
    let dir = open_parent(root, link_rel)?;
    let name = link_rel.file_name().unwrap_or(link_rel.as_os_str());
    let temp = format!("{TEMP_PREFIX}{}", fsutil::unique_suffix());
    let fd = Some(dir.as_raw_fd());
    nix::unistd::symlinkat(target, fd, temp.as_str()).map_err(|e| {
        IoError::new(
            "create temporary link",
            parent_dir(&link).join(&temp),
            e.into(),
        )
    })?;
    if let Err(e) = nix::fcntl::renameat(fd, temp.as_str(), fd, name) {
        let _ = nix::unistd::unlinkat(fd, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(IoError::new("replace link", &link, e.into()));
    }
    nix::unistd::fsync(dir.as_raw_fd())
        .map_err(|e| IoError::new("fsync directory", parent_dir(&link), e.into()))
}

/// The directory that holds the link at `link_rel` under `root`, opened by walking down from
/// `root` with `O_NOFOLLOW` at every step: each directory between the root and the link must be
/// a real directory, so the link can never land outside the root through a symlink. (`root`
/// itself is the operator's choice and may be reached through symlinks.)
pub fn open_parent(root: &Path, link_rel: &Path) -> Result<OwnedFd, IoError> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let open = |dirfd: Option<i32>, name: &std::ffi::OsStr, at: &Path, flags: OFlag| {
        openat(dirfd, name, flags, Mode::empty())
            // SAFETY: openat returned a new descriptor that nothing else owns.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(|errno| match errno {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => IoError::new(
                    "use as the link's directory",
                    at,
                    io::Error::other(
                        "it is a symlink or not a directory; the link's directories must be real directories inside the root",
                    ),
                ),
                errno => IoError::new("open the link's directory", at, errno.into()),
            })
    };
    let mut dir = open(None, root.as_os_str(), root, flags)?;
    let parents: Vec<Component> = link_rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let mut at = root.to_path_buf();
    for component in parents {
        at.push(component);
        dir = open(
            Some(dir.as_raw_fd()),
            component.as_os_str(),
            &at,
            flags | OFlag::O_NOFOLLOW,
        )?;
    }
    Ok(dir)
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
        swap(dir.path(), Path::new("current"), Path::new("a")).unwrap();
        swap(dir.path(), Path::new("current"), Path::new("b")).unwrap();
        assert_eq!(read(&link).unwrap(), Some(PathBuf::from("b")));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("current")]);
    }

    #[test]
    fn a_symlinked_directory_on_the_way_to_the_link_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dags")).unwrap();
        let err = swap(dir.path(), Path::new("dags/current"), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("real directories"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
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
