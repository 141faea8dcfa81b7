//! Where everything lies under a root, and how it is reached.
//!
//! ```text
//! ROOT/                                   the operator's --root (may be a shared volume)
//!   current -> .dagsnap/snapshots/<sha>   the link (--link, may be nested: dags/current);
//!                                         readers use only this path
//!   .dagsnap-link-<pid>-<random>          a link being swapped in (link.rs); gone at once
//!   .airflowignore                        ".dagsnap", so a dags_folder of ROOT skips the store
//!   .dagsnap.aside-<millis>-<pid>-<rand>  something that was not a directory where the store
//!                                         goes, moved aside (never deleted by dagsnap)
//!   .dagsnap/                             the store
//!     lock                                advisory lock: link decisions and GC run under it
//!     claim.lock, publishers              publisher registration (records::claims)
//!     source.json                         the repository and ref this root follows
//!     link                                the link's path relative to the root, for operators
//!     publications/<observed>-<published>-<who>.json   one file per publication; the newest
//!                                         believed one is what the link should show
//!     journal.jsonl                       every publication, oldest first (trimmed at 1 MiB)
//!     pin.json                            present while an operator pins a snapshot
//!     signatures.json                     present while publishers run with --verify-signatures
//!     state.json                          the latest publication as dagsnap < 0.3 kept it
//!     publishers.d/<host>.<pid>.json      each publisher's record and heartbeat (locked)
//!     verdicts/<sha>.<fp>.json            what --check-command (or --verify-signatures) said
//!     verdicts/<sha>.<fp>.checking        locked by the publisher running that check
//!     leases/<sha>.<holder>.json          a reader asking GC to keep a snapshot (the Airflow
//!                                         bundle writes these: part of the contract)
//!     manifests/<sha>.json, .entries      what each snapshot holds, as built
//!     snapshots/<sha>/                    complete, read-only trees
//!     snapshots/.staging-<host>.<pid>.<time>.<n>   trees being written; never linked
//!     snapshots/.repair/<sha>             a repair's fresh copy, linked for a moment
//!     snapshots/.repair/.staging-*        a fresh copy being written
//!     snapshots/.retired-<sha>.<secs>.<n> a copy a repair replaced, kept for --grace
//!     snapshots/.trash-<label>.<millis>.<n>  snapshots and staging on their way out
//!     .trash-<name>.<millis>.<n>          a store directory that was not a directory, set aside
//!     trash/                              where dagsnap < 0.2 put the trash (emptied if found)
//! ```
//!
//! Every path under ROOT is built here and reached from the root's directory descriptor, one
//! name at a time, without following a symlink ([`Store`], [`crate::fsutil::Dir`]): anyone who
//! can write the volume can put a symlink anywhere, and a path string is resolved again by the
//! kernel at every call. Only ROOT itself, the operator's choice, is opened by its path.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::gitsync;
use super::records::{warn_damaged, Records};
use super::StoreError;
use crate::commit::CommitId;
use crate::fsutil::lock::FileLock;
use crate::fsutil::{self, is_not_a_directory, Dir, Found, IoError};

pub(crate) const STORE_DIR: &str = ".dagsnap";
pub(super) const SNAPSHOTS_DIR: &str = "snapshots";
pub(super) const MANIFESTS_DIR: &str = "manifests";
pub(super) const STAGING_PREFIX: &str = ".staging-";
pub(super) const AIRFLOWIGNORE: &str = ".airflowignore";
const LOCK_FILE: &str = "lock";
/// The link's path relative to the root, as the sync loops were configured, for operator
/// commands run without `--link`.
const LINK_FILE: &str = "link";
pub(super) const DEFAULT_LINK: &str = "current";
/// Prefix of what is on its way out (see `lifecycle`).
pub(super) const TRASH_PREFIX: &str = ".trash-";
/// Where a repair builds a fresh copy of a damaged snapshot (see `store::repair`).
pub(super) const REPAIR_DIR: &str = ".repair";
/// Prefix of directories that stopped being served but that readers may still hold.
pub(super) const RETIRED_PREFIX: &str = ".retired-";
/// Where dagsnap before 0.2 put the trash (emptied if found).
pub(super) const LEGACY_TRASH_DIR: &str = "trash";
/// Directories of the store that are created when first needed (or, `trash`, no longer); at
/// every cycle, something else in the place of one is moved aside.
const OPTIONAL_DIRS: &[&str] = &[
    "publications",
    "publishers.d",
    "verdicts",
    "leases",
    LEGACY_TRASH_DIR,
];
/// How far in the future (by this host's clock) another publisher's observation of the remote
/// may lie and still be believed. Clocks of NTP-synchronized nodes differ by milliseconds; an
/// observation further ahead comes from a clock that ran ahead (or this one was stepped back),
/// and trusting it would stop every correctly clocked publisher until that time.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Proof that the root's lock is held, required by every operation that moves the link.
#[derive(Debug)]
pub struct RootLock {
    _lock: FileLock,
}

/// A published root at a path, with the link at `link_rel` under `link_base`: the root itself,
/// or, for a link outside the root (git-sync's `--root=R/root --link=R/other/dir/link`), the
/// deepest directory holding both.
#[derive(Debug, Clone)]
pub struct Root {
    pub(super) root: PathBuf,
    pub(super) link_rel: PathBuf,
    /// Where `link_rel` starts: the root, or a directory holding both the root and the link.
    pub(super) link_base: PathBuf,
    /// The root relative to `link_base` (empty when the link is inside the root).
    pub(super) root_from_base: PathBuf,
    /// Other top-level names that belong to this configuration (a touch or error file kept in
    /// the root, as git-sync's defaults have them), so a restart does not take them for foreign.
    pub(super) own_entries: Vec<std::ffi::OsString>,
    /// `--adopt-git-sync`: git-sync's files are expected here, and its link is taken over once
    /// git-sync has left the root alone this long (see `store::gitsync`).
    pub(super) adopt_git_sync: Option<Duration>,
}

impl Root {
    /// Describe the root at `root` with its link at `link` (relative to the root, no `..`).
    /// Nothing is read or written yet.
    pub fn new(root: &Path, link: &Path) -> Result<Root, StoreError> {
        let invalid = |reason| StoreError::InvalidLink {
            given: link.display().to_string(),
            reason,
        };
        if link.as_os_str().is_empty() {
            return Err(invalid("it is empty"));
        }
        if link.is_absolute() {
            return Err(invalid(
                "it must be a path relative to --root, like 'current'",
            ));
        }
        if !link.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid("it must stay inside --root (no '..' or '.')"));
        }
        if link.components().next().map(|c| c.as_os_str()) == Some(STORE_DIR.as_ref()) {
            return Err(invalid("it must not be inside the .dagsnap store"));
        }
        Ok(Root {
            root: root.to_path_buf(),
            link_rel: link.to_path_buf(),
            link_base: root.to_path_buf(),
            root_from_base: PathBuf::new(),
            own_entries: Vec::new(),
            adopt_git_sync: None,
        })
    }

    /// Describe the root at `root` with its link at the absolute `link`, outside the root (as
    /// git-sync allows). The link is reached from the deepest directory holding both, with the
    /// same rule as inside the root: every directory on the way is a real directory; its target
    /// is relative (`../root/.dagsnap/snapshots/<commit>`), so it resolves the same wherever the
    /// volume is mounted.
    fn with_outside_link(root: &Path, link: &Path) -> Result<Root, StoreError> {
        let invalid = |reason| StoreError::InvalidLink {
            given: link.display().to_string(),
            reason,
        };
        let (root_abs, link_abs) = (absolute(root), absolute(link));
        let base: PathBuf = root_abs
            .components()
            .zip(link_abs.components())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect();
        // Below a directory the two share, other than `/`: the link is on the root's volume.
        if base.parent().is_none() {
            return Err(invalid(
                "an absolute --link outside --root must share a directory with it other than / (the root's volume)",
            ));
        }
        let link_rel = link_abs
            .strip_prefix(&base)
            .map_err(|_| invalid("it shares no directory with --root"))?
            .to_path_buf();
        if link_rel.as_os_str().is_empty() || root_abs.starts_with(&link_abs) {
            return Err(invalid("it must not be --root or a directory holding it"));
        }
        if !link_rel
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(invalid("it must be a plain path (no '..' or '.')"));
        }
        let root_from_base = root_abs
            .strip_prefix(&base)
            .map_err(|_| invalid("it shares no directory with --root"))?
            .to_path_buf();
        Ok(Root {
            root: root.to_path_buf(),
            link_rel,
            link_base: base,
            root_from_base,
            own_entries: Vec::new(),
            adopt_git_sync: None,
        })
    }

    /// The root at `root` with its link at `link`, which may be relative to the root or an
    /// absolute path inside it (git-sync's `--link` may be either). Without `link`: the link the
    /// root's publishers recorded, else `current`.
    pub fn locate(root: &Path, link: Option<&Path>) -> Result<Root, StoreError> {
        let link = match link {
            Some(link) => link.to_path_buf(),
            None => Self::recorded_link(root).unwrap_or_else(|| PathBuf::from(DEFAULT_LINK)),
        };
        if !link.is_absolute() {
            return Root::new(root, &link);
        }
        match absolute(&link).strip_prefix(absolute(root)) {
            Ok(inside) => Root::new(root, inside),
            Err(_) => Root::with_outside_link(root, &link),
        }
    }

    /// The link recorded in the root at `root`, if readable and valid.
    fn recorded_link(root: &Path) -> Option<PathBuf> {
        let store = Store::of(root).open().ok()??;
        let Ok(Found::Bytes(bytes)) = store.read_record(LINK_FILE, 4096) else {
            return None;
        };
        let text = String::from_utf8(bytes).ok()?;
        let link = PathBuf::from(text.trim_end_matches('\n'));
        // Input like any other: only a link `Root::locate` accepts.
        Root::locate(root, Some(&link)).ok().map(|_| link)
    }

    /// The link as recorded for operator commands: relative to the root, or absolute when it
    /// is outside it.
    fn link_record(&self) -> PathBuf {
        if self.root_from_base.as_os_str().is_empty() {
            self.link_rel.clone()
        } else {
            absolute(&self.link_base).join(&self.link_rel)
        }
    }

    /// Record this root's link for operator commands, unless already recorded.
    pub fn record_link(&self) -> Result<(), StoreError> {
        let record = self.link_record();
        if Self::recorded_link(&self.root).as_deref() == Some(record.as_path()) {
            return Ok(());
        }
        let mut text = record.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        Ok(self.store().create()?.write_atomically(LINK_FILE, &text)?)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn link_path(&self) -> PathBuf {
        self.link_base.join(&self.link_rel)
    }

    /// The directory the link's path starts from (the root, unless the link is outside it).
    pub(super) fn link_base(&self) -> &Path {
        &self.link_base
    }

    /// The link's target for the snapshot directory `in_store` (relative to the store):
    /// relative to the link's directory, so that it resolves the same in every pod.
    pub(super) fn target_in_store(&self, in_store: &Path) -> PathBuf {
        super::link::path_to_root(&self.link_rel)
            .join(&self.root_from_base)
            .join(STORE_DIR)
            .join(in_store)
    }

    /// The link's path relative to the root, as readers' configuration names it.
    pub fn link_rel(&self) -> &Path {
        &self.link_rel
    }

    /// The journal, the latest publication, the pin and the claim.
    pub fn records(&self) -> Records {
        Records::at(self.store())
    }

    /// The store directory, `ROOT/.dagsnap`.
    pub fn store(&self) -> Store {
        Store::of(&self.root)
    }

    /// Where the snapshot of `commit` is (for messages and the programs run in it).
    pub fn snapshot_path(&self, commit: &CommitId) -> PathBuf {
        self.store().path().join(SNAPSHOTS_DIR).join(commit)
    }

    /// Where a repair keeps its fresh copy of `commit` (see `store::repair`).
    pub fn fresh_copy_path(&self, commit: &CommitId) -> PathBuf {
        self.store()
            .path()
            .join(SNAPSHOTS_DIR)
            .join(REPAIR_DIR)
            .join(commit)
    }

    /// `snapshots/`, for reading: `None` if it (or the store) is not there.
    pub(super) fn snapshots_dir(&self) -> Result<Option<Dir>, StoreError> {
        self.store().read_dir(SNAPSHOTS_DIR)
    }

    /// `snapshots/`, created if missing.
    pub(super) fn snapshots_dir_created(&self) -> Result<Dir, StoreError> {
        self.store().ensure(SNAPSHOTS_DIR)
    }

    /// `snapshots/.repair/`, for reading.
    pub(super) fn repair_dir(&self) -> Result<Option<Dir>, StoreError> {
        match self.snapshots_dir()? {
            Some(snapshots) => read_sub(&snapshots, REPAIR_DIR),
            None => Ok(None),
        }
    }

    /// `manifests/`, for reading.
    pub(super) fn manifests_dir(&self) -> Result<Option<Dir>, StoreError> {
        self.store().read_dir(MANIFESTS_DIR)
    }

    /// Create the store's directories where they are missing (at start-up, and again by a
    /// running loop that finds them gone), with explicit modes whatever the umask. Something
    /// else than a real directory in the place of one (a symlink could put snapshots, records
    /// and what GC deletes outside the root) is moved aside, with a warning, and the directory
    /// made again; the store's other directories are checked the same way, and made again
    /// when next needed.
    pub fn ensure_layout(&self) -> Result<(), StoreError> {
        let store = self.store();
        let dir = store.create()?;
        let snapshots = ensure_in(&dir, SNAPSHOTS_DIR)?;
        ensure_in(&dir, MANIFESTS_DIR)?;
        for name in OPTIONAL_DIRS {
            move_aside_unless_dir(&dir, name)?;
        }
        move_aside_unless_dir(&snapshots, REPAIR_DIR)
    }

    /// Take the root's lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<RootLock, StoreError> {
        let store = self.store().create()?;
        let lock = FileLock::acquire_in(&store, LOCK_FILE, timeout)?;
        Ok(RootLock { _lock: lock })
    }

    /// Fail unless this looks like a dagsnap root (for the read-only commands).
    pub fn require_initialized(&self) -> Result<(), StoreError> {
        match self.store().open()? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotARoot {
                root: self.root.clone(),
            }),
        }
    }

    /// Fail with a clear message unless this process may write the root (for rollback, pin,
    /// unpin, gc; the read-only commands work on a read-only mount).
    pub fn require_writable(&self) -> Result<(), StoreError> {
        self.require_initialized()?;
        let store = self.store().path();
        match nix::unistd::access(&store, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => Ok(()),
            // The mount is read-only: another mount of the volume may not be.
            Err(errno @ nix::errno::Errno::EROFS) => Err(StoreError::ReadOnly {
                root: self.root.clone(),
                cause: std::io::Error::from(errno).to_string(),
            }),
            // The files belong to another user: the same mount works for that user.
            Err(errno) => Err(StoreError::NotWritableByUs {
                root: self.root.clone(),
                cause: std::io::Error::from(errno).to_string(),
                uid: nix::unistd::geteuid().as_raw(),
            }),
        }
    }

    /// Whether a name at the top of the root belongs to dagsnap or to this configuration.
    pub(super) fn owns_top_entry(&self, name: &OsStr) -> bool {
        let name_str = name.to_string_lossy();
        // A link outside the root has no entry in it.
        let link_top = self
            .root_from_base
            .as_os_str()
            .is_empty()
            .then(|| self.link_rel.components().next().map(|c| c.as_os_str()))
            .flatten();
        name_str.starts_with(STORE_DIR)
            || (self.adopt_git_sync.is_some() && gitsync::is_git_sync_entry(name))
            || name_str == AIRFLOWIGNORE
            || Some(name) == link_top
            || self.own_entries.iter().any(|own| own == name)
    }
}

/// `ROOT/.dagsnap`, reached from the root's descriptor without following a symlink.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub(super) fn of(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    /// Where it is, for messages.
    pub fn path(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }

    /// The root it belongs to, for messages.
    pub fn root_path(&self) -> &Path {
        &self.root
    }

    /// The root directory itself, opened by its path (the operator's choice).
    pub fn root_dir(&self) -> Result<Dir, StoreError> {
        Ok(Dir::open_path(&self.root)?)
    }

    /// The store directory; `None` if there is none. Something else than a directory there is
    /// [`StoreError::NotARealDirectory`].
    pub fn open(&self) -> Result<Option<Dir>, StoreError> {
        let root = match Dir::open_path(&self.root) {
            Ok(root) => root,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        root.open_dir(STORE_DIR)
            .map_err(|e| not_real(&root, STORE_DIR, e))
    }

    /// The store directory, created if missing; something else in its place (a symlink, a
    /// file) is moved aside in the root, with a warning.
    pub fn create(&self) -> Result<Dir, StoreError> {
        let root = self.root_dir()?;
        let mode = fsutil::dir_mode();
        match root.create_dir(STORE_DIR, mode) {
            Ok((dir, _)) => Ok(dir),
            Err(e) if is_not_a_directory(&e) => {
                let aside = format!("{STORE_DIR}.aside-{}-{}", millis(), fsutil::unique_suffix());
                tracing::warn!(path = %root.join(STORE_DIR).display(), moved_to = %root.join(&aside).display(), "the store is not a real directory (anyone who can write the volume could have put a symlink there); moving it aside and starting a new store");
                root.rename(STORE_DIR, &aside)?;
                Ok(root.create_dir(STORE_DIR, mode)?.0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The store's directory `name`, for reading: `None` if it or the store is missing. One
    /// that is not a real directory is warned about and taken as missing (the next cycle's
    /// [`Root::ensure_layout`] moves it aside).
    pub fn read_dir(&self, name: &str) -> Result<Option<Dir>, StoreError> {
        match self.open()? {
            Some(store) => read_sub(&store, name),
            None => Ok(None),
        }
    }

    /// The store's directory `name`, created if missing (see [`ensure_in`]).
    pub fn ensure(&self, name: &str) -> Result<Dir, StoreError> {
        ensure_in(&self.create()?, name)
    }
}

/// `parent/name` for reading; something else than a directory there is damage, ignored.
fn read_sub(parent: &Dir, name: &str) -> Result<Option<Dir>, StoreError> {
    match parent.open_dir(name) {
        Ok(dir) => Ok(dir),
        Err(e) if is_not_a_directory(&e) => {
            let what = describe(parent, name);
            warn_damaged(
                &parent.join(name),
                &format!("it is {what}, not a directory"),
                "ignoring it; the next publish moves it aside",
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `parent/name`, created (mode [`fsutil::dir_mode`], whatever the umask) if missing.
/// Something else in its place is moved into the trash beside it (`.trash-<name>.*`, which GC
/// deletes later without following it), with a warning, and the directory is created anew.
pub(super) fn ensure_in(parent: &Dir, name: &str) -> Result<Dir, StoreError> {
    let mode = fsutil::dir_mode();
    match parent.create_dir(name, mode) {
        Ok((dir, _)) => Ok(dir),
        Err(e) if is_not_a_directory(&e) => {
            let what = describe(parent, name);
            let aside = trash_name(name);
            tracing::warn!(path = %parent.join(name).display(), found = what, "a directory of the store is not a real directory (anyone who can write the volume could have put a symlink there); moving it aside and creating it again");
            parent.rename(name, &aside)?;
            Ok(parent.create_dir(name, mode)?.0)
        }
        Err(e) => Err(e.into()),
    }
}

/// Move `parent/name` aside (see [`ensure_in`]) if something else than a directory is there.
fn move_aside_unless_dir(parent: &Dir, name: &str) -> Result<(), StoreError> {
    match parent.kind(name)? {
        None | Some(fsutil::Kind::Dir) => Ok(()),
        Some(kind) => {
            tracing::warn!(path = %parent.join(name).display(), found = kind.described(), "a directory of the store is not a real directory (anyone who can write the volume could have put a symlink there); moving it aside");
            Ok(parent.rename(name, trash_name(name))?)
        }
    }
}

/// What is at `parent/name`, in a few words.
fn describe(parent: &Dir, name: &str) -> &'static str {
    match parent.kind(name) {
        Ok(Some(kind)) => kind.described(),
        _ => "not a directory",
    }
}

/// The store error for `name` in `parent` not being a real directory.
fn not_real(parent: &Dir, name: &str, e: IoError) -> StoreError {
    if is_not_a_directory(&e) {
        StoreError::NotARealDirectory {
            path: parent.join(name),
            what: describe(parent, name),
        }
    } else {
        e.into()
    }
}

/// A name in the trash for something called `label`: `.trash-<label>.<millis>.<unique>`.
pub(super) fn trash_name(label: &str) -> String {
    format!(
        "{TRASH_PREFIX}{label}.{}.{}",
        millis(),
        fsutil::unique_suffix()
    )
}

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `p` made absolute lexically (without resolving symlinks), without `.` components.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_must_stay_inside_root() {
        let root = Path::new("/dags");
        assert!(Root::new(root, Path::new("../x")).is_err());
        assert!(Root::new(root, Path::new("/abs")).is_err());
        assert!(Root::new(root, Path::new(".dagsnap/x")).is_err());
        assert!(Root::new(root, Path::new("dags/current")).is_ok());
    }

    #[test]
    fn a_store_directory_replaced_by_a_symlink_is_moved_aside_and_made_again() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("kept"), b"x").unwrap();
        let top = tempfile::tempdir().unwrap();
        let root = Root::new(top.path(), Path::new("current")).unwrap();
        root.ensure_layout().unwrap();
        let leases = top.path().join(".dagsnap/leases");
        std::os::unix::fs::symlink(outside.path(), &leases).unwrap();
        root.ensure_layout().unwrap();
        assert!(std::fs::symlink_metadata(&leases).is_err(), "moved aside");
        assert!(outside.path().join("kept").exists());
        root.store().ensure("leases").unwrap();
        assert!(std::fs::symlink_metadata(&leases).unwrap().is_dir());
        let aside: Vec<_> = std::fs::read_dir(top.path().join(".dagsnap"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".trash-leases."))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
