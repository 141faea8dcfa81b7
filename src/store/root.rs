//! The published root: its layout, the snapshot store, and the records kept beside it.
//!
//! ```text
//! ROOT/
//!   current -> .dagsnap/snapshots/<sha>   the link (--link); readers use only this path
//!   .airflowignore                        ".dagsnap", so a dags_folder of ROOT skips the store
//!   .dagsnap/
//!     lock                                advisory lock: link decisions and GC run under it
//!     claim.lock, publishers              publisher registration (see `Root::claim`)
//!     source.json                         the repository and ref this root follows
//!     state.json                          the publication behind the link
//!     journal.jsonl                       every publication, oldest first
//!     pin.json                            present while an operator pins a snapshot
//!     manifests/<sha>.json, .entries      what each snapshot holds
//!     snapshots/<sha>/                    complete, read-only trees
//!     snapshots/.staging-<host>.<pid>.<time>.<n>   trees being written; never linked
//!     trash/                              snapshots being deleted, outside the lock
//! ```
//!
//! This module owns every path under ROOT. Other modules ask it for a staging directory, hand
//! it back to be installed, and ask it to move the link; none of them builds ROOT paths.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::entries::Entries;
use crate::fsutil::{self, Context, IoError};
use crate::store::link;
use crate::store::lock::{FileLock, LockError};
pub use crate::store::records::{rfc3339, Cause, Manifest, Pin, Publication, SourceRecord};

pub const STORE_DIR: &str = ".dagsnap";
const SNAPSHOTS_DIR: &str = "snapshots";
const MANIFESTS_DIR: &str = "manifests";
const STAGING_PREFIX: &str = ".staging-";
const AIRFLOWIGNORE: &str = ".airflowignore";
const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "journal.jsonl";
const LOCK_FILE: &str = "lock";
const SOURCE_FILE: &str = "source.json";
const PUBLISHERS_FILE: &str = "publishers";
const CLAIM_LOCK_FILE: &str = "claim.lock";
const PIN_FILE: &str = "pin.json";
const TRASH_DIR: &str = "trash";
/// Directories a fresh filesystem brings along; their presence does not make a root foreign.
const FILESYSTEM_ENTRIES: &[&str] = &["lost+found"];
/// The journal is trimmed to its newest entries once it grows past this size.
const JOURNAL_MAX_BYTES: u64 = 1 << 20;
const JOURNAL_KEEP_ENTRIES: usize = 2000;

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
    #[error("{} is damaged ({cause}); dagsnap rewrites it on the next publish", path.display())]
    Corrupt { path: PathBuf, cause: String },
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
        theirs: SourceRecord,
        ours: SourceRecord,
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

/// When commits were last linked and last unlinked (see [`Root::link_history`]). A commit that
/// is linked but not retired is the one the journal says is live.
#[derive(Debug, Default, Clone)]
pub struct LinkHistory {
    pub published: std::collections::HashMap<String, SystemTime>,
    pub retired: std::collections::HashMap<String, SystemTime>,
}

/// This process's registration as a publisher of the root (see [`Root::claim`]).
#[derive(Debug)]
pub struct Claim {
    _shared: FileLock,
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn link_path(&self) -> PathBuf {
        self.root.join(&self.link_rel)
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
    /// what readers see.
    pub fn adopt(&self) -> Result<(), StoreError> {
        match fs::metadata(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.root).at("create root", &self.root)?;
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

        for dir in [
            self.store(),
            self.snapshots(),
            self.store().join(MANIFESTS_DIR),
        ] {
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(IoError::new("create", &dir, e).into())
                }
                _ => {}
            }
        }
        if let Some(parent) = self.link_path().parent() {
            fs::create_dir_all(parent).at("create directory of link", parent)?;
        }
        self.ensure_airflowignore()?;
        link::remove_stale_temporaries(&self.link_path())?;
        self.remove_own_stale_staging()?;
        Ok(())
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
                || name_str == AIRFLOWIGNORE
                || FILESYSTEM_ENTRIES.contains(&name_str.as_ref())
                || Some(&name) == link_top.as_ref();
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

    fn ensure_airflowignore(&self) -> Result<(), StoreError> {
        let path = self.root.join(AIRFLOWIGNORE);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(format!("{STORE_DIR}\n").as_bytes())
                    .at("write", &path)?;
                file.sync_all().at("fsync", &path)?;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let contents = fs::read_to_string(&path).unwrap_or_default();
                if !contents.lines().any(|l| l.trim().contains(STORE_DIR)) {
                    tracing::warn!(path = %path.display(), "this .airflowignore does not exclude '{STORE_DIR}'; if dags_folder is the root itself, add a line '{STORE_DIR}' or Airflow will parse every snapshot");
                }
                Ok(())
            }
            Err(e) => Err(IoError::new("create", &path, e).into()),
        }
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
        let dir = self.snapshots();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.at("list", &dir)?,
        };
        let mut found = Vec::new();
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
        let commit = target
            .strip_prefix(&prefix)
            .ok()
            .and_then(|rest| rest.to_str())
            .filter(|name| is_commit_id(name))
            .map(str::to_owned)
            .ok_or_else(|| StoreError::ForeignLink {
                link: link.clone(),
                target: target.clone(),
            })?;
        let complete = self.snapshot_path(&commit).is_dir();
        Ok(Some(Current { commit, complete }))
    }

    pub fn has_snapshot(&self, commit: &str) -> bool {
        self.snapshot_path(commit).is_dir()
    }

    /// A fresh, empty, uniquely named directory in the store to build a snapshot in.
    pub fn begin_staging(&self) -> Result<Staging, StoreError> {
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
        let path = self.snapshots().join(name);
        fs::create_dir(&path).at("create staging directory", &path)?;
        Ok(Staging { path })
    }

    /// Install a complete staged snapshot as `snapshots/<commit>`.
    ///
    /// 1. Write the manifest and the entry list (atomically). They go first so that a snapshot
    ///    is never visible without them; a crash after this step leaves records without a
    ///    snapshot, which the next attempt simply overwrites.
    /// 2. `rename(2)` the staging directory to `snapshots/<commit>`. If that name already exists
    ///    (`EEXIST`/`ENOTEMPTY`), another publisher installed the same commit first: same commit,
    ///    same content, so our copy is deleted and this is success.
    /// 3. `fsync` the snapshots directory so the rename is durable before any link points at it.
    pub fn install(
        &self,
        staging: Staging,
        manifest: &Manifest,
        entries: &Entries,
    ) -> Result<Installed, StoreError> {
        let manifest_path = self.manifest_path(&manifest.commit);
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Corrupt {
            path: manifest_path.clone(),
            cause: e.to_string(),
        })?;
        fsutil::write_atomically(&self.entries_path(&manifest.commit), &entries.encode())?;
        fsutil::write_atomically(&manifest_path, &bytes)?;

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
    /// 2. If the latest record (`state.json`) names another commit observed later than ours,
    ///    another publisher saw a newer state of the remote: leave the link alone. The record,
    ///    not the link, is compared, because a publisher that died between writing the record
    ///    and moving the link still saw what it saw.
    /// 3. The snapshot must still exist (GC or a person may have removed it since it was
    ///    installed); the link never points at nothing.
    /// 4. Write the record and the journal line, then swap the link ([`link::swap`]).
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
        // A pin holds the link on its commit; only that commit may be (re)linked, e.g. when
        // its snapshot was deleted by hand and rebuilt.
        if let Some(pin) = self.pinned()?.filter(|p| p.commit != publication.commit) {
            return Ok(Decision::Pinned { pin });
        }
        if let Some(state) = self.state()? {
            if state.commit != publication.commit && state.observed_at > publication.observed_at {
                return Ok(Decision::Superseded { newer: state });
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
    /// The state file and the journal are written before the link moves: a crash in between
    /// leaves a record that is newer than the link, never a link that is newer than every
    /// record, so the never-backward comparison always has the newest observation to go by.
    pub fn publish(&self, _lock: &RootLock, publication: &Publication) -> Result<(), StoreError> {
        let state_path = self.store().join(STATE_FILE);
        let state = serde_json::to_vec_pretty(publication).map_err(|e| StoreError::Corrupt {
            path: state_path.clone(),
            cause: e.to_string(),
        })?;
        fsutil::write_atomically(&state_path, &state)?;
        self.append_journal(publication)?;

        let target = link::path_to_root(&self.link_rel)
            .join(STORE_DIR)
            .join(SNAPSHOTS_DIR)
            .join(&publication.commit);
        link::swap(&self.link_path(), &target)?;
        Ok(())
    }

    fn append_journal(&self, publication: &Publication) -> Result<(), StoreError> {
        let path = self.store().join(JOURNAL_FILE);
        let mut line = serde_json::to_string(publication).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        line.push('\n');
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .at("open journal", &path)?;
        file.write_all(line.as_bytes())
            .at("append to journal", &path)?;
        file.sync_data().at("fsync journal", &path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > JOURNAL_MAX_BYTES {
            let text = fs::read_to_string(&path).at("read journal", &path)?;
            let lines: Vec<&str> = text.lines().collect();
            let keep = &lines[lines.len().saturating_sub(JOURNAL_KEEP_ENTRIES)..];
            fsutil::write_atomically(&path, (keep.join("\n") + "\n").as_bytes())?;
        }
        Ok(())
    }

    /// Register this process as a publisher of `source` for as long as the returned [`Claim`]
    /// lives, refusing if live publishers of this root follow something else.
    ///
    /// Every publisher holds a shared lock on `.dagsnap/publishers` for its lifetime. Under a
    /// short exclusive lock on `.dagsnap/claim.lock`:
    /// - no record yet, or the same record: take the shared lock (writing the record if new);
    /// - a different record: if the exclusive lock can be taken, nobody follows the old
    ///   configuration any more (a finished rolling update): rewrite the record, then downgrade
    ///   to shared. Otherwise refuse with [`StoreError::SourceMismatch`].
    ///
    /// Locks die with their process, so a crashed publisher never blocks a reconfiguration.
    pub fn claim(&self, source: &SourceRecord, timeout: Duration) -> Result<Claim, StoreError> {
        // A lock of its own, not the root's: a start-up must not wait for publishes or GC.
        let _serialized = FileLock::acquire(&self.store().join(CLAIM_LOCK_FILE), timeout)?;
        let record_path = self.store().join(SOURCE_FILE);
        let publishers = self.store().join(PUBLISHERS_FILE);
        let recorded: Option<SourceRecord> = read_json(&record_path)?;
        let write_record = || -> Result<(), StoreError> {
            let bytes = serde_json::to_vec_pretty(source).map_err(|e| StoreError::Corrupt {
                path: record_path.clone(),
                cause: e.to_string(),
            })?;
            Ok(fsutil::write_atomically(&record_path, &bytes)?)
        };
        let held = match recorded {
            Some(theirs) if theirs != *source => match FileLock::try_exclusive(&publishers)? {
                Some(exclusive) => {
                    tracing::warn!(from = %theirs, to = %source, "no publisher of the previous configuration is running; this root now follows the new one");
                    write_record()?;
                    exclusive.downgrade()?;
                    Some(exclusive)
                }
                None => {
                    return Err(StoreError::SourceMismatch {
                        root: self.root.clone(),
                        theirs,
                        ours: source.clone(),
                    })
                }
            },
            Some(_) => FileLock::try_shared(&publishers)?,
            None => {
                write_record()?;
                FileLock::try_shared(&publishers)?
            }
        };
        // Exclusive holders only exist inside this function, under the claim lock we hold.
        let lock = held.ok_or_else(|| {
            StoreError::Lock(LockError::Busy {
                path: publishers.clone(),
                waited: Duration::ZERO,
                holder: None,
            })
        })?;
        Ok(Claim { _shared: lock })
    }

    /// The repository and ref recorded for this root.
    pub fn source(&self) -> Result<Option<SourceRecord>, StoreError> {
        read_json(&self.store().join(SOURCE_FILE))
    }

    /// The operator's pin, if any.
    pub fn pinned(&self) -> Result<Option<Pin>, StoreError> {
        read_json(&self.store().join(PIN_FILE))
    }

    /// Pin the link: sync loops will not move it until [`Root::unpin`]. The caller moves the
    /// link first if the pinned commit is not live.
    pub fn pin(&self, _lock: &RootLock, pin: &Pin) -> Result<(), StoreError> {
        let path = self.store().join(PIN_FILE);
        let bytes = serde_json::to_vec_pretty(pin).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        Ok(fsutil::write_atomically(&path, &bytes)?)
    }

    /// Release the pin; returns what it was.
    pub fn unpin(&self, _lock: &RootLock) -> Result<Option<Pin>, StoreError> {
        let pin = self.pinned()?;
        let path = self.store().join(PIN_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(IoError::new("remove", &path, e).into())
            }
            _ => Ok(pin),
        }
    }

    /// Add an entry to the journal without moving the link (pin, unpin).
    pub fn record(&self, _lock: &RootLock, entry: &Publication) -> Result<(), StoreError> {
        self.append_journal(entry)
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

    /// Every publication in the journal, oldest first. Lines that do not parse (a torn last
    /// line after a crash) are skipped.
    pub fn journal(&self) -> Result<Vec<Publication>, StoreError> {
        let path = self.store().join(JOURNAL_FILE);
        let text = match fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.at("read journal", &path)?,
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }

    /// When each commit was linked and unlinked, from the journal's link moves.
    pub fn link_history(&self) -> Result<LinkHistory, StoreError> {
        let mut history = LinkHistory::default();
        let moves: Vec<Publication> = self
            .journal()?
            .into_iter()
            .filter(|e| e.moved_link)
            .collect();
        for (i, entry) in moves.iter().enumerate() {
            history
                .published
                .insert(entry.commit.clone(), entry.published_at);
            // The next move retires this commit; a later publication of it un-retires it.
            match moves.get(i + 1) {
                Some(next) => history
                    .retired
                    .insert(entry.commit.clone(), next.published_at),
                None => history.retired.remove(&entry.commit),
            };
        }
        Ok(history)
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

    /// Move the snapshot of `commit` and its records out of the store, into the trash.
    /// Under the lock, so no publisher decides to link it meanwhile; the slow deletion happens
    /// later, without the lock ([`Root::empty_trash`]).
    pub fn move_snapshot_to_trash(&self, _lock: &RootLock, commit: &str) -> Result<(), StoreError> {
        self.move_to_trash(&self.snapshot_path(commit), commit)?;
        for record in [self.manifest_path(commit), self.entries_path(commit)] {
            match fs::remove_file(&record) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(IoError::new("remove", &record, e).into())
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Move an abandoned staging directory into the trash.
    pub fn move_staging_to_trash(
        &self,
        _lock: &RootLock,
        staging: &StagingDir,
    ) -> Result<(), StoreError> {
        self.move_to_trash(&staging.path, "staging")
    }

    fn move_to_trash(&self, path: &Path, label: &str) -> Result<(), StoreError> {
        let trash = self.store().join(TRASH_DIR);
        match fs::create_dir(&trash) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(IoError::new("create", &trash, e).into())
            }
            _ => {}
        }
        let destination = trash.join(format!("{label}.{}", fsutil::unique_suffix()));
        match fs::rename(path, &destination) {
            // Someone else moved it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other.at("move to trash", path)?),
        }
    }

    /// Delete everything in the trash; returns how many entries went. Entries another process
    /// is deleting at the same time are skipped without error.
    pub fn empty_trash(&self) -> Result<usize, StoreError> {
        let trash = self.store().join(TRASH_DIR);
        let entries = match fs::read_dir(&trash) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            other => other.at("list", &trash)?,
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.at("list", &trash)?;
            fsutil::remove_tree(&entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The latest publication record, if any.
    pub fn state(&self) -> Result<Option<Publication>, StoreError> {
        read_json(&self.store().join(STATE_FILE))
    }

    pub fn manifest(&self, commit: &str) -> Result<Option<Manifest>, StoreError> {
        read_json(&self.manifest_path(commit))
    }

    /// What the snapshot of `commit` holds, as recorded when it was built.
    pub fn entries(&self, commit: &str) -> Result<Option<Entries>, StoreError> {
        let path = self.entries_path(commit);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.at("read", &path)?,
        };
        Entries::decode(&bytes)
            .map(Some)
            .map_err(|cause| StoreError::Corrupt { path, cause })
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other.at("read", path)?,
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })
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
