//! Filesystem primitives with the durability and permission rules dagsnap relies on.
//!
//! Everything that touches the disk for durability (fsync of a directory, syncfs of a whole
//! filesystem) or for the read-only contract of snapshots lives here, so the rules are written
//! down once.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

mod dir;
pub mod lock;
pub use dir::{is_not_a_directory, is_not_regular, Dir, Found, Kind};

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

/// The hint for the first OS error found in `err`'s chain of causes (errors from gix wrap the
/// `io::Error` that says "disk full").
pub fn hint_in_chain(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some() {
                return hint(io);
            }
        }
        current = e.source();
    }
    // Some layers flatten their cause into text.
    let text = err.to_string();
    for (needle, errno) in [
        ("No space left on device", libc::ENOSPC),
        ("Disk quota exceeded", libc::EDQUOT),
        ("Read-only file system", libc::EROFS),
    ] {
        if text.contains(needle) {
            return hint(&io::Error::from_raw_os_error(errno));
        }
    }
    ""
}

/// What to do about the errno of `err`, as a suffix for an error message (empty if unknown).
pub fn hint(err: &io::Error) -> &'static str {
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
pub trait Context<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> Context<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(action, path, source))
    }
}

/// Make the entries of `dir` (creations, renames, removals) durable.
///
/// A rename is only durable once the directory that holds it has been fsynced; the file data
/// itself is covered separately by [`sync_filesystem`].
pub fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    let handle = fs::File::open(dir).at("open directory for fsync", dir)?;
    handle.sync_all().at("fsync directory", dir)
}

/// Flush every dirty page of the filesystem that holds `path` with one `syncfs(2)`.
///
/// One call instead of an fsync per file: a snapshot of 10,000 files would otherwise cost
/// 10,000 synchronous round trips, which on NFS is minutes. The staging directory is private
/// until it is renamed, so flushing the whole filesystem is the cheapest correct barrier.
pub fn sync_filesystem(path: &Path) -> Result<(), IoError> {
    let handle = fs::File::open(path).at("open for syncfs", path)?;
    nix::unistd::syncfs(handle.as_raw_fd())
        .map_err(|errno| IoError::new("syncfs", path, io::Error::from(errno)))
}

/// The process's umask, read from `/proc/self/status` (reading it with `umask(2)` means
/// changing it for a moment, which other threads would see). `0o777`, the most restrictive, if
/// it cannot be read.
pub fn umask() -> u32 {
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

pub fn group_write() -> bool {
    GROUP_WRITE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The mode of the directories dagsnap creates under the root.
pub fn dir_mode() -> u32 {
    if group_write() {
        0o775
    } else {
        0o755
    }
}

/// The mode of the records and lock files dagsnap creates under the root.
pub fn file_mode() -> u32 {
    if group_write() {
        0o664
    } else {
        0o644
    }
}

/// Mode bits of a read-only snapshot entry: readable (and searchable) by everyone, writable by
/// no one. Executable files keep `x` for everyone, as git records only "executable or not".
pub fn read_only_mode(is_dir: bool, executable: bool) -> u32 {
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

/// Write `contents` to `path` atomically: a temporary sibling, fsync, rename.
///
/// Readers of small state files see the old or the new version, never a torn one, and a crash
/// leaves at most a `.tmp-*` file that start-up ignores. For files of this process's own (the
/// cache's marker, the error file); records under the root go through their store's [`Dir`].
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), IoError> {
    let (parent, name) = split(path)?;
    Dir::open_path(parent)?.write_atomically(name, contents)
}

/// A suffix that does not collide between processes, hosts and threads sharing a directory:
/// pid plus random bits (the pid alone repeats across pods).
pub fn unique_suffix() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// This host's name, for naming staging directories and journal entries.
pub fn hostname() -> String {
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
