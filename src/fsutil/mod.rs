//! Filesystem primitives with the durability and permission rules dagsnap relies on.
//!
//! Everything that touches the disk for durability (fsync of a directory, syncfs of a whole
//! filesystem) or for the read-only contract of snapshots lives here, so the rules are written
//! down once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod dir;
pub(crate) mod lock;
pub(crate) use dir::{is_not_a_directory, is_not_regular, Dir, Found, Kind};

/// An I/O failure on a named path: `"<action> <path>: <cause><hint>"`.
///
/// The hint turns the errno an operator sees most (full disk, read-only mount, permissions) into
/// what to do about it, so every caller gets it without repeating it.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}{}", path.display(), hint(source))]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IoError {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// What to do about the errno of `err`, as a suffix for an error message (empty if unknown).
pub(crate) fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            " (the filesystem is full: free space or grow the volume; dagsnap retries by itself)"
        }
        Some(libc::EROFS) => " (the filesystem is mounted read-only: mount it read-write)",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (permission denied: run dagsnap as a user that may write there, or fix the ownership)"
        }
        Some(libc::ENOLCK) => {
            " (the filesystem does not support locks: on NFSv3 run rpc.statd/lockd, or mount without 'nolock')"
        }
        _ => "",
    }
}

/// Attach an action and a path to an `io::Result`.
pub(crate) trait Context<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> Context<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(action, path, source))
    }
}

/// The process's umask, read from `/proc/self/status` (reading it with `umask(2)` means
/// changing it for a moment, which other threads would see). `0o777`, the most restrictive, if
/// it cannot be read.
pub(crate) fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

/// Set by `--group-write`: what dagsnap creates under the root (except the read-only snapshots)
/// is writable by the group too, so that publishers running as different users of one group
/// (pods sharing a volume through `fsGroup`) can all publish.
static GROUP_WRITE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_group_write(on: bool) {
    GROUP_WRITE.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn group_write() -> bool {
    GROUP_WRITE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The mode of the directories dagsnap creates under the root.
pub(crate) fn dir_mode() -> u32 {
    if group_write() {
        0o775
    } else {
        0o755
    }
}

/// The mode of the records and lock files dagsnap creates under the root.
pub(crate) fn file_mode() -> u32 {
    if group_write() {
        0o664
    } else {
        0o644
    }
}

/// Mode bits of a read-only snapshot entry: readable (and searchable) by everyone, writable by
/// no one. Executable files keep `x` for everyone, as git records only "executable or not".
pub(crate) fn read_only_mode(is_dir: bool, executable: bool) -> u32 {
    if is_dir || executable {
        0o555
    } else {
        0o444
    }
}

/// Delete the tree at `path` (which must not be a symlink itself), restoring owner write
/// permission on its directories first so that a non-root publisher can delete a read-only
/// snapshot. Symlinks inside are removed, never followed: nothing outside `path` is touched
/// (see [`Dir::remove_tree`]; `path`'s parent is reached by its path, so this is for
/// directories of this process's own, such as a private cache).
pub fn remove_tree(path: &Path) -> Result<(), IoError> {
    let (parent, name) = split(path)?;
    match Dir::open_path(parent) {
        Ok(dir) => dir.remove_tree(name),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `path`'s parent directory and its last component.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), IoError> {
    let name = path.file_name().ok_or_else(|| {
        IoError::new(
            "use",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "it has no file name"),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Make `path` a directory private to this uid (`0700`) if it is not one yet; an existing one
/// is left as it is.
pub(crate) fn ensure_private_dir(path: &Path) -> Result<(), IoError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(IoError::new("create directory", path, e)),
    }
}

/// Write `contents` to `path` atomically: a temporary sibling, fsync, rename.
///
/// Readers of small state files see the old or the new version, never a torn one, and a crash
/// leaves at most a `.tmp-*` file that start-up ignores. For files of this process's own (the
/// cache's marker, the error file); records under the root go through their store's [`Dir`].
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), IoError> {
    let (parent, name) = split(path)?;
    Dir::open_path(parent)?.write_atomically(name, contents)
}

/// A suffix that does not collide between processes, hosts and threads sharing a directory:
/// pid plus random bits (the pid alone repeats across pods).
pub(crate) fn unique_suffix() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// This host's name, for naming staging directories and journal entries.
/// A volume's size and the bytes an unprivileged writer may still use on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub size: u64,
    pub available: u64,
}

/// The space of the volume holding `path` (`statvfs(2)`), if it can be read.
pub(crate) fn space(path: &std::path::Path) -> Option<Space> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size();
    Some(Space {
        size: stat.blocks().saturating_mul(block),
        available: stat.blocks_available().saturating_mul(block),
    })
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_error_says_what_to_do() {
        let err = IoError::new(
            "write",
            "/dags/x",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(err.to_string().contains("free space"), "{err}");
    }
}
