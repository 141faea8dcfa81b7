//! A directory held open, and everything done in it by name.
//!
//! Anyone who can write the shared volume can replace a directory with a symlink between two
//! system calls. A path string is resolved again by the kernel at every call, so a check made
//! on it ("it is a real directory") says nothing about the next call. A [`Dir`] is an open
//! descriptor of a real directory; everything done through it names one entry of that
//! directory (never a path with `/`) and uses the `*at` system calls without following a
//! symlink:
//!
//! - a child directory is opened with `O_DIRECTORY | O_NOFOLLOW`: a symlink, or anything but a
//!   directory, in its place is an error, never a way out;
//! - a record is opened with `O_NOFOLLOW | O_NONBLOCK`, checked to be a regular file after the
//!   open (`fstat`), and read up to a cap: a planted FIFO cannot hang the reader, a symlink to
//!   `/dev/zero` cannot exhaust its memory;
//! - files are created with `O_EXCL | O_NOFOLLOW`, replaced by `renameat`, removed by
//!   `unlinkat`; a tree is removed by descending through descriptors ([`Dir::remove_tree`]).
//!
//! Only the first directory, the operator's own `--root` (or a private cache), is opened by
//! path ([`Dir::open_path`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::{unique_suffix, Context, IoError};

/// What is at a name in a directory, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

impl Kind {
    /// The kind `stat` describes.
    pub fn of_stat(stat: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    /// How an error message names it ("a symlink").
    pub fn described(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Other => "a FIFO, socket or device",
        }
    }
}

/// A record file as found: what [`Dir::read_record`] returns.
#[derive(Debug)]
pub enum Found {
    Missing,
    Bytes(Vec<u8>),
    /// Something is there that cannot be a record: why (a symlink, a FIFO, too large).
    Unusable(String),
}

/// An open real directory (see the module doc).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages, and for the programs dagsnap starts in it; never used to reach it.
    path: PathBuf,
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: every caller passes a descriptor a system call has just returned, which nothing
    // else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A single name, as the `*at` calls take it: `name` must not contain `/`.
fn checked(name: &OsStr) -> io::Result<&OsStr> {
    if name.is_empty() || name.as_bytes().contains(&b'/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a single name", name.to_string_lossy()),
        ));
    }
    Ok(name)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Dir {
    /// Open the directory at `path`, following symlinks: only for a path the operator chose
    /// (`--root`, a cache directory).
    pub fn open_path(path: &Path) -> Result<Dir, IoError> {
        let fd = nix::fcntl::openat(
            None,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IoError::new("open directory", path, e.into()))?;
        Ok(Dir {
            fd: own(fd),
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages and for programs started in it.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    fn raw(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> Result<Dir, IoError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| IoError::new("duplicate descriptor of", &self.path, e))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// The child directory `name`, opened without following a symlink. `Ok(None)` if nothing
    /// is there; an error of kind `NotADirectory` (`ENOTDIR`) or `FilesystemLoop` (`ELOOP`) if
    /// something else than a directory is ([`is_not_a_directory`]).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> Result<Option<Dir>, IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let name = checked(name).at("open directory", &path)?;
        match nix::fcntl::openat(self.raw(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir { fd: own(fd), path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(IoError::new("open directory", path, e.into())),
        }
    }

    /// Create the child directory `name` with `mode` (exactly, whatever the umask) unless it
    /// exists, and open it; whether it was created. Something else than a directory there is
    /// an error ([`is_not_a_directory`]).
    pub fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<(Dir, bool), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let name = checked(name).at("create directory", &path)?;
        let created = match nix::sys::stat::mkdirat(self.raw(), name, mode_of(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(IoError::new("create directory", path, e.into())),
        };
        let dir = self
            .open_dir(name)?
            .ok_or_else(|| IoError::new("open directory", &path, Errno::ENOENT.into()))?;
        if created && super::umask() & mode != 0 {
            nix::sys::stat::fchmod(dir.fd.as_raw_fd(), mode_of(mode))
                .map_err(|e| IoError::new("set the mode of", &path, e.into()))?;
        }
        Ok((dir, created))
    }

    /// Create the child directory `name`, which must not exist yet, with `mode` (exactly), and
    /// open it.
    pub fn create_new_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<Dir, IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("create directory", &path)?;
        nix::sys::stat::mkdirat(self.raw(), checked, mode_of(mode))
            .map_err(|e| IoError::new("create directory", &path, e.into()))?;
        let dir = self
            .open_dir(name)?
            .ok_or_else(|| IoError::new("open directory", &path, Errno::ENOENT.into()))?;
        if super::umask() & mode != 0 {
            dir.set_mode(mode)?;
        }
        Ok(dir)
    }

    /// Create the child directory `name` with `mode` (less the umask), without opening it; it
    /// must not exist.
    pub fn make_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<(), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("create directory", &path)?;
        nix::sys::stat::mkdirat(self.raw(), checked, mode_of(mode))
            .map_err(|e| IoError::new("create directory", &path, e.into()))
    }

    /// Set the mode of the directory `name`, which this process just created.
    pub fn set_mode_of(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<(), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("set the mode of", &path)?;
        nix::sys::stat::fchmodat(
            self.raw(),
            checked,
            mode_of(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| IoError::new("set the mode of", &path, e.into()))
    }

    /// The directory at `relative` (components separated by `/`; empty: this one) below this
    /// one, reached without following any symlink on the way: with `openat2(2)` and
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (one system call for the whole path), or, where
    /// the kernel or a seccomp filter does not offer it, one `O_NOFOLLOW` open per component.
    /// A symlink anywhere on the way is an error ([`is_not_a_directory`]).
    pub fn open_beneath(&self, relative: &[u8]) -> Result<Dir, IoError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
        if relative.is_empty() {
            return self.try_clone();
        }
        let rel = OsStr::from_bytes(relative);
        let path = self.join(rel);
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            use nix::fcntl::{OpenHow, ResolveFlag};
            let how = OpenHow::new()
                .flags(DIR_FLAGS)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            match nix::fcntl::openat2(self.fd.as_raw_fd(), rel, how) {
                Ok(fd) => return Ok(Dir { fd: own(fd), path }),
                Err(Errno::ENOSYS | Errno::EPERM | Errno::E2BIG) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed)
                }
                // A symlink on the way, or a `..` climbing out: what O_NOFOLLOW says.
                Err(Errno::EXDEV) => {
                    return Err(IoError::new("open directory", path, Errno::ELOOP.into()))
                }
                Err(e) => return Err(IoError::new("open directory", path, e.into())),
            }
        }
        let mut dir = self.try_clone()?;
        for component in relative.split(|b| *b == b'/') {
            dir = dir
                .open_dir(OsStr::from_bytes(component))?
                .ok_or_else(|| IoError::new("open directory", &path, Errno::ENOENT.into()))?;
        }
        Ok(Dir { fd: dir.fd, path })
    }

    /// What is at `name` (`lstat`), or `None`.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> Result<Option<Kind>, IoError> {
        Ok(self.stat(name)?.map(|s| Kind::of_stat(&s)))
    }

    /// `lstat` of `name`, or `None` if nothing is there.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> Result<Option<FileStat>, IoError> {
        let name = name.as_ref();
        let checked = checked(name).at("inspect", &self.join(name))?;
        match nix::sys::stat::fstatat(self.raw(), checked, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(IoError::new("inspect", self.join(name), e.into())),
        }
    }

    /// `fstat` of this directory itself.
    pub fn stat_self(&self) -> Result<FileStat, IoError> {
        nix::sys::stat::fstat(self.fd.as_raw_fd())
            .map_err(|e| IoError::new("inspect", &self.path, e.into()))
    }

    /// Open the regular file `name` for reading without following a symlink and without
    /// blocking on a FIFO; `Ok(None)` if it is missing, [`Found::Unusable`]-style errors as
    /// `Err(Ok(why))`.
    fn open_regular(&self, name: &OsStr, flags: OFlag) -> Result<Option<fs::File>, Opened> {
        let path = self.join(name);
        let name = checked(name).at("open", &path).map_err(Opened::Failed)?;
        let fd = match nix::fcntl::openat(
            self.raw(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            mode_of(super::file_mode()),
        ) {
            Ok(fd) => own(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(Opened::Unusable(Kind::Symlink.described().into())),
            // A socket, a FIFO without a reader (for writing), a device without a driver.
            Err(Errno::ENXIO | Errno::EOPNOTSUPP) => {
                return Err(Opened::Unusable(Kind::Other.described().into()))
            }
            Err(Errno::EISDIR) => return Err(Opened::Unusable(Kind::Dir.described().into())),
            Err(e) => return Err(Opened::Failed(IoError::new("open", path, e.into()))),
        };
        let stat = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| Opened::Failed(IoError::new("inspect", &path, e.into())))?;
        let kind = Kind::of_stat(&stat);
        if kind != Kind::File {
            return Err(Opened::Unusable(kind.described().into()));
        }
        // Reads of a regular file never block; clear the flag so that they never say EAGAIN.
        let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags));
        Ok(Some(fs::File::from(fd)))
    }

    /// Read the record `name`: a regular file of at most `cap` bytes. A symlink, a FIFO, a
    /// device or a directory there, or a larger file, is [`Found::Unusable`] (damaged), never
    /// followed, waited on, or read whole.
    pub fn read_record(&self, name: impl AsRef<OsStr>, cap: u64) -> Result<Found, IoError> {
        let name = name.as_ref();
        let file = match self.open_regular(name, OFlag::O_RDONLY) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(Found::Missing),
            Err(Opened::Unusable(why)) => return Ok(Found::Unusable(format!("it is {why}"))),
            Err(Opened::Failed(e)) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .at("read", &self.join(name))?;
        if bytes.len() as u64 > cap {
            return Ok(Found::Unusable(format!("it is larger than {cap} bytes")));
        }
        Ok(Found::Bytes(bytes))
    }

    /// Open the regular file `name` (created with the store's file mode if missing) for
    /// reading and writing, without following a symlink: lock files and records rewritten in
    /// place. Something else than a regular file there is an error naming it.
    pub fn open_rw(&self, name: impl AsRef<OsStr>, create: bool) -> Result<fs::File, IoError> {
        let name = name.as_ref();
        let flags = OFlag::O_RDWR
            | if create {
                OFlag::O_CREAT
            } else {
                OFlag::empty()
            };
        match self.open_regular(name, flags) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => Err(IoError::new("open", self.join(name), Errno::ENOENT.into())),
            Err(Opened::Unusable(why)) => Err(not_regular(&self.join(name), &why)),
            Err(Opened::Failed(e)) => Err(e),
        }
    }

    /// Open the regular file `name` for reading, without following a symlink or blocking on a
    /// FIFO; `None` if it is missing. Something else than a regular file there is an error
    /// ([`is_not_regular`]).
    pub fn open_read(&self, name: impl AsRef<OsStr>) -> Result<Option<fs::File>, IoError> {
        let name = name.as_ref();
        match self.open_regular(name, OFlag::O_RDONLY) {
            Ok(file) => Ok(file),
            Err(Opened::Unusable(why)) => Err(not_regular(&self.join(name), &why)),
            Err(Opened::Failed(e)) => Err(e),
        }
    }

    /// Open the regular file `name` for appending, created if missing.
    pub fn open_append(&self, name: impl AsRef<OsStr>) -> Result<fs::File, IoError> {
        let name = name.as_ref();
        match self.open_regular(name, OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => Err(IoError::new("open", self.join(name), Errno::ENOENT.into())),
            Err(Opened::Unusable(why)) => Err(not_regular(&self.join(name), &why)),
            Err(Opened::Failed(e)) => Err(e),
        }
    }

    /// Create the file `name`, which must not exist (`O_EXCL`: a symlink there is not followed,
    /// it is an error), with `mode`.
    pub fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<fs::File, IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("create", &path)?;
        let fd = nix::fcntl::openat(
            self.raw(),
            checked,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            mode_of(mode),
        )
        .map_err(|e| IoError::new("create", &path, e.into()))?;
        Ok(fs::File::from(own(fd)))
    }

    /// Write `contents` as `name` atomically: a temporary sibling created exclusively, fsync,
    /// `renameat` over the name (which replaces a file or a symlink there, never what a symlink
    /// points at). A reader sees the old or the new content, never a torn one.
    pub fn write_atomically(
        &self,
        name: impl AsRef<OsStr>,
        contents: &[u8],
    ) -> Result<(), IoError> {
        let name = name.as_ref();
        let temp = self.write_temporary(name, contents)?;
        let renamed = self.rename(&temp, name);
        if renamed.is_err() {
            let _ = self.remove_file(&temp);
        }
        renamed
    }

    /// Write `contents` to a new temporary file next to where `name` will go, synced; its name.
    pub fn write_temporary(&self, name: &OsStr, contents: &[u8]) -> Result<OsString, IoError> {
        let mut temp = OsString::from(".tmp-");
        temp.push(name);
        temp.push(format!("-{}", unique_suffix()));
        let written = (|| {
            let mut file = self.create_new(&temp, super::file_mode())?;
            file.write_all(contents).at("write", &self.join(&temp))?;
            file.sync_all().at("fsync", &self.join(&temp))
        })();
        if let Err(e) = written {
            let _ = self.remove_file(&temp);
            return Err(e);
        }
        Ok(temp)
    }

    /// `renameat(from, to)` within this directory.
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<(), IoError> {
        self.rename_to(from, self, to)
    }

    /// `renameat(from, into/to)`.
    pub fn rename_to(
        &self,
        from: impl AsRef<OsStr>,
        into: &Dir,
        to: impl AsRef<OsStr>,
    ) -> Result<(), IoError> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let path = self.join(from);
        let from = checked(from).at("rename", &path)?;
        let to = checked(to).at("rename", &into.join(to))?;
        nix::fcntl::renameat(self.raw(), from, into.raw(), to)
            .map_err(|e| IoError::new("rename", path, e.into()))
    }

    /// `linkat(from, to)` within this directory, without following a symlink at `from`.
    pub fn hard_link(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Result<(), IoError> {
        self.hard_link_to(from, self, to)
    }

    /// `linkat(from, into/to)`, without following a symlink at `from`.
    pub fn hard_link_to(
        &self,
        from: impl AsRef<OsStr>,
        into: &Dir,
        to: impl AsRef<OsStr>,
    ) -> Result<(), IoError> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let path = into.join(to);
        let from = checked(from).at("create", &path)?;
        let to = checked(to).at("create", &path)?;
        nix::unistd::linkat(self.raw(), from, into.raw(), to, AtFlags::empty())
            .map_err(|e| IoError::new("create", path, e.into()))
    }

    /// Remove the file, symlink or other non-directory `name`; a missing one is fine.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> Result<(), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("remove", &path)?;
        match nix::unistd::unlinkat(self.raw(), checked, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(IoError::new("remove", path, e.into())),
        }
    }

    /// Remove the empty directory `name`.
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> Result<(), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("remove", &path)?;
        nix::unistd::unlinkat(self.raw(), checked, UnlinkatFlags::RemoveDir)
            .map_err(|e| IoError::new("remove", path, e.into()))
    }

    /// Delete `name` and, if it is a directory, everything in it, restoring owner write
    /// permission on each directory first (snapshots are read-only). Each directory is entered
    /// through a descriptor opened with `O_NOFOLLOW` from its parent's, so a symlink is removed,
    /// never followed, and a directory replaced by a symlink halfway is not entered: nothing
    /// outside `name` is touched. Entries that another process deletes meanwhile are fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> Result<(), IoError> {
        let name = name.as_ref();
        match self.kind(name)? {
            None => Ok(()),
            Some(Kind::Dir) => {
                match self.open_dir(name) {
                    Ok(Some(dir)) => dir.empty()?,
                    Ok(None) => return Ok(()),
                    // Replaced by something else since: remove that instead.
                    Err(e) if is_not_a_directory(&e) => return self.remove_file(name),
                    Err(e) => return Err(e),
                }
                match self.remove_dir(name) {
                    Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
                    other => other,
                }
            }
            Some(_) => self.remove_file(name),
        }
    }

    /// Remove everything in this directory (see [`Dir::remove_tree`]).
    fn empty(&self) -> Result<(), IoError> {
        let stat = self.stat_self()?;
        if stat.st_mode & 0o700 != 0o700 {
            nix::sys::stat::fchmod(
                self.fd.as_raw_fd(),
                Mode::from_bits_truncate((stat.st_mode | 0o700) & 0o7777),
            )
            .map_err(|e| IoError::new("restore write permission on", &self.path, e.into()))?;
        }
        for (name, kind) in self.entries()? {
            match kind {
                Some(Kind::Dir) | None => self.remove_tree(&name)?,
                Some(_) => self.remove_file(&name)?,
            }
        }
        Ok(())
    }

    /// The names in this directory (without `.` and `..`), with their kind when the
    /// filesystem says it without a `stat` (`d_type`).
    pub fn entries(&self) -> Result<Vec<(OsString, Option<Kind>)>, IoError> {
        let mut listing = nix::dir::Dir::openat(
            self.raw(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IoError::new("list", &self.path, e.into()))?;
        let mut found = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| IoError::new("list", &self.path, e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            use nix::dir::Type;
            let kind = match entry.file_type() {
                Some(Type::Directory) => Some(Kind::Dir),
                Some(Type::File) => Some(Kind::File),
                Some(Type::Symlink) => Some(Kind::Symlink),
                Some(_) => Some(Kind::Other),
                None => None,
            };
            found.push((name.to_os_string(), kind));
        }
        Ok(found)
    }

    /// The names in this directory.
    pub fn names(&self) -> Result<Vec<OsString>, IoError> {
        Ok(self.entries()?.into_iter().map(|(name, _)| name).collect())
    }

    /// Make this directory's entries (creations, renames, removals) durable.
    pub fn fsync(&self) -> Result<(), IoError> {
        nix::unistd::fsync(self.fd.as_raw_fd())
            .map_err(|e| IoError::new("fsync directory", &self.path, e.into()))
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: impl AsRef<OsStr>) -> Result<PathBuf, IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("read link", &path)?;
        nix::fcntl::readlinkat(self.raw(), checked)
            .map(PathBuf::from)
            .map_err(|e| IoError::new("read link", path, e.into()))
    }

    /// Create the symlink `name` pointing at `target`.
    pub fn symlink(&self, target: &Path, name: impl AsRef<OsStr>) -> Result<(), IoError> {
        let name = name.as_ref();
        let path = self.join(name);
        let checked = checked(name).at("create symlink", &path)?;
        nix::unistd::symlinkat(target, self.raw(), checked)
            .map_err(|e| IoError::new("create symlink", path, e.into()))
    }

    /// Set the mode of this directory itself.
    pub fn set_mode(&self, mode: u32) -> Result<(), IoError> {
        nix::sys::stat::fchmod(self.fd.as_raw_fd(), mode_of(mode))
            .map_err(|e| IoError::new("set the mode of", &self.path, e.into()))
    }

    /// `syncfs(2)` of the filesystem holding this directory.
    pub fn sync_filesystem(&self) -> Result<(), IoError> {
        nix::unistd::syncfs(self.fd.as_raw_fd())
            .map_err(|e| IoError::new("syncfs", &self.path, e.into()))
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// How [`Dir::open_regular`] failed.
enum Opened {
    Unusable(String),
    Failed(IoError),
}

fn mode_of(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode as nix::libc::mode_t)
}

fn not_regular(path: &Path, what: &str) -> IoError {
    IoError::new(
        "use",
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {what}, where dagsnap keeps a regular file"),
        ),
    )
}

/// Whether `error` says that something else than a directory is where one was expected (a
/// symlink, a file): what [`Dir::open_dir`] and [`Dir::create_dir`] fail with then.
pub(crate) fn is_not_a_directory(error: &IoError) -> bool {
    matches!(error.errno(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
}

/// Whether `error` says that something else than a regular file is where one was expected.
pub(crate) fn is_not_regular(error: &IoError) -> bool {
    error.source.kind() == io::ErrorKind::InvalidData
        || matches!(error.errno(), Some(libc::ELOOP) | Some(libc::EISDIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_in_place_of_a_directory_is_never_entered() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("kept"), b"x").unwrap();
        let top = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("trash")).unwrap();
        let dir = Dir::open_path(top.path()).unwrap();
        let err = dir.open_dir("trash").unwrap_err();
        assert!(is_not_a_directory(&err), "{err}");
        let err = dir.create_dir("trash", 0o755).unwrap_err();
        assert!(is_not_a_directory(&err), "{err}");
        dir.remove_tree("trash").unwrap();
        assert!(outside.path().join("kept").exists());
        assert!(
            dir.kind("trash").unwrap().is_none(),
            "the symlink itself went"
        );
    }

    #[test]
    fn records_are_regular_files_of_bounded_size() {
        let top = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(top.path()).unwrap();
        nix::unistd::mkfifo(&top.path().join("fifo"), Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/dev/zero", top.path().join("zero")).unwrap();
        fs::write(top.path().join("big"), vec![b'x'; 100]).unwrap();
        fs::write(top.path().join("ok"), b"{}").unwrap();
        for (name, why) in [
            ("fifo", "FIFO"),
            ("zero", "symlink"),
            ("big", "larger than 10"),
        ] {
            match dir.read_record(name, 10).unwrap() {
                Found::Unusable(found) => assert!(found.contains(why), "{name}: {found}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(dir.read_record("ok", 10).unwrap(), Found::Bytes(b) if b == b"{}"));
        assert!(matches!(
            dir.read_record("none", 10).unwrap(),
            Found::Missing
        ));
        let err = dir.open_rw("zero", true).unwrap_err();
        assert!(is_not_regular(&err), "{err}");
        let err = dir.open_append("fifo").unwrap_err();
        assert!(is_not_regular(&err), "{err}");
    }

    #[test]
    fn remove_tree_deletes_read_only_dirs_without_following_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let kept = outside.path().join("kept");
        fs::write(&kept, b"x").unwrap();

        let store = tempfile::tempdir().unwrap();
        let snap = store.path().join("snap");
        fs::create_dir_all(snap.join("sub")).unwrap();
        fs::write(snap.join("sub/f"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), snap.join("escape")).unwrap();
        for dir in [snap.join("sub"), snap.clone()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        }

        Dir::open_path(store.path())
            .unwrap()
            .remove_tree("snap")
            .unwrap();
        assert!(!snap.exists());
        assert!(kept.exists(), "a symlink inside the tree was followed");
        let mode = fs::metadata(outside.path()).unwrap().permissions().mode();
        assert_ne!(mode & 0o200, 0, "permissions outside the tree were touched");
    }

    #[test]
    fn names_with_a_slash_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(top.path()).unwrap();
        assert!(dir.write_atomically("a/b", b"x").is_err());
        assert!(dir.open_dir("..").is_err());
        dir.write_atomically("a", b"x").unwrap();
        assert!(matches!(dir.read_record("a", 10).unwrap(), Found::Bytes(b) if b == b"x"));
    }
}
