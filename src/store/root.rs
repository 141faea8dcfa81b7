//! The published root: its layout, the snapshot store, and the link.
//!
//! ```text
//! ROOT/
//!   current -> .dagsnap/snapshots/<sha>   the link (--link); readers use only this path
//!   .airflowignore                        ".dagsnap", so a dags_folder of ROOT skips the store
//!   .dagsnap/
//!     lock                                advisory lock: link decisions and GC run under it
//!     claim.lock, publishers              publisher registration (see `records::claims`)
//!     source.json                         the repository and ref this root follows
//!     publications/<observed>-<published>-<who>.json   one file per publication; the newest
//!                                         (greatest name) is what the link should show
//!     journal.jsonl                       every publication, oldest first
//!     publishers.d/<host>.<pid>.json      each publisher's record and heartbeat
//!     pin.json                            present while an operator pins a snapshot
//!     manifests/<sha>.json, .entries      what each snapshot holds
//!     snapshots/<sha>/                    complete, read-only trees
//!     snapshots/.staging-<host>.<pid>.<time>.<n>   trees being written; never linked
//!     snapshots/.trash-*                  snapshots being deleted, outside the lock
//! ```
//!
//! This module owns every path under ROOT (the record files' names are [`Records`]' own, inside
//! the store directory this module gives it). Other modules ask it for a staging directory, hand
//! it back to be installed, and ask it to move the link; none of them builds ROOT paths.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::gitsync;
use crate::entries::Entries;
use crate::fsutil::{self, Context, IoError};
use crate::store::link;
use crate::store::lock::{FileLock, LockError};
use crate::store::records::{
    self, read_json, warn_damaged, PublisherRecord, Read, Records, Registration, SeenPublisher,
};
pub use crate::store::records::{
    rfc3339, Cause, CheckClaim, Claim, DirIdentity, Expected, LinkHistory, LockFault, LockWitness,
    Manifest, ModuleRecord, Pin, Publication, SourceRecord, Verdict,
};

pub const STORE_DIR: &str = ".dagsnap";
const SNAPSHOTS_DIR: &str = "snapshots";
const MANIFESTS_DIR: &str = "manifests";
const STAGING_PREFIX: &str = ".staging-";
const AIRFLOWIGNORE: &str = ".airflowignore";
const LOCK_FILE: &str = "lock";
/// The link's path relative to the root, as the sync loops were configured, for operator
/// commands run without `--link`.
const LINK_FILE: &str = "link";
const DEFAULT_LINK: &str = "current";
/// Prefix of snapshots and staging directories on their way out. They are renamed within
/// `snapshots/`: moving a directory to another parent rewrites its `..` entry, which needs
/// write permission on the directory itself, and snapshots are read-only (`0555`), so a
/// non-root publisher could not move them anywhere else.
const TRASH_PREFIX: &str = ".trash-";
/// Where a repair builds a fresh copy of a damaged snapshot (see `store::repair`).
const REPAIR_DIR: &str = ".repair";
const REPAIR_DIR_PREFIX: &str = ".repair/";
/// Prefix of directories that stopped being served but that readers may still hold (a damaged
/// snapshot replaced by a repair): deleted by GC once older than `--grace`.
const RETIRED_PREFIX: &str = ".retired-";
/// Where dagsnap before 0.2 put the trash (emptied if found).
const LEGACY_TRASH_DIR: &str = "trash";
/// Directories a fresh filesystem brings along; their presence does not make a root foreign.
const FILESYSTEM_ENTRIES: &[&str] = &["lost+found"];
/// How far in the future (by this host's clock) another publisher's observation of the remote
/// may lie and still be believed. Clocks of NTP-synchronized nodes differ by milliseconds; an
/// observation further ahead comes from a clock that ran ahead (or this one was stepped back),
/// and trusting it would stop every correctly clocked publisher until that time.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Mode of the directories dagsnap creates under the root (snapshots are sealed `0555`).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("root {} is not a directory; point --root at a directory (it is created if missing)", path.display())]
    RootNotADirectory { path: PathBuf },
    #[error("root {} is not writable ({cause}); mount the volume read-write and make it writable for uid {uid}", path.display())]
    RootNotWritable {
        path: PathBuf,
        cause: String,
        uid: u32,
    },
    #[error("root {} holds entries dagsnap did not create ({}); point --root at an empty directory or move them away (dagsnap never deletes what it did not create)", root.display(), entries.join(", "))]
    ForeignContent { root: PathBuf, entries: Vec<String> },
    #[error("link {} points to {}, which is not a dagsnap snapshot; move the link away or choose another --link", link.display(), target.display())]
    ForeignLink { link: PathBuf, target: PathBuf },
    #[error("invalid --link '{given}': {reason}")]
    InvalidLink { given: String, reason: &'static str },
    #[error("{} is not a dagsnap root (no {STORE_DIR}/ inside); check --root", root.display())]
    NotARoot { root: PathBuf },
    #[error("{} is {what}, where dagsnap needs a real directory inside the root (a symlink could put what readers see outside it); move it away, or choose another --link", path.display())]
    NotARealDirectory { path: PathBuf, what: &'static str },
    #[error("snapshot {commit} cannot be trusted: {why}. Choose another snapshot; a sync loop rebuilds this one when it publishes the commit again")]
    Untrusted { commit: String, why: String },
    #[error("no retained snapshot matches '{wanted}'; retained: {}. Choose one of these (a prefix of 4 or more digits is enough)", if retained.is_empty() { "none".to_string() } else { retained.join(", ") })]
    NotRetained {
        wanted: String,
        retained: Vec<String>,
    },
    #[error("'{wanted}' matches several snapshots ({}); give more digits", matches.join(", "))]
    Ambiguous {
        wanted: String,
        matches: Vec<String>,
    },
    #[error("root {} is read-only here ({cause}); list, log, status and verify work, but run this command where the volume is mounted read-write", root.display())]
    ReadOnly { root: PathBuf, cause: String },
    #[error("snapshot {commit} disappeared before it could be published (removed by GC or by hand); it is rebuilt on the next cycle")]
    SnapshotGone { commit: String },
    #[error("root {} publishes {theirs} and a publisher of it is running; this one was started for {ours}. Use another --root, or fix --repo/--ref so all publishers of this root agree", root.display())]
    SourceMismatch {
        root: PathBuf,
        theirs: Box<SourceRecord>,
        ours: Box<SourceRecord>,
    },
    #[error(transparent)]
    Link(#[from] link::ReadError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What the link points at right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub commit: String,
    /// False if the snapshot was deleted from under the link (a dangling link).
    pub complete: bool,
    /// The directory the link names: `snapshots/<commit>`, or, while a repair swaps a fresh
    /// copy in, `snapshots/.repair/<commit>`.
    pub dir: PathBuf,
    /// The link names a repair's fresh copy (if this lasts, a repair was interrupted).
    pub in_repair: bool,
}

/// A directory under the store that a snapshot is being written into. Dropping it without
/// [`Root::install`] deletes it, so every failure path cleans up by construction.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fsutil::remove_tree(&self.path) {
            tracing::warn!(error = %e, "could not remove staging directory; the next start removes it");
        }
    }
}

/// What [`Root::publish_if_newer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Published {
        previous: Option<String>,
    },
    /// The link already showed this commit.
    AlreadyCurrent,
    /// Another publisher recorded a later observation of the remote; the link was left alone.
    Superseded {
        newer: Publication,
    },
    /// An operator pinned the link; it was left alone.
    Pinned {
        pin: Pin,
    },
}

/// Result of installing a staged snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Our copy is now `snapshots/<sha>`.
    Ours,
    /// Another publisher installed the same commit first; ours was discarded. Same commit means
    /// same content, so this is success.
    AlreadyThere,
}

/// What [`Root::adopt`] created.
#[derive(Debug, Default, Clone)]
pub struct Created {
    pub root: bool,
    pub store: bool,
    pub link_dirs: Vec<PathBuf>,
    pub airflowignore: bool,
}

/// Proof that the root's lock is held, required by every operation that moves the link.
#[derive(Debug)]
pub struct RootLock {
    _lock: FileLock,
}

/// A published root at a path, with the link at `link_rel` inside it.
#[derive(Debug, Clone)]
pub struct Root {
    root: PathBuf,
    link_rel: PathBuf,
    /// Other top-level names that belong to this configuration (a touch or error file kept in
    /// the root, as git-sync's defaults have them), so a restart does not take them for foreign.
    own_entries: Vec<std::ffi::OsString>,
    /// `--adopt-git-sync`: git-sync's files are expected here, and its link is taken over once
    /// git-sync has left the root alone this long (see `store::gitsync`).
    adopt_git_sync: Option<Duration>,
}

/// The link shows one of git-sync's worktrees (a root being taken over from git-sync).
#[derive(Debug, Clone)]
pub struct GitSyncLive {
    pub commit: String,
    pub dir: PathBuf,
    /// When git-sync last wrote the root.
    pub last_write: Option<SystemTime>,
}

impl GitSyncLive {
    /// How long git-sync has left the root alone (zero if it wrote in the future).
    pub fn quiet_for(&self) -> Duration {
        self.last_write
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .unwrap_or(Duration::MAX)
    }
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
            own_entries: Vec::new(),
            adopt_git_sync: None,
        })
    }

    /// Take over git-sync's files and link in this root once git-sync has left it alone for
    /// `after` (`--adopt-git-sync`).
    pub fn adopting_git_sync(mut self, after: Duration) -> Root {
        self.adopt_git_sync = Some(after);
        self
    }

    /// `--adopt-after`, when adopting a git-sync root.
    pub fn adopt_after(&self) -> Option<Duration> {
        self.adopt_git_sync
    }

    /// The git-sync worktree the link shows, when adopting and the link is git-sync's.
    pub fn git_sync_live(&self) -> Option<GitSyncLive> {
        self.adopt_git_sync?;
        let link = self.link_path();
        let target = link::read(&link).ok()??;
        let (commit, dir) = gitsync::worktree_of(&self.root, parent_of(&link), &target)?;
        Some(GitSyncLive {
            commit,
            dir,
            last_write: gitsync::last_write(&self.root, &link, true),
        })
    }

    /// Remove git-sync's files once nobody can need them: the link has been dagsnap's for
    /// `grace` (no reader still holds a worktree it resolved before), and git-sync has not
    /// written the root since the link became dagsnap's (a running git-sync would have taken
    /// it back). Returns what was removed, if anything.
    pub fn remove_git_sync_leftovers(
        &self,
        _lock: &RootLock,
        grace: Duration,
    ) -> Result<Vec<PathBuf>, StoreError> {
        if self.adopt_git_sync.is_none() || !gitsync::present(&self.root) {
            return Ok(Vec::new());
        }
        if !self.current()?.is_some_and(|c| c.complete) {
            return Ok(Vec::new());
        }
        let link = self.link_path();
        let Some(ours_since) = fs::symlink_metadata(&link)
            .ok()
            .and_then(|m| m.modified().ok())
        else {
            return Ok(Vec::new());
        };
        let held_long_enough = SystemTime::now()
            .duration_since(ours_since)
            .is_ok_and(|held| held >= grace);
        let git_sync_quiet_since =
            gitsync::last_write(&self.root, &link, false).is_none_or(|at| at <= ours_since);
        if !(held_long_enough && git_sync_quiet_since) {
            return Ok(Vec::new());
        }
        Ok(gitsync::remove(&self.root)?)
    }

    /// Also accept `path` (a touch or error file this publisher keeps) at start-up, if it is in
    /// the root.
    pub fn owning(mut self, path: &Path) -> Root {
        if let Ok(relative) = path.strip_prefix(&self.root) {
            if let Some(top) = relative.components().next() {
                self.own_entries.push(top.as_os_str().to_owned());
            }
        }
        self
    }

    /// The root at `root` with its link at `link`, which may be relative to the root or an
    /// absolute path inside it (git-sync's `--link` may be either). Without `link`: the link the
    /// root's publishers recorded, else `current`.
    pub fn locate(root: &Path, link: Option<&Path>) -> Result<Root, StoreError> {
        let link = match link {
            Some(link) if link.is_absolute() => {
                let absolute = |p: &Path| -> PathBuf {
                    std::path::absolute(p)
                        .unwrap_or_else(|_| p.to_path_buf())
                        .components()
                        .filter(|c| !matches!(c, Component::CurDir))
                        .collect()
                };
                absolute(link)
                    .strip_prefix(absolute(root))
                    .map(Path::to_path_buf)
                    .map_err(|_| StoreError::InvalidLink {
                        given: link.display().to_string(),
                        reason: "an absolute --link must be inside --root",
                    })?
            }
            Some(link) => link.to_path_buf(),
            None => Self::recorded_link(root).unwrap_or_else(|| PathBuf::from(DEFAULT_LINK)),
        };
        Root::new(root, &link)
    }

    /// The link recorded in the root at `root`, if readable and valid.
    fn recorded_link(root: &Path) -> Option<PathBuf> {
        let text = fs::read_to_string(root.join(STORE_DIR).join(LINK_FILE)).ok()?;
        let link = PathBuf::from(text.trim_end_matches('\n'));
        // Input like any other: only a link `Root::new` accepts.
        Root::new(root, &link).ok().map(|_| link)
    }

    /// Record this root's link for operator commands, unless already recorded.
    pub fn record_link(&self) -> Result<(), StoreError> {
        if Self::recorded_link(&self.root).as_deref() == Some(self.link_rel.as_path()) {
            return Ok(());
        }
        let mut text = self.link_rel.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        Ok(fsutil::write_atomically(
            &self.store().join(LINK_FILE),
            &text,
        )?)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn link_path(&self) -> PathBuf {
        self.root.join(&self.link_rel)
    }

    /// The link's path relative to the root, as readers' configuration names it.
    pub fn link_rel(&self) -> &Path {
        &self.link_rel
    }

    /// The journal, the latest publication, the pin and the claim.
    pub fn records(&self) -> Records {
        Records::at(&self.store())
    }

    fn store(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }

    fn snapshots(&self) -> PathBuf {
        self.store().join(SNAPSHOTS_DIR)
    }

    pub fn snapshot_path(&self, commit: &str) -> PathBuf {
        self.snapshots().join(commit)
    }

    fn repair_dir(&self) -> PathBuf {
        self.snapshots().join(REPAIR_DIR)
    }

    /// Where a repair keeps its fresh copy of `commit` (see `store::repair`).
    pub fn fresh_copy_path(&self, commit: &str) -> PathBuf {
        self.repair_dir().join(commit)
    }

    /// What the link stores to point at the snapshot of `commit` (or its repair's fresh copy):
    /// relative to the link's directory, so it resolves the same in every pod.
    fn link_target(&self, commit: &str, fresh_copy: bool) -> PathBuf {
        let snapshots = link::path_to_root(&self.link_rel)
            .join(STORE_DIR)
            .join(SNAPSHOTS_DIR);
        if fresh_copy {
            snapshots.join(REPAIR_DIR).join(commit)
        } else {
            snapshots.join(commit)
        }
    }

    fn manifest_path(&self, commit: &str) -> PathBuf {
        self.store()
            .join(MANIFESTS_DIR)
            .join(format!("{commit}.json"))
    }

    fn entries_path(&self, commit: &str) -> PathBuf {
        self.store()
            .join(MANIFESTS_DIR)
            .join(format!("{commit}.entries"))
    }

    /// Make the root ready for a publisher, adopting what an earlier run left.
    ///
    /// - A missing root is created; a root that is a file, or not writable, is refused.
    /// - A root holding anything dagsnap did not create (a git-sync checkout, a real directory
    ///   where the link goes, a link to elsewhere) is refused, never cleaned: those files may be
    ///   what readers use today.
    /// - The store directories and `.airflowignore` are created if absent; an existing
    ///   `.airflowignore` is the user's and is left alone.
    /// - Temporary links and this host's staging directories left by a crash are removed.
    ///   Staging directories of other hosts may belong to live publishers and are left alone.
    ///
    /// Nothing is written when everything is already in place, so a restart does not touch
    /// what readers see. Returns what was created, for [`Root::undo_first_start`].
    pub fn adopt(&self) -> Result<Created, StoreError> {
        let mut created = Created::default();
        match fs::metadata(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(fsutil::dir_mode())
                    .create(&self.root)
                    .at("create root", &self.root)?;
                created.root = true;
            }
            Err(e) => return Err(IoError::new("inspect root", &self.root, e).into()),
            Ok(meta) if !meta.is_dir() => {
                return Err(StoreError::RootNotADirectory {
                    path: self.root.clone(),
                })
            }
            Ok(_) => {}
        }
        if let Err(errno) = nix::unistd::access(&self.root, nix::unistd::AccessFlags::W_OK) {
            return Err(StoreError::RootNotWritable {
                path: self.root.clone(),
                cause: io::Error::from(errno).to_string(),
                uid: nix::unistd::geteuid().as_raw(),
            });
        }
        self.refuse_foreign_entries()?;
        self.current()?;

        created.store = !self.store().exists();
        self.ensure_layout()?;
        created.link_dirs = self.ensure_link_parents()?;
        created.airflowignore = self.ensure_airflowignore()?;
        link::remove_stale_temporaries(&self.link_path())?;
        self.remove_own_stale_staging()?;
        Ok(created)
    }

    /// Take back what a first start created ([`Root::adopt`]'s report), if nothing was ever
    /// published here: an operator trying things should not be left with empty roots. Whatever
    /// existed before, or holds a snapshot, stays. Returns what was removed.
    pub fn undo_first_start(&self, created: &Created) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let untouched = self.current().ok().flatten().is_none()
            && self.snapshot_commits().is_ok_and(|c| c.is_empty());
        if !untouched {
            return removed;
        }
        if created.airflowignore {
            let ignore = self.root.join(AIRFLOWIGNORE);
            if fs::remove_file(&ignore).is_ok() {
                removed.push(ignore);
            }
        }
        if created.store && fsutil::remove_tree(&self.store()).is_ok() {
            removed.push(self.store());
        }
        for dir in created.link_dirs.iter().rev() {
            if fs::remove_dir(dir).is_ok() {
                removed.push(dir.clone());
            }
        }
        if created.root && fs::remove_dir(&self.root).is_ok() {
            removed.push(self.root.clone());
        }
        removed
    }

    /// Create the store's directories where they are missing (at start-up, and again by a
    /// running loop that finds them gone), with explicit modes whatever the umask. One that
    /// exists must be a real directory: a symlink there would put snapshots, and what the link
    /// points at, outside the root.
    pub fn ensure_layout(&self) -> Result<(), StoreError> {
        for dir in [
            self.store(),
            self.snapshots(),
            self.store().join(MANIFESTS_DIR),
        ] {
            let _ = make_dir(&dir)?;
        }
        Ok(())
    }

    /// Every directory between the root and the link exists and is a real directory; returns
    /// those it created.
    fn ensure_link_parents(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut at = self.root.clone();
        let mut created = Vec::new();
        let parents: Vec<Component> = self
            .link_rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for component in parents {
            at.push(component);
            if make_dir(&at)? {
                created.push(at.clone());
            }
        }
        Ok(created)
    }

    fn refuse_foreign_entries(&self) -> Result<(), StoreError> {
        let link_top = self
            .link_rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_owned());
        let mut foreign = Vec::new();
        for entry in fs::read_dir(&self.root).at("list root", &self.root)? {
            let entry = entry.at("list root", &self.root)?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let known = name_str.starts_with(STORE_DIR)
                || (self.adopt_git_sync.is_some() && gitsync::is_git_sync_entry(&name))
                || name_str == AIRFLOWIGNORE
                || FILESYSTEM_ENTRIES.contains(&name_str.as_ref())
                || Some(&name) == link_top.as_ref()
                || self.own_entries.contains(&name);
            if !known {
                foreign.push(name_str.into_owned());
            }
        }
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        if foreign.len() > 8 {
            let more = foreign.len() - 8;
            foreign.truncate(8);
            foreign.push(format!("and {more} more"));
        }
        Err(StoreError::ForeignContent {
            root: self.root.clone(),
            entries: foreign,
        })
    }

    /// Write `.airflowignore` unless one exists. It appears whole or not at all: written under a
    /// temporary name, then hard-linked into place (`link(2)` fails if the name exists, so an
    /// operator's file, or one a concurrent publisher just made, is never replaced, and nobody
    /// ever reads a half-written one).
    fn ensure_airflowignore(&self) -> Result<bool, StoreError> {
        let path = self.root.join(AIRFLOWIGNORE);
        if fs::symlink_metadata(&path).is_ok() {
            // Nothing is written when everything is in place (a restart leaves the root as is).
            return self.check_airflowignore(&path).map(|()| false);
        }
        let temp = self
            .store()
            .join(format!(".tmp-airflowignore-{}", fsutil::unique_suffix()));
        let created = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(fsutil::file_mode())
                .open(&temp)
                .at("create", &temp)?;
            file.write_all(format!("{STORE_DIR}\n").as_bytes())
                .at("write", &temp)?;
            file.sync_all().at("fsync", &temp)?;
            fs::hard_link(&temp, &path).at("create", &path)
        })();
        let _ = fs::remove_file(&temp);
        match created {
            Ok(()) => Ok(true),
            Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => {
                self.check_airflowignore(&path).map(|()| false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An existing `.airflowignore` is the operator's; say so if it lets Airflow into the store.
    fn check_airflowignore(&self, path: &Path) -> Result<(), StoreError> {
        let contents = fs::read_to_string(path).unwrap_or_default();
        if !contents.lines().any(|l| l.trim().contains(STORE_DIR)) {
            tracing::warn!(path = %path.display(), "this .airflowignore does not exclude '{STORE_DIR}'; if dags_folder is the root itself, add a line '{STORE_DIR}' or Airflow will parse every snapshot");
        }
        Ok(())
    }

    fn remove_own_stale_staging(&self) -> Result<(), StoreError> {
        let host = fsutil::hostname();
        let me = std::process::id();
        for staging in self.staging_dirs()? {
            let stale = match &staging.owner {
                Some(owner) if owner.host == host => owner.pid == me || !process_alive(owner.pid),
                _ => false,
            };
            if stale {
                tracing::info!(path = %staging.path.display(), "removing staging directory left by an interrupted publish");
                fsutil::remove_tree(&staging.path)?;
            }
        }
        Ok(())
    }

    /// Every staging directory in the store, from any host.
    pub fn staging_dirs(&self) -> Result<Vec<StagingDir>, StoreError> {
        let mut found = Vec::new();
        for dir in [self.snapshots(), self.repair_dir()] {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.at("list", &dir)?,
            };
            for entry in entries {
                let entry = entry.at("list", &dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
                    found.push(StagingDir {
                        path: entry.path(),
                        owner: parse_staging_owner(rest),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Where the link points now. `None` when there is no link yet.
    pub fn current(&self) -> Result<Option<Current>, StoreError> {
        let link = self.link_path();
        let Some(target) = link::read(&link)? else {
            return Ok(None);
        };
        let prefix = link::path_to_root(&self.link_rel)
            .join(STORE_DIR)
            .join(SNAPSHOTS_DIR);
        let rest = target
            .strip_prefix(&prefix)
            .ok()
            .and_then(|rest| rest.to_str());
        let (commit, in_repair) = match rest.map(|r| r.strip_prefix(REPAIR_DIR_PREFIX)) {
            Some(Some(commit)) => (commit, true),
            Some(None) => (rest.unwrap_or_default(), false),
            None => ("", false),
        };
        if !is_commit_id(commit) {
            // git-sync's link, in a root being taken over: nothing of dagsnap's is live yet.
            if self.adopt_git_sync.is_some()
                && gitsync::worktree_of(&self.root, parent_of(&link), &target).is_some()
            {
                return Ok(None);
            }
            return Err(StoreError::ForeignLink {
                link: link.clone(),
                target: target.clone(),
            });
        }
        let dir = if in_repair {
            self.repair_dir().join(commit)
        } else {
            self.snapshot_path(commit)
        };
        let complete = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        Ok(Some(Current {
            commit: commit.to_string(),
            complete,
            dir,
            in_repair,
        }))
    }

    /// Whether `snapshots/<commit>` is a directory (not a symlink to one).
    pub fn has_snapshot(&self, commit: &str) -> bool {
        fs::symlink_metadata(self.snapshot_path(commit)).is_ok_and(|m| m.is_dir())
    }

    /// Whether the installed snapshot of `commit` is one dagsnap built for that commit, before
    /// anything links it. Anyone who can write the volume can put a directory under a commit's
    /// name; readers would get its content as that commit.
    ///
    /// Trusted: a real directory with a readable manifest for `commit` (and for `tree`, when the
    /// caller knows the commit's tree) that records this directory's identity (inode and
    /// modification time, which a rename keeps, so only the directory dagsnap built has them), or,
    /// for a manifest without one (older dagsnap) or a volume restored from a backup, whose
    /// files match the recorded entry list in type, mode and size. Returns why not, otherwise.
    pub fn check_snapshot(&self, commit: &str, expected: Option<&Expected>) -> Result<(), String> {
        let dir = self.snapshot_path(commit);
        let meta = match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => meta,
            Ok(_) => return Err("it is not a directory".into()),
            Err(e) => return Err(format!("it cannot be read ({e})")),
        };
        let manifest = self
            .manifest(commit)
            .ok()
            .flatten()
            .ok_or("it has no manifest written by dagsnap")?;
        if manifest.commit != commit {
            return Err(format!("its manifest is for commit {}", manifest.commit));
        }
        if let Some(expected) = expected {
            expected.matches(&manifest, || self.entries(commit).ok().flatten())?;
        }
        if manifest.dir == Some(DirIdentity::of(&meta)) {
            return Ok(());
        }
        let entries = self.entries(commit).ok().flatten().ok_or(
            "it is not the directory dagsnap built, and has no entry list to check it against",
        )?;
        let jobs = crate::store::snapshot::DEFAULT_BUILD_JOBS;
        crate::store::snapshot::quick_check(&dir, &entries, jobs).map_err(|problem| {
            format!("it is not the directory dagsnap built, and it differs from its entry list ({problem})")
        })
    }

    /// Whether the live snapshot holds what a build of `expected` would (the same tree, selected
    /// and with submodules the same way), so that a commit that changed nothing it publishes
    /// (a change outside `--subdir`) need not move the link.
    pub fn live_holds(&self, expected: &Expected) -> bool {
        let Ok(Some(current)) = self.current() else {
            return false;
        };
        current.complete && self.check_snapshot(&current.commit, Some(expected)).is_ok()
    }

    /// Move a snapshot that cannot be trusted out of the way, so that it is rebuilt.
    pub fn set_aside(&self, lock: &RootLock, commit: &str, why: &str) -> Result<(), StoreError> {
        tracing::warn!(%commit, why, "moving aside a snapshot dagsnap did not build (or that was changed); it is rebuilt");
        self.move_snapshot_to_trash(lock, commit)
    }

    /// A fresh, empty, uniquely named directory in the store to build a snapshot in.
    pub fn begin_staging(&self) -> Result<Staging, StoreError> {
        self.begin_staging_in(&self.snapshots())
    }

    fn begin_staging_in(&self, dir: &Path) -> Result<Staging, StoreError> {
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!(
            "{STAGING_PREFIX}{}.{}.{created}.{:016x}",
            fsutil::hostname(),
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(name);
        fs::DirBuilder::new()
            .mode(fsutil::dir_mode())
            .create(&path)
            .at("create staging directory", &path)?;
        Ok(Staging { path })
    }

    /// Install a complete staged snapshot as `snapshots/<commit>`.
    ///
    /// 1. Write the entry list and the manifest (atomically), the manifest recording the staging
    ///    directory's identity (inode and modification time), which the rename keeps. They go first so that a snapshot is never
    ///    visible without them; a crash after this step leaves records without a snapshot,
    ///    which the next attempt simply overwrites.
    /// 2. `rename(2)` the staging directory to `snapshots/<commit>`. If that name already exists
    ///    (`EEXIST`/`ENOTEMPTY`), another publisher installed the same commit first: same commit,
    ///    same content, so our copy is deleted and this is success. Our manifest replaced
    ///    theirs in step 1, so it is written once more with the inode of the directory that won.
    /// 3. `fsync` the snapshots directory so the rename is durable before any link points at it.
    pub fn install(
        &self,
        staging: Staging,
        manifest: &Manifest,
        entries: &Entries,
    ) -> Result<Installed, StoreError> {
        let manifest_path = self.manifest_path(&manifest.commit);
        let identity = |dir: &Path| {
            fs::symlink_metadata(dir)
                .at("inspect", dir)
                .map(|m| DirIdentity::of(&m))
        };
        let mut manifest = manifest.clone();
        manifest.dir = Some(identity(staging.path())?);
        fsutil::write_atomically(&self.entries_path(&manifest.commit), &entries.encode())?;
        records::write_json(&manifest_path, &manifest)?;

        let destination = self.snapshot_path(&manifest.commit);
        match fs::rename(staging.path(), &destination) {
            Ok(()) => {
                // Renamed away: there is nothing left for the guard to delete.
                std::mem::forget(staging);
                fsutil::fsync_dir(&self.snapshots())?;
                Ok(Installed::Ours)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                drop(staging);
                manifest.dir = Some(identity(&destination)?);
                records::write_json(&manifest_path, &manifest)?;
                Ok(Installed::AlreadyThere)
            }
            Err(e) => Err(IoError::new("move snapshot into place at", &destination, e).into()),
        }
    }

    /// Take the root's lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<RootLock, StoreError> {
        let lock = FileLock::acquire(&self.store().join(LOCK_FILE), timeout)?;
        Ok(RootLock { _lock: lock })
    }

    /// Point the link at `publication.commit` unless that would move it backward.
    ///
    /// Runs under the root's lock, so the decision and the swap are one step for every other
    /// publisher of this root:
    /// 1. If the link already shows the commit, there is nothing to do. If an operator pinned a
    ///    snapshot, the link stays where the pin put it.
    /// 2. If the latest publication names another commit observed later than ours, another
    ///    publisher saw a newer state of the remote: leave the link alone. The record, not the
    ///    link, is compared, because a publisher that died between writing the record and
    ///    moving the link still saw what it saw. An observation more than [`MAX_CLOCK_SKEW`]
    ///    ahead of this host's clock is not believed (its host's clock is wrong, or this one was
    ///    stepped back): it is named in a warning and ignored, so one bad clock cannot stop
    ///    every publisher until it is reached.
    /// 3. The snapshot must still exist (GC or a person may have removed it since it was
    ///    installed); the link never points at nothing.
    /// 4. Write the records, then swap the link ([`Root::publish`]).
    pub fn publish_if_newer(
        &self,
        lock: &RootLock,
        publication: &Publication,
    ) -> Result<Decision, StoreError> {
        let current = self.current()?.filter(|c| c.complete);
        if current
            .as_ref()
            .is_some_and(|c| c.commit == publication.commit)
        {
            return Ok(Decision::AlreadyCurrent);
        }
        let records = self.records();
        // A pin holds the link on its commit; only that commit may be (re)linked, e.g. when
        // its snapshot was deleted by hand and rebuilt.
        let live = current.as_ref().map(|c| c.commit.as_str());
        if let Some(pin) = records
            .pin(live)?
            .filter(|p| p.commit != publication.commit)
        {
            return Ok(Decision::Pinned { pin });
        }
        if let Some(latest) = records.latest()? {
            if latest.commit != publication.commit && latest.observed_at > publication.observed_at {
                match latest.observed_at.duration_since(SystemTime::now()) {
                    Ok(ahead) if ahead > MAX_CLOCK_SKEW => tracing::warn!(
                        host = %latest.host,
                        commit = %latest.commit,
                        ahead = %humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                        "ignoring a publication whose observation of the remote lies in the future by this host's clock; check the clocks (NTP) of both hosts"
                    ),
                    _ => return Ok(Decision::Superseded { newer: latest }),
                }
            }
        }
        if !self.has_snapshot(&publication.commit) {
            return Err(StoreError::SnapshotGone {
                commit: publication.commit.clone(),
            });
        }
        self.publish(lock, publication)?;
        Ok(Decision::Published {
            previous: current.map(|c| c.commit),
        })
    }

    /// Point the link at the installed snapshot of `publication.commit` and record why.
    ///
    /// The records are written before the link moves: a crash in between leaves a record that
    /// is newer than the link, never a link that is newer than every record, so the
    /// never-backward comparison always has the newest observation to go by.
    pub fn publish(&self, lock: &RootLock, publication: &Publication) -> Result<(), StoreError> {
        self.records().record_publication(lock, publication)?;
        link::swap(
            &self.root,
            &self.link_rel,
            &self.link_target(&publication.commit, false),
        )?;
        Ok(())
    }

    /// What the link should show, whatever moved it last: the pinned commit while an operator
    /// pins one, else the commit of the newest publication that moved the link; with what names
    /// it. `live` is the commit the link shows (a damaged pin holds it).
    pub fn desired(&self, live: &str) -> Result<Option<(String, &'static str)>, StoreError> {
        let records = self.records();
        if let Some(pin) = records.pin(Some(live))? {
            return Ok(Some((pin.commit, BY_PIN)));
        }
        Ok(records
            .latest()?
            .filter(|p| p.moved_link)
            .map(|p| (p.commit, "the newest publication")))
    }

    /// Put the link back on what [`Root::desired`] names, if it shows something else and that
    /// snapshot is intact; journaled as `reconcile` by `who`. Returns (from, to, what named it)
    /// when it moved the link.
    ///
    /// With working locks nothing needs correcting: every decision and swap happens under the
    /// root's lock. Where locks do not travel between clients, a publisher that decided under a
    /// lock it wrongly believed exclusive, and stalled before swapping, can swap an older commit
    /// over a newer one, or over a pin; every publisher's next cycle, and the late one right
    /// after its swap, puts the link back.
    pub fn reconcile_link(
        &self,
        lock: &RootLock,
        who: &Publication,
    ) -> Result<Option<(String, String, &'static str)>, StoreError> {
        let Some(current) = self.current()? else {
            return Ok(None);
        };
        let Some((desired, because)) = self.desired(&current.commit)? else {
            return Ok(None);
        };
        if desired == current.commit || self.check_snapshot(&desired, None).is_err() {
            return Ok(None);
        }
        let entry = Publication {
            commit: desired.clone(),
            cause: Cause::Reconcile,
            reason: Some(format!(
                "the link showed {}; {because} names {desired}",
                current.commit
            )),
            ..who.clone()
        };
        self.publish(lock, &entry)?;
        Ok(Some((current.commit, desired, because)))
    }

    /// A staging directory for a repair's fresh copy, inside `snapshots/.repair/` so that it is
    /// renamed within its directory (see `store::repair`).
    pub fn begin_repair_staging(&self) -> Result<Staging, StoreError> {
        make_dir(&self.repair_dir())?;
        self.begin_staging_in(&self.repair_dir())
    }

    /// Rename a repair's staged fresh copy of `commit` to `snapshots/.repair/<commit>`, retiring
    /// any copy an interrupted repair left there.
    pub fn install_fresh_copy(&self, staging: Staging, commit: &str) -> Result<(), StoreError> {
        let destination = self.repair_dir().join(commit);
        if destination.exists() {
            self.retire(&destination, commit)?;
        }
        fs::rename(staging.path(), &destination)
            .at("move the fresh copy into place at", &destination)?;
        std::mem::forget(staging);
        fsutil::fsync_dir(&self.repair_dir())?;
        Ok(())
    }

    /// Point the link at `commit`'s snapshot (`fresh_copy`: at the repair's fresh copy), if the
    /// link names that commit now; whether it did. Another publisher may have moved the link
    /// on meanwhile, and then there is nothing to swap.
    pub fn relink(
        &self,
        _lock: &RootLock,
        commit: &str,
        fresh_copy: bool,
    ) -> Result<bool, StoreError> {
        match self.current()? {
            Some(current) if current.commit == commit => {
                link::swap(
                    &self.root,
                    &self.link_rel,
                    &self.link_target(commit, fresh_copy),
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Take `snapshots/<commit>` out of service without deleting it: readers that resolved the
    /// link to it keep their files until GC deletes it after `--grace`.
    pub fn retire_snapshot(&self, _lock: &RootLock, commit: &str) -> Result<(), StoreError> {
        let path = self.snapshot_path(commit);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        self.retire(&path, commit)
    }

    /// Take the repair's fresh copy of `commit` out of service (its files live on in
    /// `snapshots/<commit>`, which shares them).
    pub fn retire_fresh_copy(&self, commit: &str) -> Result<(), StoreError> {
        let path = self.repair_dir().join(commit);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        self.retire(&path, commit)
    }

    /// Rename `path` to `.retired-<label>.<seconds>.<unique>` in its own directory.
    fn retire(&self, path: &Path, label: &str) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(&self.root);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let destination = dir.join(format!(
            "{RETIRED_PREFIX}{label}.{now}.{}",
            fsutil::unique_suffix()
        ));
        match fs::rename(path, &destination) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other.at("retire", path)?),
        }
    }

    /// Directories retired by repairs, and when: GC deletes them after `--grace`.
    pub fn retired_dirs(&self) -> Result<Vec<(PathBuf, SystemTime)>, StoreError> {
        let mut found = Vec::new();
        for dir in [self.snapshots(), self.repair_dir()] {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.at("list", &dir)?,
            };
            for entry in entries {
                let entry = entry.at("list", &dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(RETIRED_PREFIX) else {
                    continue;
                };
                // `<label>.<seconds>.<pid>-<random>`
                let seconds = rest
                    .rsplit('.')
                    .nth(1)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                found.push((
                    entry.path(),
                    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
                ));
            }
        }
        Ok(found)
    }

    /// Move a retired directory into the trash (GC, under the lock).
    pub fn move_retired_to_trash(&self, _lock: &RootLock, path: &Path) -> Result<(), StoreError> {
        self.move_to_trash(path, "retired")
    }

    /// Register this process as a publisher of `source` (see [`records::claims::claim`]).
    pub fn claim(&self, source: &SourceRecord, timeout: Duration) -> Result<Claim, StoreError> {
        records::claims::claim(&self.store(), &self.root, source, timeout)
    }

    /// Create this process's publisher record (see `records::publishers`).
    pub fn register_publisher(&self, record: PublisherRecord) -> Result<Registration, StoreError> {
        Registration::register(&self.store(), record)
    }

    /// How long ago the link last moved (the swap creates a new symlink, so the link's own
    /// modification time is the time of the last swap, whoever made it); `None` without a link.
    pub fn since_link_moved(&self) -> Option<Duration> {
        let moved = fs::symlink_metadata(self.link_path())
            .ok()?
            .modified()
            .ok()?;
        Some(SystemTime::now().duration_since(moved).unwrap_or_default())
    }

    /// Look at the other publishers' heartbeats once: a peer whose locks are invisible from
    /// here (see [`records::publishers::LockWitness`]).
    pub fn observe_peers(&self, witness: &mut LockWitness, own: &Path) -> Option<LockFault> {
        witness.observe(&self.store(), own)
    }

    /// Commits that a reader's unexpired lease asks GC to keep (see `records::leases`).
    pub fn leased_commits(&self, now: SystemTime) -> std::collections::HashSet<String> {
        records::leases::leased(&self.store(), now)
    }

    /// Remove expired leases (GC).
    pub fn remove_expired_leases(&self, _lock: &RootLock, now: SystemTime) {
        records::leases::remove_expired(&self.store(), now)
    }

    /// Every publisher record of this root, running ones first.
    pub fn publishers(&self) -> Vec<SeenPublisher> {
        records::publishers::read_all(&self.store())
    }

    /// Remove records of publishers that stopped long ago (GC).
    pub fn remove_dead_publisher_records(&self) {
        records::publishers::remove_dead(&self.store())
    }

    /// The repository and ref recorded for this root.
    pub fn source(&self) -> Result<Option<SourceRecord>, StoreError> {
        records::claims::source(&self.store())
    }

    /// The operator's pin, if any (a damaged pin file holds what is live).
    pub fn pinned(&self) -> Result<Option<Pin>, StoreError> {
        let live = self.current().ok().flatten().map(|c| c.commit);
        self.records().pin(live.as_deref())
    }

    /// Pin the link: sync loops will not move it until [`Root::unpin`]. The caller moves the
    /// link first if the pinned commit is not live.
    pub fn pin(&self, lock: &RootLock, pin: &Pin) -> Result<(), StoreError> {
        self.records().set_pin(lock, pin)
    }

    /// Release the pin, whatever state its file is in; returns what it was.
    pub fn unpin(&self, lock: &RootLock) -> Result<Option<Pin>, StoreError> {
        let pin = self.pinned()?;
        self.records().clear_pin(lock)?;
        Ok(pin)
    }

    /// Record an operator's action that does not move the link (pin, unpin).
    pub fn record(&self, lock: &RootLock, entry: &Publication) -> Result<(), StoreError> {
        self.records().record_publication(lock, entry)
    }

    /// The full id of the snapshot that `wanted` names: a full id or an unambiguous prefix of at
    /// least 4 hex digits, among installed snapshots.
    pub fn resolve_commit(&self, wanted: &str) -> Result<String, StoreError> {
        let wanted = wanted.trim().to_ascii_lowercase();
        let retained = self.snapshot_commits()?;
        let matches: Vec<&String> = retained
            .iter()
            .filter(|c| wanted.len() >= 4 && c.starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(StoreError::NotRetained {
                wanted,
                retained: self.describe_commits(&retained),
            }),
            many => Err(StoreError::Ambiguous {
                wanted,
                matches: self
                    .describe_commits(&many.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
            }),
        }
    }

    /// `<short sha> <subject>` for each commit, for error messages.
    fn describe_commits(&self, commits: &[String]) -> Vec<String> {
        commits
            .iter()
            .map(|c| {
                let subject = self
                    .manifest(c)
                    .ok()
                    .flatten()
                    .map(|m| m.subject)
                    .unwrap_or_default();
                format!("{} {subject}", &c[..12.min(c.len())])
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    /// Fail with a clear message unless this process may write the root (for rollback, pin,
    /// unpin, gc; the read-only commands work on a read-only mount).
    pub fn require_writable(&self) -> Result<(), StoreError> {
        self.require_initialized()?;
        let store = self.store();
        match nix::unistd::access(&store, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => Ok(()),
            Err(errno) => Err(StoreError::ReadOnly {
                root: self.root.clone(),
                cause: io::Error::from(errno).to_string(),
            }),
        }
    }

    /// Commits of every installed snapshot.
    pub fn snapshot_commits(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.snapshots();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.at("list", &dir)?,
        };
        let mut commits = Vec::new();
        for entry in entries {
            let entry = entry.at("list", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_commit_id(&name) {
                commits.push(name);
            }
        }
        Ok(commits)
    }

    /// Move the snapshot of `commit` out of service, into the trash. Under the lock, so no
    /// publisher decides to link it meanwhile; the slow deletion happens later, without the
    /// lock ([`Root::empty_trash`]). Its manifest and entry list stay until the trash is
    /// emptied, so that [`Root::restore_from_trash`] can bring it back whole.
    pub fn move_snapshot_to_trash(&self, _lock: &RootLock, commit: &str) -> Result<(), StoreError> {
        self.move_to_trash(&self.snapshot_path(commit), commit)
    }

    /// Bring the snapshot of `commit` back from the trash, if it is there and young enough
    /// that no one deletes it yet (less than half of `quarantine` old, see
    /// [`Root::empty_trash`]). For a link that names a snapshot GC just retired: on a volume
    /// whose locks do not work, another publisher may have decided to link it before GC moved
    /// it. Whether it was restored.
    pub fn restore_from_trash(&self, commit: &str, quarantine: Duration) -> bool {
        if self.has_snapshot(commit) {
            return true;
        }
        let Ok(entries) = fs::read_dir(self.snapshots()) else {
            return false;
        };
        let prefix = format!("{TRASH_PREFIX}{commit}.");
        let now = SystemTime::now();
        let mut found: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let trashed = trashed_at(name.strip_prefix(&prefix)?)?;
                Some((trashed, e.path()))
            })
            .filter(|(at, _)| {
                now.duration_since(*at)
                    .is_ok_and(|age| age < quarantine / 2)
            })
            .collect();
        found.sort();
        match found.pop() {
            Some((_, path)) => fs::rename(&path, self.snapshot_path(commit)).is_ok(),
            None => false,
        }
    }

    /// Whether a sync loop of this root is running, on any host that shares its locks.
    pub fn publishers_running(&self) -> Result<bool, StoreError> {
        records::claims::publishers_running(&self.store())
    }

    /// Remove everything dagsnap made in this root: the link and its leftover temporaries,
    /// `.airflowignore` if it is still the one dagsnap wrote, the store with every snapshot
    /// (write permission is restored inside it first), and the link's directories if that leaves
    /// them empty. The root directory itself stays: it may be a mount point. Returns what went.
    ///
    /// The caller makes sure no publisher runs; readers lose their files.
    pub fn remove_everything(&self, _lock: RootLock) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let link = self.link_path();
        if self.current().ok().flatten().is_some() {
            fs::remove_file(&link).at("remove", &link)?;
            removed.push(link.clone());
        }
        link::remove_stale_temporaries(&link)?;
        let ignore = self.root.join(AIRFLOWIGNORE);
        if fs::read_to_string(&ignore).is_ok_and(|text| text == format!("{STORE_DIR}\n")) {
            fs::remove_file(&ignore).at("remove", &ignore)?;
            removed.push(ignore);
        }
        // The lock lives in the store; it is released with the deleted file.
        fsutil::remove_tree(&self.store())?;
        removed.push(self.store());
        let mut dir = link.parent().map(Path::to_path_buf);
        while let Some(parent) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if fs::remove_dir(&parent).is_err() {
                break;
            }
            removed.push(parent.clone());
            dir = parent.parent().map(Path::to_path_buf);
        }
        Ok(removed)
    }

    /// Move an abandoned staging directory into the trash.
    pub fn move_staging_to_trash(
        &self,
        _lock: &RootLock,
        staging: &StagingDir,
    ) -> Result<(), StoreError> {
        self.move_to_trash(&staging.path, "staging")
    }

    /// Rename `path` (an entry of `snapshots/` or `snapshots/.repair/`) to a trash name in the
    /// same directory.
    fn move_to_trash(&self, path: &Path, label: &str) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(&self.root);
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let destination = dir.join(format!(
            "{TRASH_PREFIX}{label}.{millis}.{}",
            fsutil::unique_suffix()
        ));
        match fs::rename(path, &destination) {
            // Someone else moved it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other.at("move to trash", path)?),
        }
    }

    /// Delete what has been in the trash for `quarantine` or longer; returns how many entries
    /// went. Entries another process is deleting at the same time are skipped without error.
    ///
    /// The quarantine (a publisher's lock timeout plus its sync timeout) outlasts any publisher
    /// that decided to link a snapshot just before GC retired it: on a volume whose locks do not
    /// work, such a publisher swaps the link to a name GC has just moved, and brings the snapshot
    /// back intact ([`Root::restore_from_trash`]). An operator's deletion passes zero.
    pub fn empty_trash(&self, quarantine: Duration) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        for dir in [
            self.snapshots(),
            self.repair_dir(),
            self.store().join(LEGACY_TRASH_DIR),
        ] {
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.at("list", &dir)?,
            };
            for entry in entries {
                let entry = entry.at("list", &dir)?;
                let legacy = dir.ends_with(LEGACY_TRASH_DIR);
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(TRASH_PREFIX) else {
                    if legacy {
                        doomed.push((entry.path(), None));
                    }
                    continue;
                };
                // `<label>.<millis>.<suffix>`; older trash names have no time and go at once.
                let (label, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let due = trashed_at(tail)
                    .is_none_or(|at| now.duration_since(at).is_ok_and(|age| age >= quarantine));
                if due {
                    doomed.push((entry.path(), is_commit_id(label).then(|| label.to_string())));
                }
            }
        }
        for (path, commit) in &doomed {
            fsutil::remove_tree(path)?;
            // The records of a snapshot go with it, unless it was built again meanwhile.
            if let Some(commit) = commit.as_deref().filter(|c| !self.has_snapshot(c)) {
                for record in [self.manifest_path(commit), self.entries_path(commit)] {
                    let _ = fs::remove_file(record);
                }
            }
        }
        Ok(doomed.len())
    }

    /// What the snapshot of `commit` is, as recorded when it was built; `None` when there is
    /// no readable manifest (a damaged one is warned about).
    pub fn manifest(&self, commit: &str) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(commit);
        Ok(match read_json::<Manifest>(&path)? {
            Read::Valid(manifest) => Some(manifest),
            Read::Missing => None,
            Read::Damaged(why) => {
                warn_damaged(&path, &why, "treating the snapshot as undescribed");
                None
            }
        })
    }

    /// What the snapshot of `commit` holds, as recorded when it was built; `None` when there is
    /// no readable entry list (a damaged one is warned about).
    pub fn entries(&self, commit: &str) -> Result<Option<Entries>, StoreError> {
        let path = self.entries_path(commit);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.at("read", &path)?,
        };
        match Entries::decode(&bytes) {
            Ok(entries) => Ok(Some(entries)),
            Err(why) => {
                warn_damaged(&path, &why, "not using it");
                Ok(None)
            }
        }
    }

    /// Fail unless this looks like a dagsnap root (for the read-only commands).
    pub fn require_initialized(&self) -> Result<(), StoreError> {
        if self.store().is_dir() {
            Ok(())
        } else {
            Err(StoreError::NotARoot {
                root: self.root.clone(),
            })
        }
    }
}

/// Make sure `dir` is a real directory: create it (mode [`fsutil::dir_mode`], whatever the umask) if it
/// is missing; refuse a symlink or anything else in its place. Whether it was created.
fn make_dir(dir: &Path) -> Result<bool, StoreError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(meta) => Err(StoreError::NotARealDirectory {
            path: dir.to_path_buf(),
            what: if meta.file_type().is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            },
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(fsutil::dir_mode()).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(IoError::new("create", dir, e).into())
                }
                _ => {}
            }
            if fsutil::umask() & fsutil::dir_mode() != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(fsutil::dir_mode()))
                    .at("set the mode of", dir)?;
            }
            Ok(true)
        }
        Err(e) => Err(IoError::new("inspect", dir, e).into()),
    }
}

/// A staging directory found in the store, and who made it when, if its name says.
#[derive(Debug)]
pub struct StagingDir {
    pub path: PathBuf,
    owner: Option<Owner>,
}

impl StagingDir {
    /// When it was created: from its name, else its modification time.
    pub fn created(&self) -> Option<SystemTime> {
        self.owner.as_ref().map(|o| o.created).or_else(|| {
            fs::symlink_metadata(&self.path)
                .and_then(|m| m.modified())
                .ok()
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Owner {
    host: String,
    pid: u32,
    created: SystemTime,
}

/// Parse `<host>.<pid>.<unix seconds>.<nonce>` (host names may contain dots).
fn parse_staging_owner(rest: &str) -> Option<Owner> {
    let mut parts = rest.rsplitn(4, '.');
    let _nonce = parts.next()?;
    let created: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?.to_string();
    Some(Owner {
        host,
        pid,
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(created),
    })
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// What [`Root::desired`] says when the pin names the commit.
pub const BY_PIN: &str = "the pin";

/// When a trash entry was trashed, from the `<millis>.<suffix>` after its label.
fn trashed_at(tail: &str) -> Option<SystemTime> {
    let millis: u64 = tail.split('.').next()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}

/// The directory holding `path` (the root itself for a top-level name).
fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

/// A full SHA-1 or SHA-256 commit id in lowercase hex.
pub fn is_commit_id(name: &str) -> bool {
    (name.len() == 40 || name.len() == 64)
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_owner_survives_dots_in_hostnames() {
        assert_eq!(
            parse_staging_owner("web-1.ns.svc.42.1700000000.00000000deadbeef"),
            Some(Owner {
                host: "web-1.ns.svc".to_string(),
                pid: 42,
                created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            })
        );
        assert_eq!(parse_staging_owner("garbage"), None);
    }

    #[test]
    fn link_must_stay_inside_root() {
        let root = Path::new("/dags");
        assert!(Root::new(root, Path::new("../x")).is_err());
        assert!(Root::new(root, Path::new("/abs")).is_err());
        assert!(Root::new(root, Path::new(".dagsnap/x")).is_err());
        assert!(Root::new(root, Path::new("dags/current")).is_ok());
    }
}
