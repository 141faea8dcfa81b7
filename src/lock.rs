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

/// An exclusive lock on a file, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    /// The lock lives as long as this open file description.
    _file: fs::File,
    path: PathBuf,
}

impl FileLock {
    /// Take the lock at `path` (created if missing), waiting at most `timeout`.
    ///
    /// A zero `timeout` tries once. After taking it, the holder's identity (`host pid`) is written
    /// into the file so that whoever finds it busy can say who holds it.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<FileLock, LockError> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .at("open lock file", path)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match try_lock(&file) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOLCK) => {
                    return Err(LockError::Unsupported {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) => return Err(IoError::new("lock", path, e).into()),
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
        let holder = format!("{} pid {}", crate::fsutil::hostname(), std::process::id());
        // Best effort: the identity is a courtesy for error messages, not part of the protocol.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(holder.as_bytes()));
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn try_lock(file: &fs::File) -> io::Result<bool> {
    let mut flock: libc::flock = unsafe { std::mem::zeroed() };
    flock.l_type = libc::F_WRLCK as _;
    flock.l_whence = libc::SEEK_SET as _;
    // l_start = l_len = 0: the whole file, including bytes written later.
    match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&flock)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => Ok(false),
        Err(errno) => Err(io::Error::from(errno)),
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
        let first = FileLock::acquire(&path, Duration::ZERO).unwrap();
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
}
