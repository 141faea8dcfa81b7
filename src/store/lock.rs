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

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsutil::{Context, IoError};

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
pub struct FileLock {
    /// The lock lives as long as this open file description.
    _file: fs::File,
    path: PathBuf,
}

impl FileLock {
    /// Take the lock at `path` exclusively (the file is created if missing), waiting at most
    /// `timeout`; a zero `timeout` tries once. The file's content is not touched, so taking
    /// and releasing the lock leaves no trace on disk.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<FileLock, LockError> {
        Self::acquire_inner(path, timeout, false)
    }

    /// Like [`FileLock::acquire`], and then write the holder's identity (`host pid`) into the
    /// file so that whoever finds it busy can say who holds it. For private locks, where the
    /// write costs nothing and the name helps.
    pub fn acquire_as_holder(path: &Path, timeout: Duration) -> Result<FileLock, LockError> {
        Self::acquire_inner(path, timeout, true)
    }

    fn acquire_inner(
        path: &Path,
        timeout: Duration,
        record_holder: bool,
    ) -> Result<FileLock, LockError> {
        let mut file = open(path)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if set_lock(&file, path, libc::F_WRLCK)? {
                break;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(LockError::Busy {
                    path: path.to_path_buf(),
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
            path: path.to_path_buf(),
        })
    }

    /// Try once to take a shared lock on `path`: any number of shared holders coexist, and
    /// they keep an exclusive lock out. `None` if someone holds it exclusively.
    pub fn try_shared(path: &Path) -> Result<Option<FileLock>, LockError> {
        Self::try_once(path, libc::F_RDLCK)
    }

    /// Try once to take an exclusive lock on `path`. `None` if anyone holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>, LockError> {
        Self::try_once(path, libc::F_WRLCK)
    }

    /// Whether anyone holds a lock on `path` now, asked without taking one and without
    /// write access: works on a read-only mount, and creates nothing (a missing file is not
    /// held).
    pub fn is_held(path: &Path) -> Result<bool, LockError> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(IoError::new("open lock file", path, e).into()),
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
            Err(nix::errno::Errno::ENOLCK) => Err(LockError::Unsupported {
                path: path.to_path_buf(),
            }),
            Err(errno) => Err(IoError::new("inspect lock", path, io::Error::from(errno)).into()),
        }
    }

    fn try_once(path: &Path, kind: libc::c_int) -> Result<Option<FileLock>, LockError> {
        let file = open(path)?;
        Ok(set_lock(&file, path, kind)?.then(|| FileLock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }

    /// Replace the locked file's content (a record its holder keeps up to date while it holds
    /// the lock). Readers may see it torn and must read it as untrusted input.
    pub fn rewrite(&self, contents: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self._file.write_all_at(contents, 0)?;
        self._file.set_len(contents.len() as u64)
    }

    /// Turn an exclusive lock into a shared one, atomically: there is no moment at which the
    /// file is unlocked.
    pub fn downgrade(&self) -> Result<(), LockError> {
        match set_lock(&self._file, &self.path, libc::F_RDLCK)? {
            true => Ok(()),
            false => Err(IoError::new(
                "downgrade lock",
                &self.path,
                io::Error::from_raw_os_error(libc::EAGAIN),
            )
            .into()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the locked file is still the one at its path. A lock on a file that was deleted
    /// (or replaced) protects nothing: whoever opens the path now locks another file.
    pub fn is_still_at_path(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), fs::metadata(&self.path)) {
            (Ok(held), Ok(there)) => held.dev() == there.dev() && held.ino() == there.ino(),
            _ => false,
        }
    }
}

fn open(path: &Path) -> Result<fs::File, LockError> {
    Ok(fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::fsutil::file_mode())
        .open(path)
        .at("open lock file", path)?)
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
        let err = FileLock::acquire(&path, Duration::from_millis(50)).unwrap_err();
        match &err {
            LockError::Busy { holder, .. } => {
                assert!(holder.as_deref().unwrap_or("").contains("pid"), "{err}")
            }
            other => panic!("expected Busy, got {other}"),
        }
        drop(first);
        FileLock::acquire(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publishers");
        let a = FileLock::try_shared(&path).unwrap().expect("first shared");
        let b = FileLock::try_shared(&path).unwrap().expect("second shared");
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        assert!(FileLock::is_held(&path).unwrap());
        drop((a, b));
        assert!(!FileLock::is_held(&path).unwrap());
        assert!(!FileLock::is_held(&dir.path().join("missing")).unwrap());
        assert!(
            !dir.path().join("missing").exists(),
            "asking creates nothing"
        );
        let exclusive = FileLock::try_exclusive(&path)
            .unwrap()
            .expect("exclusive once alone");
        assert!(FileLock::try_shared(&path).unwrap().is_none());
        exclusive.downgrade().unwrap();
        assert!(
            FileLock::try_shared(&path).unwrap().is_some(),
            "downgraded to shared"
        );
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
    }
}
