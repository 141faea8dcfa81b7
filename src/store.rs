//! The published root: its layout, the snapshot store, and the records kept beside it.
//!
//! ```text
//! ROOT/
//!   current -> .dagsnap/snapshots/<sha>   the link (--link); readers use only this path
//!   .airflowignore                        ".dagsnap", so a dags_folder of ROOT skips the store
//!   .dagsnap/
//!     lock                                advisory lock: link decisions run under it
//!     state.json                          the publication behind the link
//!     journal.jsonl                       every publication, oldest first
//!     manifests/<sha>.json                what each snapshot holds
//!     snapshots/<sha>/                    complete, read-only trees
//!     snapshots/.staging-<host>.<pid>.<n> trees being written; never linked
//! ```
//!
//! This module owns every path under ROOT. Other modules ask it for a staging directory, hand
//! it back to be installed, and ask it to move the link; none of them builds ROOT paths.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::entries::Entries;
use crate::fsutil::{self, Context, IoError};
use crate::link;
use crate::lock::{FileLock, LockError};

pub const STORE_DIR: &str = ".dagsnap";
const SNAPSHOTS_DIR: &str = "snapshots";
const MANIFESTS_DIR: &str = "manifests";
const STAGING_PREFIX: &str = ".staging-";
const AIRFLOWIGNORE: &str = ".airflowignore";
const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "journal.jsonl";
const LOCK_FILE: &str = "lock";
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

/// Why the link moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The sync loop followed the remote.
    Sync,
}

/// One publication: what the link was pointed at, when, by whom and why. `state.json` holds
/// the latest; `journal.jsonl` holds them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub commit: String,
    pub cause: Cause,
    /// When the publisher asked the remote for the state that produced this publication.
    #[serde(with = "rfc3339")]
    pub observed_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub published_at: SystemTime,
    pub host: String,
    pub pid: u32,
    /// Repository URL, credentials redacted.
    pub repo: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
}

/// What a snapshot holds, written next to the store as `manifests/<sha>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub commit: String,
    pub tree: String,
    pub subject: String,
    pub author: String,
    /// Committer date, seconds since the epoch.
    pub commit_time: i64,
    pub files: u64,
    pub bytes: u64,
    #[serde(with = "rfc3339")]
    pub materialized_at: SystemTime,
    pub materialized_by: String,
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

/// Result of installing a staged snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Our copy is now `snapshots/<sha>`.
    Ours,
    /// Another publisher installed the same commit first; ours was discarded. Same commit means
    /// same content, so this is success.
    AlreadyThere,
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

    fn staging_dirs(&self) -> Result<Vec<StagingDir>, StoreError> {
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
        let name = format!(
            "{STAGING_PREFIX}{}.{}.{:016x}",
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

/// A staging directory found in the store, and who made it when its name says.
struct StagingDir {
    path: PathBuf,
    owner: Option<Owner>,
}

#[derive(Debug, PartialEq, Eq)]
struct Owner {
    host: String,
    pid: u32,
}

fn parse_staging_owner(rest: &str) -> Option<Owner> {
    let mut parts = rest.rsplitn(3, '.');
    let _nonce = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?.to_string();
    Some(Owner { host, pid })
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

/// RFC 3339 timestamps with nanoseconds in UTC, for the records under `.dagsnap/`.
pub mod rfc3339 {
    use std::time::SystemTime;

    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_nanos(time).to_string()
    }

    pub fn serialize<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*time))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_owner_survives_dots_in_hostnames() {
        assert_eq!(
            parse_staging_owner("web-1.ns.svc.42.00000000deadbeef"),
            Some(Owner {
                host: "web-1.ns.svc".to_string(),
                pid: 42
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
