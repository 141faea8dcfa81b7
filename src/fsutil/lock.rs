//! Advisory whole-file locks with a bounded wait.
//!
//! dagsnap uses open-file-description (OFD) locks, `fcntl(F_OFD_SETLK)`:
//! - they belong to the open file, not the process, so two threads of one process exclude each
//!   other just as two processes do (classic POSIX locks would silently share);
//! - the kernel drops them when the descriptor is closed or the process dies, including on
//!   `kill -9`, so there is never a stale lock to clean up by hand;
//! - the Linux NFS client forwards them to the server as byte-range locks (NLM on NFSv3, the
//!   protocol's own locking on NFSv4), so they coordinate pods on different nodes.
//!
//! The wait is a poll with a deadline rather than a blocking `F_OFD_SETLKW`: a lock request that
//! hangs on a wedged NFS server must not hang the sync loop forever.
//!
//! A lock file is opened by name in its directory's descriptor, never through a symlink, and
//! must be a regular file: a lock file under the root is input like any other.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Dir, IoError};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {} is busy after waiting {}{}; another dagsnap is working on it", path.display(), humantime::format_duration(*waited), holder_suffix(holder))]
    Busy {
        path: PathBuf,
        waited: Duration,
        holder: Option<String>,
    },
    #[error("cannot lock {}: the filesystem does not support file locks (ENOLCK); on NFSv3 make sure rpc.statd and lockd run on client and server and the volume is not mounted with 'nolock', or use NFSv4", path.display())]
    Unsupported { path: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
}

fn holder_suffix(holder: &Option<String>) -> String {
    match holder {
        Some(h) if !h.is_empty() => format!(" (held by {h})"),
        _ => String::new(),
    }
}

/// A lock on a whole file, released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct FileLock {
    /// The lock lives as long as this open file description.
    _file: fs::File,
    /// The directory holding the file, and its name: where [`FileLock::is_still_at_path`]
    /// looks, never through a symlink.
    dir: Dir,
    name: OsString,
}

impl FileLock {
    /// Take the lock `name` in `dir` exclusively (the file is created if missing), waiting at
    /// most `timeout`; a zero `timeout` tries once. The file's content is not touched, so
    /// taking and releasing the lock leaves no trace on disk.
    pub(crate) fn acquire_in(
        dir: &Dir,
        name: &str,
        timeout: Duration,
    ) -> Result<FileLock, LockError> {
        Self::acquire_inner(dir, OsStr::new(name), timeout, false)
    }

    /// Like [`FileLock::acquire_in`] for the file at `path` (reached by its path: for
    /// directories of this process's own, such as a private cache), and then write the holder's identity (`host pid`) into the
    /// file so that whoever finds it busy can say who holds it. For private locks, where the
    /// write costs nothing and the name helps.
    pub(crate) fn acquire_as_holder(path: &Path, timeout: Duration) -> Result<FileLock, LockError> {
        let (dir, name) = parent(path)?;
        Self::acquire_inner(&dir, name, timeout, true)
    }

    fn acquire_inner(
        dir: &Dir,
        name: &OsStr,
        timeout: Duration,
        record_holder: bool,
    ) -> Result<FileLock, LockError> {
        let path = dir.join(name);
        let mut file = open(dir, name)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if set_lock(&file, &path, libc::F_WRLCK)? {
                break;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(LockError::Busy {
                    path,
                    waited,
                    holder: read_holder(&mut file),
                });
            }
            // Jittered exponential pause: publishers that collide do not retry in lockstep.
            let jitter = rand::random::<u64>() % (pause.as_millis() as u64 + 1);
            std::thread::sleep((pause + Duration::from_millis(jitter)).min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        if record_holder {
            let holder = format!("{} pid {}", crate::fsutil::hostname(), std::process::id());
            // Best effort: the identity is a courtesy for error messages, not part of the protocol.
            let _ = file
                .set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| file.write_all(holder.as_bytes()));
        }
        Ok(FileLock {
            _file: file,
            dir: dir.try_clone()?,
            name: name.to_os_string(),
        })
    }

    /// Try once to take a shared lock on `name` in `dir`: any number of shared holders
    /// coexist, and they keep an exclusive lock out. `None` if someone holds it exclusively.
    pub(crate) fn try_shared(dir: &Dir, name: &str) -> Result<Option<FileLock>, LockError> {
        Self::try_once(dir, OsStr::new(name), libc::F_RDLCK)
    }

    /// Try once to take an exclusive lock on `name` in `dir`. `None` if anyone holds it.
    pub(crate) fn try_exclusive(dir: &Dir, name: &str) -> Result<Option<FileLock>, LockError> {
        Self::try_once(dir, OsStr::new(name), libc::F_WRLCK)
    }

    /// Whether anyone holds a lock on `name` in `dir` now, asked without taking one and
    /// without write access: works on a read-only mount, and creates nothing (a missing file
    /// is not held). Anything but a regular file there is not held either.
    pub(crate) fn is_held_in(dir: &Dir, name: &str) -> Result<bool, LockError> {
        let path = dir.join(name);
        let file = match dir.open_read(name) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(false),
            Err(e) if crate::fsutil::is_not_regular(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
        let mut flock: libc::flock = unsafe { std::mem::zeroed() };
        flock.l_type = libc::F_WRLCK as _;
        flock.l_whence = libc::SEEK_SET as _;
        match nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_OFD_GETLK(&mut flock),
        ) {
            Ok(_) => Ok(flock.l_type != libc::F_UNLCK as libc::c_short),
            Err(nix::errno::Errno::ENOLCK) => Err(LockError::Unsupported { path }),
            Err(errno) => Err(IoError::new("inspect lock", path, io::Error::from(errno)).into()),
        }
    }

    /// [`FileLock::is_held_in`] for a path of this process's own (a private cache).
    pub(crate) fn is_held(path: &Path) -> Result<bool, LockError> {
        let (dir, name) = match parent(path) {
            Ok(found) => found,
            Err(LockError::Io(e)) if e.errno() == Some(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(e),
        };
        Self::is_held_in(&dir, &name.to_string_lossy())
    }

    fn try_once(dir: &Dir, name: &OsStr, kind: libc::c_int) -> Result<Option<FileLock>, LockError> {
        let file = open(dir, name)?;
        if !set_lock(&file, &dir.join(name), kind)? {
            return Ok(None);
        }
        Ok(Some(FileLock {
            _file: file,
            dir: dir.try_clone()?,
            name: name.to_os_string(),
        }))
    }

    /// Replace the locked file's content (a record its holder keeps up to date while it holds
    /// the lock). Readers may see it torn and must read it as untrusted input.
    pub(crate) fn rewrite(&self, contents: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self._file.write_all_at(contents, 0)?;
        self._file.set_len(contents.len() as u64)
    }

    /// The file's name in its directory.
    pub(crate) fn name(&self) -> &OsStr {
        &self.name
    }

    /// Whether the locked file is still the one at its name. A lock on a file that was deleted
    /// (or replaced) protects nothing: whoever opens the name now locks another file.
    pub(crate) fn is_still_at_path(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), self.dir.stat(&self.name)) {
            (Ok(held), Ok(Some(there))) => held.dev() == there.st_dev && held.ino() == there.st_ino,
            _ => false,
        }
    }
}

/// The directory holding `path`, opened by its path, and the file's name.
fn parent(path: &Path) -> Result<(Dir, &OsStr), LockError> {
    let name = path
        .file_name()
        .ok_or_else(|| IoError::new("lock", path, io::Error::from_raw_os_error(libc::EINVAL)))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Dir::open_path(dir)?, name))
}

/// Open (creating if missing) the lock file `name` in `dir`, without following a symlink;
/// anything but a regular file there is refused ([`crate::fsutil::is_not_regular`]).
fn open(dir: &Dir, name: &OsStr) -> Result<fs::File, LockError> {
    Ok(dir.open_rw(name, true)?)
}

/// One non-blocking attempt at an OFD lock of `kind` on the whole file: `Ok(false)` if it is
/// held in a conflicting way.
fn set_lock(file: &fs::File, path: &Path, kind: libc::c_int) -> Result<bool, LockError> {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut flock: libc::flock = unsafe { std::mem::zeroed() };
    flock.l_type = kind as _;
    flock.l_whence = libc::SEEK_SET as _;
    // l_start = l_len = 0: the whole file, including bytes written later.
    match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&flock)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => Ok(false),
        Err(nix::errno::Errno::ENOLCK) => Err(LockError::Unsupported {
            path: path.to_path_buf(),
        }),
        Err(errno) => Err(IoError::new("lock", path, io::Error::from(errno)).into()),
    }
}

fn read_holder(file: &mut fs::File) -> Option<String> {
    let mut holder = String::new();
    file.rewind().ok()?;
    file.take(256).read_to_string(&mut holder).ok()?;
    Some(holder.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_in_same_process_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = FileLock::acquire_as_holder(&path, Duration::ZERO).unwrap();
        let d = Dir::open_path(dir.path()).unwrap();
        let err = FileLock::acquire_in(&d, "lock", Duration::from_millis(50)).unwrap_err();
        match &err {
            LockError::Busy { holder, .. } => {
                assert!(holder.as_deref().unwrap_or("").contains("pid"), "{err}")
            }
            other => panic!("expected Busy, got {other}"),
        }
        drop(first);
        FileLock::acquire_in(&d, "lock", Duration::ZERO).unwrap();
    }

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open_path(dir.path()).unwrap();
        let path = "publishers";
        let a = FileLock::try_shared(&d, path)
            .unwrap()
            .expect("first shared");
        let b = FileLock::try_shared(&d, path)
            .unwrap()
            .expect("second shared");
        assert!(FileLock::try_exclusive(&d, path).unwrap().is_none());
        assert!(FileLock::is_held_in(&d, path).unwrap());
        drop((a, b));
        assert!(!FileLock::is_held_in(&d, path).unwrap());
        assert!(!FileLock::is_held_in(&d, "missing").unwrap());
        assert!(
            !dir.path().join("missing").exists(),
            "asking creates nothing"
        );
        let exclusive = FileLock::try_exclusive(&d, path)
            .unwrap()
            .expect("exclusive once alone");
        assert!(FileLock::try_shared(&d, path).unwrap().is_none());
        drop(exclusive);
        assert!(FileLock::try_shared(&d, path).unwrap().is_some());
    }
}
